"""DreamBooth's prior-preservation term (Ruiz et al. 2023, Eq. 2's second term) and the rows it reads."""

from __future__ import annotations

import torch

from cat_adapter.diffusion import mse


def prior_loss(pred_class: torch.Tensor, target_class: torch.Tensor) -> torch.Tensor:
    """||target - eps_theta(z'_t, t', tau(c_pr))||^2 on class images x' the base model made for the class prompt."""
    return mse(pred_class, target_class)


class PriorTerm:
    """lambda * prior loss (``--prior-loss-weight``), on the class-image stream of the batch."""

    name, group = "prior", "data"

    def __init__(self, cfg):
        self.weight = float(cfg.prior.prior_loss_weight)

    def rows(self, s):
        from cat_adapter.methods.terms import Rows

        prior, obj = s.batch.prior, s.model.objective
        z = obj.noisy(prior.latents, prior.noise, prior.timesteps)
        return Rows(z, prior.timesteps, s.prompts("class"), obj.target(prior.latents, prior.noise, prior.timesteps))

    loss = staticmethod(prior_loss)
