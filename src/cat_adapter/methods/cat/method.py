"""Contrastive Adapter Training (Park et al. 2024): LoRA plus a preservation term on the trigger-free prompt."""

from __future__ import annotations

import torch

from cat_adapter.methods.base import BackwardFn, Batch, LossOutput, register
from cat_adapter.methods.cat.loss import cat_loss, identity_loss, preservation_loss
from cat_adapter.methods.lora.adapter import adapter_disabled, tuner_layers
from cat_adapter.methods.lora.method import LoRAMethod


def plain_inputs(batch: Batch, z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The preservation sub-batch: the same z_t and t under every trigger-free prompt.

    Rows are [y of each caption (B); pool prompt 1 on all B latents; ...; pool prompt K] -> B * (1 + K).
    """
    conds = [batch.cond_plain]                                    # (B, L, D)
    if batch.cond_pool is not None:
        b = batch.cond_plain.shape[0]
        conds += [p.unsqueeze(0).expand(b, -1, -1) for p in batch.cond_pool]
    n = len(conds)
    return z_t.repeat(n, 1, 1, 1), batch.timesteps.repeat(n), torch.cat(conds)


@register("cat")
class CATMethod(LoRAMethod):
    """L_CAT = ||eps - eps_{L,R}(z_t,t,y_T)||^2 + alpha ||eps_theta(z_t,t,y) - eps_{L,R}(z_t,t,y)||^2 (Eq. 3).

    Both terms share z_t, t and eps. The frozen prediction eps_theta runs under ``no_grad`` with the
    adapter disabled (the same U-Net, no second copy in memory).

    * ``fast``: one adapted pass on the concatenated batch [y_T; y], one frozen pass on y, one backward.
    * ``lean``: identity pass and its backward first (its activations are freed), then the frozen
      and adapted passes on y and a second backward: peak memory close to plain LoRA's.
    Both give the same gradients (up to float rounding of batched vs unbatched kernels).
    """

    name = "cat"

    def __init__(self, unet, scheduler, cfg):
        super().__init__(unet, scheduler, cfg)
        self.layers = tuner_layers(unet)  # cached for cheap adapter toggling

    def frozen_predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), adapter_disabled(self.unet, self.params, self.layers):
            return self.predict(z_t, t, cond)

    def loss(self, batch: Batch) -> LossOutput:
        """Fast mode: a single graph for both terms."""
        z_t, target = self.noisy_and_target(batch)
        z_p, t_p, c_p = plain_inputs(batch, z_t)
        frozen = self.frozen_predict(z_p, t_p, c_p)
        b = z_t.shape[0]
        pred = self.predict(torch.cat([z_t, z_p]), torch.cat([batch.timesteps, t_p]),
                            torch.cat([batch.cond_trigger, c_p]))
        total, ident, pres = cat_loss(pred[:b], target, pred[b:], frozen, self.cfg.cat_alpha)
        return LossOutput(total, {"loss_identity": ident.item(), "loss_preservation": pres.item()})

    def forward_backward(self, batch: Batch, backward: BackwardFn) -> LossOutput:
        if self.cfg.cat_mode == "fast":
            out = self.loss(batch)
            backward(out.total)
            return out
        # Lean mode: backpropagate the identity term before building the preservation graph.
        alpha = self.cfg.cat_alpha
        z_t, target = self.noisy_and_target(batch)
        ident = identity_loss(self.predict(z_t, batch.timesteps, batch.cond_trigger), target)
        backward(ident)
        z_p, t_p, c_p = plain_inputs(batch, z_t)
        frozen = self.frozen_predict(z_p, t_p, c_p)
        pres = preservation_loss(self.predict(z_p, t_p, c_p), frozen)
        backward(alpha * pres)  # run even at alpha = 0: its zero gradient leaves LoRA's update bit for bit
        total = ident.detach() + alpha * pres.detach()
        return LossOutput(total, {"loss_identity": ident.item(), "loss_preservation": pres.item()})
