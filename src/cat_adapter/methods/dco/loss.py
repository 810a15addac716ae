"""DCO's loss (Lee et al. 2024, Eq. 8 as kyungmnlee/dco implements it) as a pure function, and its rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cat_adapter.methods.terms import Rows, StepInputs, Term


def per_row_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row's mean squared error, in float32."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))


def dco_loss(pred: torch.Tensor, target: torch.Tensor, frozen: torch.Tensor, beta: float) -> torch.Tensor:
    """mean over rows of -log sigmoid(-beta (||target - pred||^2 - ||target - pred_frozen||^2)).

    At the start (the adapter is the identity) the difference is 0, the loss log 2 and its gradient beta / 2 times
    the squared error's; as the adapted fit improves on the frozen one the sigmoid saturates and the pull fades,
    which keeps the adapter near the base model."""
    diff = per_row_error(pred, target) - per_row_error(frozen.detach(), target)
    return -F.logsigmoid(-beta * diff).mean()


class DcoTerm(Term):
    """The identity rows (trigger captions, their z_t and target) with the frozen model's prediction on them."""

    name, group = "dco", "data"
    needs_base = True

    def __init__(self, cfg):
        self.weight = 1.0
        self.beta = float(cfg.dco.dco_beta)

    def rows(self, s: StepInputs) -> Rows:
        t = s.batch.instance.timesteps
        cond, micro = s.prompts("trigger"), s.batch.instance.micro
        with s.method.frozen():
            frozen = s.model.predict(s.z_t, t, s.frozen_prompts("trigger"), micro=micro)
        return Rows(s.z_t, t, cond, s.target, reference=frozen, micro=micro)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return dco_loss(pred, target, reference, self.beta)
