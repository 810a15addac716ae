"""Shared objective pieces: timestep and noise sampling, noising, and the regression target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """t ~ U{0, ..., T-1} (uniform, as in DDPM and the paper's setup)."""
    return torch.randint(0, num_train_timesteps, (n,), generator=generator, dtype=torch.long)


def noisy_latents(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps."""
    return scheduler.add_noise(latents, noise, timesteps)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net regresses, by the scheduler's ``prediction_type`` (SD 1.x: epsilon; SD 2.x 768: v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported scheduler prediction_type {kind!r}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 whatever the autocast dtype."""
    return F.mse_loss(a.float(), b.float(), reduction="mean")
