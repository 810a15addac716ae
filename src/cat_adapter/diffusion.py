"""Training objectives: how t and the noise are drawn, how z_t is made, and what the denoiser regresses.

A model family picks its objective (``models/``); the data sampler draws every random number of a
step through it from one seeded generator, and loss terms only see ``noisy`` and ``target``.
``DDPMObjective`` serves SD 1.x/2.x and SDXL (epsilon or v prediction); ``FlowMatchObjective`` serves
Flux (rectified flow: velocity prediction).
"""

from __future__ import annotations

import copy

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

    def check_options(self, optim, *, family: str) -> None:
        """One-line errors for the optim options this objective cannot serve."""
        if optim.weighting_scheme != "none":
            from cat_adapter.errors import CatAdapterError

            raise CatAdapterError(f"--weighting-scheme {optim.weighting_scheme} is for flow-matching models (Flux); "
                                  f"this {family} model trains with DDPM noise (see --snr-gamma)")

    def configured(self, optim) -> "DDPMObjective":
        """A copy with the run's options (--noise-offset); the model's own objective is left as it is."""
        out = copy.copy(self)
        out.noise_offset = float(optim.noise_offset)
        return out

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

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """No per-row weighting of its own (--snr-gamma is applied by the terms)."""
        return None

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """SD 1.x: epsilon; SD 2.x 768: v = sqrt(abar) eps - sqrt(1 - abar) z_0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return latents


WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


class FlowMatchObjective:
    """Rectified flow as diffusers' Flux and SD3 training scripts do it.

    t is drawn through ``compute_density_for_timestep_sampling`` (``none`` and ``sigma_sqrt`` / ``cosmap``:
    uniform; ``logit_normal``: sigmoid of N(logit_mean, logit_std); ``mode``: skewed by ``mode_scale``) with
    the data stream's generator, as an index into the scheduler's training timesteps; sigma = t / T (the
    scheduler's training sigmas: unshifted for Flux, whose config shifts at sampling time).
    z_t = (1 - sigma) z_0 + sigma eps, target v = eps - z_0. Only ``sigma_sqrt`` (1 / sigma^2) and ``cosmap``
    weight the loss, per row (``compute_loss_weighting_for_sd3``). Timesteps are floats in (0, T]; the
    denoiser sees t / T.
    """

    name = "flow"
    prediction_type = "flow"

    def __init__(self, scheduler_config, *, noise_offset: float = 0.0, weighting_scheme: str = "none",
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.noise_offset = float(noise_offset)
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"unknown weighting scheme {weighting_scheme!r}")
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std, self.mode_scale = float(logit_mean), float(logit_std), float(mode_scale)

    def check_options(self, optim, *, family: str) -> None:
        if optim.snr_gamma is not None:
            from cat_adapter.errors import CatAdapterError

            raise CatAdapterError("--snr-gamma is for DDPM models; flow-matching models weight with --weighting-scheme")

    def configured(self, optim) -> "FlowMatchObjective":
        """A copy with the run's options (--noise-offset, --weighting-scheme and its parameters)."""
        out = copy.copy(self)
        out.noise_offset = float(optim.noise_offset)
        out.weighting_scheme, out.logit_mean, out.logit_std, out.mode_scale = \
            optim.weighting_scheme, float(optim.logit_mean), float(optim.logit_std), float(optim.mode_scale)
        return out

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.weighting_scheme, n, logit_mean=self.logit_mean,
                                                  logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                  generator=generator)
        idx = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        # the scheduler's training timesteps (sigma * T, static shift applied where its config has one), indexed as
        # the scripts index them
        return self.scheduler.timesteps[idx].to(torch.float32)

    def offset(self, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.noise_offset:
            return noise
        return noise + self.noise_offset * torch.randn((*noise.shape[:2], *([1] * (noise.dim() - 2))),
                                                       generator=generator)

    def sigmas(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        s = timesteps.to(torch.float32) / self.num_train_timesteps
        return s.reshape(-1, *([1] * (like.dim() - 1))).to(like.device)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        s = self.sigmas(timesteps, latents)
        return (1.0 - s) * latents + s * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-row weights of ``sigma_sqrt`` and ``cosmap``; None (a plain mean) for the other schemes."""
        if self.weighting_scheme not in ("sigma_sqrt", "cosmap"):
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.weighting_scheme, timesteps.to(torch.float32) / self.num_train_timesteps)

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        raise ValueError("min-SNR weighting is defined for DDPM objectives; flow matching uses --weighting-scheme")


def mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32 whatever the autocast dtype; with ``weights`` (one per row), the mean over
    rows of each row's mean squared error times its weight (as diffusers' training scripts weight min-SNR)."""
    if weights is None:
        return F.mse_loss(a.float(), b.float(), reduction="mean")
    per_row = F.mse_loss(a.float(), b.float(), reduction="none").mean(dim=tuple(range(1, a.dim())))
    return (per_row * weights.to(per_row.device, per_row.dtype)).mean()
