"""Plain LoRA personalization: the identity (denoising) loss on the trigger prompt only."""

from __future__ import annotations

from pathlib import Path

import torch

from cat_adapter.config import MethodConfig
from cat_adapter.diffusion import mse, noisy_latents, training_target
from cat_adapter.methods.base import BackwardFn, Batch, LossOutput, register
from cat_adapter.methods.lora.adapter import add_lora, load_peft_state, save_lora


@register("lora")
class LoRAMethod:
    """L = ||target - eps_theta(z_t, t, tau(y_T))||^2 with LoRA weights on the U-Net (paper Eq. 1-2)."""

    name = "lora"

    def __init__(self, unet, scheduler, cfg: MethodConfig):
        self.unet = unet            # the U-Net whose adapter is toggled and saved
        self.forward_model = unet   # what runs forward: the same U-Net, or accelerate's wrapper of it
        self.scheduler = scheduler  # training noise scheduler (DDPM, prediction_type of the model)
        self.cfg = cfg
        self.params = add_lora(unet, rank=cfg.rank, lora_alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               target_modules=cfg.target_modules)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.forward_model(z_t, t, encoder_hidden_states=cond, return_dict=False)[0]

    def noisy_and_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z_t = noisy_latents(self.scheduler, batch.latents, batch.noise, batch.timesteps)
        return z_t, training_target(self.scheduler, batch.latents, batch.noise, batch.timesteps)

    def loss(self, batch: Batch) -> LossOutput:
        z_t, target = self.noisy_and_target(batch)
        identity = mse(self.predict(z_t, batch.timesteps, batch.cond_trigger), target)
        return LossOutput(identity, {"loss_identity": identity.item(), "loss_preservation": None})

    def forward_backward(self, batch: Batch, backward: BackwardFn) -> LossOutput:
        out = self.loss(batch)
        backward(out.total)
        return out

    def save(self, out_dir: Path, *, dtype: torch.dtype = torch.float32, kohya: bool = False) -> Path:
        return save_lora(self.unet, out_dir, dtype=dtype, kohya=kohya)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        load_peft_state(self.unet, state)
