"""``--optimizer``: AdamW (torch), 8-bit AdamW (bitsandbytes), Prodigy (prodigyopt), Adafactor (transformers).

The optional ones are pip extras; a missing one is a one-line error naming it. Every optimizer's state is
plain tensors plus JSON-able numbers, so checkpoints hold it without pickle and resume continues it exactly.
"""

from __future__ import annotations

import torch

from cat_adapter.config import OPTIMIZERS as CHOICES
from cat_adapter.errors import CatAdapterError
from cat_adapter.options import require_package

EXTRAS = {"adamw8bit": ("bitsandbytes", "bitsandbytes"), "prodigy": ("prodigyopt", "prodigy")}  # -> (import, extra)


def check(name: str) -> None:
    if name in EXTRAS:
        require_package(*EXTRAS[name], f"--optimizer {name}")


def build(o, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer ``o.optimizer`` over ``groups`` with the run's lr, betas, epsilon and weight decay."""
    betas = (o.adam_beta1, o.adam_beta2)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=betas, weight_decay=o.weight_decay, eps=o.adam_epsilon)
    check(o.optimizer)
    if o.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=o.lr, betas=betas, weight_decay=o.weight_decay, eps=o.adam_epsilon)
    if o.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=o.lr, betas=betas, weight_decay=o.weight_decay, eps=o.adam_epsilon)
    if o.optimizer == "adafactor":  # at the given lr, not its relative-step schedule
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=o.lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=o.weight_decay)
    raise CatAdapterError(f"--optimizer {o.optimizer!r}: choose one of {', '.join(CHOICES)}")
