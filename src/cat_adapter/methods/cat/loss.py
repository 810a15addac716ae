"""CAT's preservation term (paper Eq. 3, second term) as a pure function, and the rows it reads."""

from __future__ import annotations

import torch

from cat_adapter.diffusion import mse
from cat_adapter.models.base import Cond


def preservation_loss(pred_plain_adapted: torch.Tensor, pred_plain_frozen: torch.Tensor) -> torch.Tensor:
    """||eps_theta(z_t, t, tau(y)) - eps_{theta_L,theta_R}(z_t, t, tau(y))||^2 (Eq. 3 without alpha).

    ``pred_plain_frozen`` is the frozen base model's prediction (no gradient). With several
    trigger-free prompts (the caption's y and pool prompts, stacked along the batch), the mean over
    all elements equals the mean of the per-prompt terms, so alpha keeps its meaning.
    """
    return mse(pred_plain_adapted, pred_plain_frozen.detach())


def plain_inputs(z_t: torch.Tensor, t: torch.Tensor, plain: Cond, pool: Cond | None):
    """The same z_t and t under every trigger-free prompt, rows [y of each caption (B); pool prompt 1 on all B
    latents; ...; pool prompt K] -> B * (1 + K)."""
    b = z_t.shape[0]
    conds = [plain] + ([pool.expand_row(k, b) for k in range(len(pool))] if pool is not None else [])
    n = len(conds)
    return z_t.repeat(n, 1, 1, 1), t.repeat(n), Cond.cat(conds)


class PreservationTerm:
    """alpha * ||eps_frozen(z_t, t, y) - eps_adapted(z_t, t, y)||^2 on the instance stream's z_t and t."""

    name, group = "preservation", "preservation"

    def __init__(self, cfg):
        self.weight = float(cfg.preservation.cat_alpha)

    def rows(self, s):
        from cat_adapter.methods.terms import Rows

        b = s.batch
        z, t, cond = plain_inputs(s.z_t, b.instance.timesteps, s.prompts("plain"),
                                  s.prompts("pool") if "pool" in b.prompts else None)
        return Rows(z, t, cond, None)

    loss = staticmethod(preservation_loss)
