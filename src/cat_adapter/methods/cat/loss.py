"""The CAT objective as pure functions (paper Eq. 3)."""

from __future__ import annotations

import torch

from cat_adapter.diffusion import mse


def identity_loss(pred_trigger: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """First term of Eq. 3: ||eps - eps_{theta_L,theta_R}(z_t, t, tau(y_T))||^2 (or the v target)."""
    return mse(pred_trigger, target)


def preservation_loss(pred_plain_adapted: torch.Tensor, pred_plain_frozen: torch.Tensor) -> torch.Tensor:
    """Second term of Eq. 3 (without alpha): ||eps_theta(z_t, t, tau(y)) - eps_{theta_L,theta_R}(z_t, t, tau(y))||^2.

    ``pred_plain_frozen`` is the frozen base model's prediction (no gradient). With several
    trigger-free prompts (the caption's y and pool prompts, stacked along the batch), the mean over
    all elements equals the mean of the per-prompt terms, so alpha keeps its meaning.
    """
    return mse(pred_plain_adapted, pred_plain_frozen.detach())


def cat_loss(pred_trigger: torch.Tensor, target: torch.Tensor, pred_plain_adapted: torch.Tensor,
             pred_plain_frozen: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_CAT = identity + alpha * preservation (Eq. 3). Returns (total, identity, preservation)."""
    ident = identity_loss(pred_trigger, target)
    pres = preservation_loss(pred_plain_adapted, pred_plain_frozen)
    return ident + alpha * pres, ident, pres
