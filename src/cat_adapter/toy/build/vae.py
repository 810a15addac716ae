"""Stage 3, ``vae``: a tiny AutoencoderKL (32x32x3 -> 4x16x16); its ``scaling_factor`` is measured as
1 / std of sampled latents over the world."""

from __future__ import annotations

import time
from functools import partial

import torch
import torch.nn.functional as F

from cat_adapter.io import atomic_dir
from cat_adapter.toy.build.common import BuildContext, WorldPool, first_losses, mean_last, step_generator
from cat_adapter.toy.world import RESOLUTION


def build_vae(recipe: dict):
    from diffusers import AutoencoderKL

    v = recipe["vae"]
    n = len(v["channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=v["latent_channels"],
                         block_out_channels=v["channels"], down_block_types=["DownEncoderBlock2D"] * n,
                         up_block_types=["UpDecoderBlock2D"] * n, layers_per_block=1, norm_num_groups=32,
                         mid_block_add_attention=False, sample_size=RESOLUTION)


def vae_loss(vae, pixels: torch.Tensor, g: torch.Generator, kl_weight: float) -> torch.Tensor:
    posterior = vae.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=g).to(pixels.device)
    z = posterior.mean + posterior.std * noise
    rec = vae.decode(z).sample
    return F.mse_loss(rec, pixels) + kl_weight * posterior.kl().mean()


def vae_step_loss(vae, pool: WorldPool, recipe: dict, device, step: int) -> torch.Tensor:
    """One generator per step: the batch's indices first, then the posterior sample's noise."""
    v = recipe["vae"]
    g = step_generator(recipe["seed"], "vae", step)
    return vae_loss(vae, pool.pixels(pool.sample_indices(g, v["batch_size"])).to(device), g, v["kl_weight"])


@torch.no_grad()
def measure_scaling_factor(vae, pool: WorldPool, device, n: int = 2048, seed: int = 0) -> float:
    """1 / std of sampled latents over ``n`` world images (what SD's 0.18215 is for its VAE)."""
    g = torch.Generator().manual_seed(seed)
    zs = []
    for i in range(0, n, 256):
        dist = vae.encode(pool.pixels(list(range(i, min(n, i + 256)))).to(device)).latent_dist
        zs.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device)).cpu())
    return float(1.0 / torch.cat(zs).std())


@torch.no_grad()
def reconstruction_mse(vae, pool: WorldPool, device, n: int = 256) -> float:
    """MSE of the posterior-mean reconstructions of the pool's last ``n`` images (in [-1, 1])."""
    x = pool.pixels(list(range(pool.size - n, pool.size))).to(device)
    return float(F.mse_loss(vae(x, sample_posterior=False).sample.clamp(-1, 1), x))


def vae_stage(ctx: BuildContext) -> dict | None:
    """Train the VAE (initialised under ``torch.manual_seed(seed + 3)``), measure its scaling factor and
    save it to ``state/vae``; with ``ctx.stop_after``, return ``{"vae": first losses}``."""
    seed, v = ctx.recipe["seed"], ctx.recipe["vae"]
    torch.manual_seed(seed + 3)
    vae = build_vae(ctx.recipe).to(ctx.device)
    t0 = time.time()
    vae, losses = ctx.train("vae", vae, partial(vae_step_loss, vae, ctx.pool, ctx.recipe, ctx.device),
                            steps=v["steps"], lr=v["lr"], warmup=v["warmup"])
    if ctx.stop_after is not None:
        return {"vae": first_losses(losses)}
    sf = measure_scaling_factor(vae, ctx.pool, ctx.device, seed=seed)
    vae.register_to_config(scaling_factor=sf)
    rec_mse = reconstruction_mse(vae, ctx.pool, ctx.device)
    with atomic_dir(ctx.state / "vae") as tmp:
        vae.cpu().save_pretrained(str(tmp), safe_serialization=True)
    ctx.progress["vae"] = {"first_losses": first_losses(losses), "final_loss": round(mean_last(losses, 100), 6),
                           "scaling_factor": sf, "reconstruction_mse_256": rec_mse}
    ctx.done("vae", t0)
    ctx.log(f"[vae] scaling_factor {sf:.4f}, reconstruction MSE {rec_mse:.5f} (images in [-1, 1])")
    return None
