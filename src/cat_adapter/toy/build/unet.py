"""Stage 4, ``unet``: a tiny U-Net conditioned on the CLIP text encoder's last hidden states (frozen),
with classifier-free guidance dropout (empty caption) and an EMA of its weights, which is shipped.

It trains with the shared DDPM objective (``cat_adapter.diffusion``) on the scheduler the pipeline
ships, epsilon prediction, with offset noise (``recipe["unet"]["noise_offset"]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from cat_adapter.diffusion import DDPMObjective, mse
from cat_adapter.io import atomic_dir
from cat_adapter.toy.build.clip import load_text_encoder
from cat_adapter.toy.build.common import BuildContext, WorldPool, first_losses, mean_last, step_generator, step_rng
from cat_adapter.toy.world import RESOLUTION, caption_named


def build_unet(recipe: dict, cross_attention_dim: int, latent_size: int):
    from diffusers import UNet2DConditionModel

    u = recipe["unet"]
    n = len(u["channels"])
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=recipe["vae"]["latent_channels"],
        out_channels=recipe["vae"]["latent_channels"], layers_per_block=u["layers_per_block"],
        block_out_channels=u["channels"], norm_num_groups=32,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=u["attention_head_dim"])


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_objective(recipe: dict) -> DDPMObjective:
    """The training objective on the shipped scheduler's schedule, with the recipe's offset noise."""
    return DDPMObjective(build_scheduler().config, noise_offset=recipe["unet"].get("noise_offset", 0))


class LatentCache:
    """VAE posterior mean/std of pool images, computed on first use."""

    def __init__(self, pool: WorldPool, vae, device):
        self.pool, self.vae, self.device = pool, vae, device
        self._mean: dict[int, torch.Tensor] = {}
        self._std: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def get(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        todo = sorted({i for i in idx if i not in self._mean})
        if todo:
            dist = self.vae.encode(self.pool.pixels(todo).to(self.device)).latent_dist
            for k, i in enumerate(todo):
                self._mean[i], self._std[i] = dist.mean[k].cpu(), dist.std[k].cpu()
        return torch.stack([self._mean[i] for i in idx]), torch.stack([self._std[i] for i in idx])


@torch.no_grad()
def encode_text(text_encoder, tokenizer, texts: list[str], device) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


@dataclass
class UNetData:
    """What a U-Net step reads besides the U-Net: the pool, its cached latents and the frozen text tower."""

    pool: WorldPool
    latents: LatentCache
    text_encoder: Any
    tokenizer: Any
    objective: DDPMObjective
    scaling_factor: float
    device: Any


def unet_loss(unet, data: UNetData, recipe: dict, step: int) -> torch.Tensor:
    """The denoising loss of step ``step``. Draw order (one generator and one ``random.Random`` per
    step): indices; per index, the dropout coin then the caption; z0's posterior sample; the noise; t;
    the offset noise."""
    u = recipe["unet"]
    g, rng = step_generator(recipe["seed"], "unet", step), step_rng(recipe["seed"], "unet", step)
    pool, objective = data.pool, data.objective
    idx = pool.sample_indices(g, u["batch_size"])
    texts = [caption_named(pool.scene(i), rng)[0] if rng.random() >= u["cfg_dropout"] else "" for i in idx]
    mean, std = data.latents.get(idx)
    z0 = (mean + std * torch.randn(mean.shape, generator=g)) * data.scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    t = objective.sample_timesteps(len(idx), g)
    noise = objective.offset(noise, g)
    zt = objective.noisy(z0, noise, t)
    emb = encode_text(data.text_encoder, data.tokenizer, texts, data.device)
    pred = unet(zt.to(data.device), t.to(data.device), emb).sample
    return mse(pred, objective.target(z0, noise, t).to(data.device))


def _unet_inputs(ctx: BuildContext) -> tuple[Any, Any, float, int]:
    """The frozen stage-2 text tower and VAE from ``ctx.src``, the VAE's scaling factor and the latent size."""
    from diffusers import AutoencoderKL

    text_encoder = load_text_encoder(ctx.src).to(ctx.device)
    vae = AutoencoderKL.from_pretrained(str(ctx.src / "vae")).to(ctx.device).eval()  # float32 (as saved)
    latent_size = RESOLUTION // 2 ** (len(vae.config.block_out_channels) - 1)
    return text_encoder, vae, float(vae.config.scaling_factor), latent_size


def unet_stage(ctx: BuildContext) -> dict | None:
    """Train the U-Net (initialised under ``torch.manual_seed(seed + 4)``) and save its EMA to
    ``state/unet``; with ``ctx.stop_after``, return ``{"unet": first losses}``."""
    text_encoder, vae, sf, latent_size = _unet_inputs(ctx)
    torch.manual_seed(ctx.recipe["seed"] + 4)
    unet = build_unet(ctx.recipe, text_encoder.config.hidden_size, latent_size).to(ctx.device)
    data = UNetData(ctx.pool, LatentCache(ctx.pool, vae, ctx.device), text_encoder, ctx.tokenizer,
                    build_objective(ctx.recipe), sf, ctx.device)
    u = ctx.recipe["unet"]
    t0 = time.time()
    ema, losses = ctx.train("unet", unet, partial(unet_loss, unet, data, ctx.recipe), steps=u["steps"], lr=u["lr"],
                            warmup=u["warmup"], final_lr=u["final_lr_fraction"], ema_decay=u["ema_decay"])
    if ctx.stop_after is not None:
        return {"unet": first_losses(losses)}
    with atomic_dir(ctx.state / "unet") as tmp:
        ema.cpu().save_pretrained(str(tmp), safe_serialization=True)
    ctx.progress["unet"] = {"first_losses": first_losses(losses), "final_loss": round(mean_last(losses, 200), 5)}
    ctx.done("unet", t0)
    return None
