"""Per-run caches (VAE latent distributions, text embeddings) and the seeded batch sampler.

The text encoder and the VAE are frozen, so each image is encoded once (both flips when
flipping) and each caption once; every step samples a latent from the cached distribution.
All randomness of the data (order, flips, latent samples, noise, timesteps, pool prompts) comes
from one CPU ``torch.Generator``, so the stream is the same on every device and the model's own
randomness (LoRA dropout) cannot shift it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from PIL import Image

from cat_adapter.data.concept import ConceptItem, image_to_tensor, open_image, resize_center_crop
from cat_adapter.diffusion import sample_timesteps
from cat_adapter.methods.base import Batch

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], *, device: torch.device | str = "cpu",
                   chunk: int = 16) -> torch.Tensor:
    """Text embeddings tau(y) as Stable Diffusion's pipeline computes them: (N, L, D), last hidden state."""
    max_len = tokenizer.model_max_length
    for p in prompts:
        n = len(tokenizer(p, truncation=False).input_ids)
        if n > max_len:
            log.warning("prompt is %d tokens, truncated to %d: %r", n, max_len, p[:80])
    out = []
    for i in range(0, len(prompts), chunk):
        ids = tokenizer(prompts[i:i + chunk], padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out.append(text_encoder(ids)[0].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_images(vae, images: list[Image.Image], *, device: torch.device | str, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior q(z|x) for each image: two (N, C, h, w) float32 tensors."""
    means, stds = [], []
    dtype = next(vae.parameters()).dtype
    for i in range(0, len(images), chunk):
        x = torch.stack([image_to_tensor(im) for im in images[i:i + chunk]]).to(device, dtype)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@dataclass
class ConceptCache:
    latent_mean: torch.Tensor          # (F, N, C, h, w); F = 2 when flipped copies are cached
    latent_std: torch.Tensor           # (F, N, C, h, w)
    emb_trigger: torch.Tensor          # (N, L, D) tau(y_T)
    emb_plain: torch.Tensor            # (N, L, D) tau(y)
    emb_pool: torch.Tensor | None      # (P, L, D) tau(pool prompts)
    scaling_factor: float
    shift_factor: float


def build_cache(pipe, items: list[ConceptItem], *, resolution: int, random_flip: bool, device: torch.device | str,
                pool_prompts: list[str] | None = None) -> ConceptCache:
    images = [resize_center_crop(open_image(it.image_path), resolution) for it in items]
    variants = [images] + ([[im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]] if random_flip else [])
    encoded = [encode_images(pipe.vae, v, device=device) for v in variants]
    emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, [it.caption for it in items] + [it.plain for it in items]
                         + list(pool_prompts or []), device=device)
    n = len(items)
    cfg = pipe.vae.config
    return ConceptCache(
        latent_mean=torch.stack([m for m, _ in encoded]), latent_std=torch.stack([s for _, s in encoded]),
        emb_trigger=emb[:n], emb_plain=emb[n:2 * n], emb_pool=emb[2 * n:] if pool_prompts else None,
        scaling_factor=float(cfg.scaling_factor), shift_factor=float(getattr(cfg, "shift_factor", None) or 0.0))


class BatchSampler:
    """Draws micro-batches: images without replacement per epoch, a flip, z_0 ~ q(z|x), eps, t, pool prompts."""

    def __init__(self, cache: ConceptCache, *, batch_size: int, pool_size: int, num_train_timesteps: int, seed: int):
        self.cache = cache
        self.batch_size = batch_size
        self.pool_size = 0 if cache.emb_pool is None else min(pool_size, cache.emb_pool.shape[0])
        self.num_train_timesteps = num_train_timesteps
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0

    def _indices(self) -> list[int]:
        n = self.cache.emb_trigger.shape[0]
        out = []
        for _ in range(self.batch_size):
            if self.position >= len(self.order):
                self.order = torch.randperm(n, generator=self.generator).tolist()
                self.position = 0
            out.append(self.order[self.position])
            self.position += 1
        return out

    def next(self) -> Batch:
        c, g = self.cache, self.generator
        idx = torch.tensor(self._indices())
        b = len(idx)
        flips = torch.randint(0, c.latent_mean.shape[0], (b,), generator=g)
        mean, std = c.latent_mean[flips, idx], c.latent_std[flips, idx]
        z0 = (mean + std * torch.randn(mean.shape, generator=g) - c.shift_factor) * c.scaling_factor
        noise = torch.randn(z0.shape, generator=g)
        t = sample_timesteps(b, self.num_train_timesteps, g)
        pool = None
        if self.pool_size:
            pick = torch.randperm(c.emb_pool.shape[0], generator=g)[: self.pool_size]
            pool = c.emb_pool[pick]
        return Batch(latents=z0, noise=noise, timesteps=t, cond_trigger=c.emb_trigger[idx],
                     cond_plain=c.emb_plain[idx], cond_pool=pool)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = [int(i) for i in state["order"]]
        self.position = int(state["position"])
