"""One micro-batch: a noised stream per image set and the prompts that condition it.

All randomness of a step is drawn into the batch by the sampler, so every loss term is a pure
function of it. ``to()`` moves everything and casts only floating-point tensors (timesteps and
token ids stay integer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cat_adapter.models.base import Cond, TokenIds, cast_floating

Prompts = Cond | TokenIds


@dataclass
class Noised:
    """One image stream of a batch: clean latents z_0, the noise eps and the timesteps t of each row."""

    latents: torch.Tensor        # (B, C, h, w) z_0, already scaled
    noise: torch.Tensor          # (B, C, h, w) eps
    timesteps: torch.Tensor      # (B,) long (DDPM) or float (flow matching: sigma x 1000)
    micro: torch.Tensor | None = None  # (B, 6) long: each image's original (h, w), crop (top, left) and target
                                       # (h, w) in pixels: SDXL's time ids; other families ignore it

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device, dtype: torch.dtype | None = None) -> "Noised":
        return Noised(cast_floating(self.latents, device, dtype), cast_floating(self.noise, device, dtype),
                      cast_floating(self.timesteps, device, dtype),
                      None if self.micro is None else self.micro.to(device))

    def __getitem__(self, idx) -> "Noised":
        return Noised(self.latents[idx], self.noise[idx], self.timesteps[idx],
                      None if self.micro is None else self.micro[idx])


@dataclass
class Batch:
    """``instance``: the concept's images; ``prior``: class images (DreamBooth's prior term), or None.

    ``prompts`` by name: ``trigger`` (y_T of each instance row), ``plain`` (its trigger-free y),
    ``pool`` (K extra trigger-free prompts shared by the batch), ``class`` (the prompt of each prior row).
    ``preserve_rows``: the instance rows CAT's preservation term runs on (``--cat-fraction``); None: all.
    """

    instance: Noised
    prompts: dict[str, Prompts] = field(default_factory=dict)
    prior: Noised | None = None
    preserve_rows: torch.Tensor | None = None

    def to(self, device, dtype: torch.dtype | None = None) -> "Batch":
        return Batch(self.instance.to(device, dtype), {k: v.to(device, dtype) for k, v in self.prompts.items()},
                     None if self.prior is None else self.prior.to(device, dtype),
                     None if self.preserve_rows is None else self.preserve_rows.to(device))
