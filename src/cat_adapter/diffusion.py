"""Training objectives: how t and the noise are drawn, how z_t is made, and what the denoiser regresses.

A model family picks its objective (``models/``); the data sampler draws every random number of a
step through it from one seeded generator, and loss terms only see ``noisy`` and ``target``.
Only the DDPM objective of SD 1.x/2.x (epsilon or v prediction) is built; flow matching comes with
the Flux family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """t ~ U{0, ..., T-1} (uniform, as in DDPM and the paper's setup)."""
    return torch.randint(0, num_train_timesteps, (n,), generator=generator, dtype=torch.long)


class DDPMObjective:
    """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps on the scheduler's schedule; target eps, v or z_0.

    ``noise_offset`` (Guttenberg 2023) adds ``noise_offset * n`` with n ~ N(0, 1) of shape (B, C, 1, 1)
    to eps, so the model can learn to shift an image's mean brightness; it is drawn after t.
    """

    name = "ddpm"

    def __init__(self, scheduler_config, *, noise_offset: float = 0.0):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = self.scheduler.config.prediction_type
        self.noise_offset = float(noise_offset)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported scheduler prediction_type {self.prediction_type!r}")

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample_timesteps(n, self.num_train_timesteps, generator)

    def offset(self, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """eps + noise_offset * N(0, 1)^(B, C, 1, 1); eps unchanged (and nothing drawn) when the offset is 0."""
        if not self.noise_offset:
            return noise
        return noise + self.noise_offset * torch.randn((*noise.shape[:2], 1, 1), generator=generator)

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights per row (Hang et al. 2023), SNR_t = abar_t / (1 - abar_t) from diffusers'
        ``compute_snr``: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, min(SNR, gamma) for x_0."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps.cpu()).float()
        w = torch.clamp(snr, max=gamma)
        if self.prediction_type == "epsilon":
            return w / snr
        if self.prediction_type == "v_prediction":
            return w / (snr + 1)
        return w

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """SD 1.x: epsilon; SD 2.x 768: v = sqrt(abar) eps - sqrt(1 - abar) z_0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return latents


def mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32 whatever the autocast dtype; with ``weights`` (one per row), the mean over
    rows of each row's mean squared error times its weight (as diffusers' training scripts weight min-SNR)."""
    if weights is None:
        return F.mse_loss(a.float(), b.float(), reduction="mean")
    per_row = F.mse_loss(a.float(), b.float(), reduction="none").mean(dim=tuple(range(1, a.dim())))
    return (per_row * weights.to(per_row.device, per_row.dtype)).mean()
