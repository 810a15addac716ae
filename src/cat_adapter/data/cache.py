"""Per-run caches (VAE latent distributions, text embeddings) and the one seeded data stream.

The VAE is frozen, so each image is encoded once (both flips when flipping); each prompt without a
trainable token is encoded once, the others are kept as token ids and encoded in the step. Every
step samples a latent from the cached distribution.

All randomness of the data (order, flips, latent samples, noise, timesteps, pool prompts, class
images) comes from one CPU ``torch.Generator``. The stream is global: each step draws the batch of
all processes together (``batch_size * num_processes`` rows) and a process keeps its slice, so N
processes with batch b see exactly what one process with batch N * b sees, every process holds
the same stream state, and a checkpoint of that one state restores every rank's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from cat_adapter.data.batch import Batch, Noised, Prompts
from cat_adapter.data.concept import image_to_tensor, open_image, resize_center_crop
from cat_adapter.data.disk_cache import file_sha256
from cat_adapter.models.base import Cond, TokenIds


@dataclass
class ImageSet:
    latent_mean: torch.Tensor    # (F, N, C, h, w); F = 2 when flipped copies are cached
    latent_std: torch.Tensor     # (F, N, C, h, w)
    prompts: Prompts             # (N rows) the caption of each image; (N + 1) with --caption-dropout, the
                                 # last row being the empty prompt a dropped caption becomes
    plain: Prompts | None = None  # (N rows) its trigger-free prompt y (instance images)

    def __len__(self) -> int:
        return self.latent_mean.shape[1]


@dataclass
class TrainingCache:
    instance: ImageSet
    pool: Prompts | None             # (P rows) extra trigger-free prompts (--preserve-pool)
    prior: ImageSet | None           # class images (DreamBooth's prior term)
    scaling_factor: float
    shift_factor: float


def encode_latents(model, paths: list[Path], *, resolution: int, random_flip: bool, option: str, disk=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of q(z|x), each (F, N, C, h, w); with ``disk`` (a DiskCache) entries are read or written per image."""
    keys = [None] * len(paths)
    found: dict[int, dict[str, torch.Tensor]] = {}
    if disk is not None:
        dtype = str(next(model.pipe.vae.parameters()).dtype)
        for i, p in enumerate(paths):
            keys[i] = disk.key("latents", image=file_sha256(p), resolution=resolution, flips=bool(random_flip),
                               vae_dtype=dtype)
            if (hit := disk.get("latents", keys[i])) is not None:
                found[i] = hit
    todo = [i for i in range(len(paths)) if i not in found]
    if todo:
        images = [resize_center_crop(open_image(paths[i], option), resolution) for i in todo]
        variants = [images] + ([[im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]] if random_flip else [])
        encoded = [model.encode_images(torch.stack([image_to_tensor(im) for im in v])) for v in variants]
        mean, std = torch.stack([m for m, _ in encoded]), torch.stack([s for _, s in encoded])
        for j, i in enumerate(todo):
            found[i] = {"mean": mean[:, j], "std": std[:, j]}
            if disk is not None:
                disk.put("latents", keys[i], found[i])
    # contiguous either way: the VAE's output layout (channels-last on the CPU) would otherwise follow the
    # latents into the U-Net, and a read-back entry (contiguous) would then give other float rounding
    return (torch.stack([found[i]["mean"] for i in range(len(paths))], dim=1).contiguous(),
            torch.stack([found[i]["std"] for i in range(len(paths))], dim=1).contiguous())


def _encode_cached(text, prompts: list[str], *, device, disk) -> Cond:
    """``text.encode`` with each prompt's row read from or written to ``disk``."""
    if disk is None:
        return text.encode(prompts, device=device)
    dtype = str(next(text.encoder.parameters()).dtype)
    keys = [disk.key("text", prompt=p, encoder_dtype=dtype) for p in prompts]
    rows: dict[int, dict[str, torch.Tensor]] = {}
    for i, k in enumerate(keys):
        if (hit := disk.get("text", k)) is not None:
            rows[i] = hit
    todo = [i for i in range(len(prompts)) if i not in rows]
    if todo:
        cond = text.encode([prompts[i] for i in todo], device=device)
        for j, i in enumerate(todo):
            rows[i] = {"hidden": cond.hidden[j], **({"pooled": cond.pooled[j]} if cond.pooled is not None else {}),
                       **{f"extra.{k}": v[j] for k, v in cond.extra.items()}}
            disk.put("text", keys[i], rows[i])
    ordered = [rows[i] for i in range(len(prompts))]
    pooled = torch.stack([r["pooled"] for r in ordered]) if "pooled" in ordered[0] else None
    extra = {k[6:]: torch.stack([r[k] for r in ordered]) for k in ordered[0] if k.startswith("extra.")}
    return Cond(torch.stack([r["hidden"] for r in ordered]), pooled, extra)


def encode_prompt_sets(text, sets: list[list[str]], *, device, disk=None) -> list[Prompts]:
    """Each list of prompts as a ``Cond`` when none holds a trainable token (all cacheable lists are
    encoded in one call, in order), else as ``TokenIds`` to encode in the step."""
    cacheable = [all(text.cacheable(p) for p in s) for s in sets]
    flat = [p for s, c in zip(sets, cacheable) if c for p in s]
    cond = _encode_cached(text, flat, device=device, disk=disk) if flat else None
    out: list[Prompts] = []
    pos = 0
    for s, c in zip(sets, cacheable):
        if c:
            out.append(cond[pos:pos + len(s)])
            pos += len(s)
        else:
            out.append(TokenIds(text.tokenize(s)))
    return out


def build_cache(model, items: list, *, resolution: int, random_flip: bool, device, pool_prompts: list[str] | None = None,
                class_images: list[tuple[Path, str]] | None = None, caption_dropout: bool = False,
                disk=None) -> TrainingCache:
    """``items``: the concept's ConceptItems; ``class_images``: (image, prompt) pairs of the prior term;
    ``caption_dropout``: also encode the empty prompt, as the captions' last row; ``disk``: a DiskCache."""
    mean, std = encode_latents(model, [it.image_path for it in items], resolution=resolution,
                               random_flip=random_flip, option="--data", disk=disk)
    sets = [[it.caption for it in items] + ([""] if caption_dropout else []), [it.plain for it in items]]
    if pool_prompts:
        sets.append(list(pool_prompts))
    if class_images:
        sets.append([p for _, p in class_images])
    encoded = encode_prompt_sets(model.text, sets, device=device, disk=disk)
    instance = ImageSet(mean, std, encoded[0], encoded[1])
    pool = encoded[2] if pool_prompts else None
    prior = None
    if class_images:
        c_mean, c_std = encode_latents(model, [p for p, _ in class_images], resolution=resolution,
                                       random_flip=random_flip, option="--class-data", disk=disk)
        prior = ImageSet(c_mean, c_std, encoded[-1])
    scale, shift = model.latent_scale
    return TrainingCache(instance, pool, prior, scale, shift)


class _Order:
    """Images without replacement per epoch: a new permutation whenever one is used up."""

    def __init__(self, n: int):
        self.n, self.order, self.position = n, [], 0

    def take(self, k: int, g: torch.Generator) -> list[int]:
        out = []
        for _ in range(k):
            if self.position >= len(self.order):
                self.order = torch.randperm(self.n, generator=g).tolist()
                self.position = 0
            out.append(self.order[self.position])
            self.position += 1
        return out

    def state(self) -> dict:
        return {"order": list(self.order), "position": self.position}

    def load(self, state: dict) -> None:
        self.order, self.position = [int(i) for i in state["order"]], int(state["position"])


class StreamSampler:
    """Draws micro-batches: images, a flip, z_0 ~ q(z|x), eps, t, pool prompts, then the class images."""

    def __init__(self, cache: TrainingCache, *, batch_size: int, pool_size: int, objective, seed: int,
                 num_processes: int = 1, process_index: int = 0, caption_dropout: float = 0.0):
        self.cache = cache
        self.caption_dropout = float(caption_dropout)
        if self.caption_dropout and len(cache.instance.prompts) != len(cache.instance) + 1:
            raise ValueError("caption dropout needs the cache built with caption_dropout=True (the empty prompt)")
        self.batch_size = batch_size
        self.pool_size = 0 if cache.pool is None else min(pool_size, len(cache.pool))
        self.objective = objective
        self.num_processes, self.process_index = num_processes, process_index
        self.generator = torch.Generator().manual_seed(seed)
        self.orders = {"instance": _Order(len(cache.instance))}
        if cache.prior is not None:
            self.orders["prior"] = _Order(len(cache.prior))

    def _draw(self, images: ImageSet, order: _Order, n: int) -> tuple[list[int], Noised]:
        c, g = self.cache, self.generator
        idx = torch.tensor(order.take(n, g))
        flips = torch.randint(0, images.latent_mean.shape[0], (n,), generator=g)
        mean, std = images.latent_mean[flips, idx], images.latent_std[flips, idx]
        z0 = (mean + std * torch.randn(mean.shape, generator=g) - c.shift_factor) * c.scaling_factor
        noise = torch.randn(z0.shape, generator=g)
        t = self.objective.sample_timesteps(n, g)
        noise = self.objective.offset(noise, g)
        return idx, Noised(z0, noise, t)

    def next(self) -> Batch:
        """This process's slice of the global batch of ``batch_size * num_processes`` rows."""
        n, b = self.batch_size * self.num_processes, self.batch_size
        mine = slice(self.process_index * b, (self.process_index + 1) * b)
        c = self.cache
        idx, inst = self._draw(c.instance, self.orders["instance"], n)
        caption = idx
        if self.caption_dropout:  # drawn only when on, so runs without it keep their stream
            drop = torch.rand(n, generator=self.generator) < self.caption_dropout
            caption = torch.where(drop, len(c.instance), idx)  # the empty prompt's row
        # y keeps the image's trigger-free prompt whether its caption was dropped or not
        prompts: dict[str, Prompts] = {"trigger": c.instance.prompts[caption[mine]], "plain": c.instance.plain[idx[mine]]}
        if self.pool_size:
            pick = torch.randperm(len(c.pool), generator=self.generator)[: self.pool_size]
            prompts["pool"] = c.pool[pick]
        prior = None
        if c.prior is not None:
            cidx, prior_all = self._draw(c.prior, self.orders["prior"], n)
            prompts["class"] = c.prior.prompts[cidx[mine]]
            prior = prior_all[mine]
        return Batch(inst[mine], prompts, prior)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "orders": {k: o.state() for k, o in self.orders.items()},
                "sizes": {k: o.n for k, o in self.orders.items()}}

    def load_state_dict(self, state: dict) -> None:
        from cat_adapter.errors import CatAdapterError

        sizes = {k: o.n for k, o in self.orders.items()}
        if state.get("sizes", sizes) != sizes or set(state["orders"]) != set(self.orders):
            raise CatAdapterError(f"--resume: the checkpoint's data stream has image sets of sizes "
                                  f"{state.get('sizes')}, this run {sizes}; the concept or class folder changed "
                                  "since the checkpoint")
        self.generator.set_state(state["generator"])
        for k, o in self.orders.items():
            o.load(state["orders"][k])
