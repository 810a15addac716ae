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

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from cat_adapter.data.batch import Batch, Noised, Prompts
from cat_adapter.data.buckets import Placement, Size, fit, nearest_bucket, place
from cat_adapter.data.concept import image_to_tensor, open_image
from cat_adapter.data.disk_cache import file_sha256
from cat_adapter.models.base import Cond

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Latent distributions of a set of images, grouped by bucket, and the prompt of each image.

    Without ``--buckets`` there is one bucket (the ``resolution`` square) holding every image in order.
    An image may sit in more than one bucket (class images cropped to an instance bucket no class image
    falls in); ``members`` says which image each latent of a bucket is.
    """

    latent_mean: dict[Size, torch.Tensor]   # bucket -> (F, n_b, C, h, w); F = 2 when flipped copies are cached
    latent_std: dict[Size, torch.Tensor]    # bucket -> (F, n_b, C, h, w)
    members: dict[Size, list[int]]          # bucket -> the image (its prompt row) of each of its n_b latents
    placements: dict[Size, list[Placement]]  # bucket -> each latent's original size and crop (SDXL's time ids)
    num_images: int
    prompts: Prompts             # (N rows) the caption of each image; (N + 1) with --caption-dropout, the
                                 # last row being the empty prompt a dropped caption becomes
    plain: Prompts | None = None  # (N rows) its trigger-free prompt y (instance images)
    concept_of: list[int] | None = None  # (N) each image's concept (--concepts); None: one concept

    def __len__(self) -> int:
        return self.num_images

    @property
    def buckets(self) -> list[Size]:
        return sorted(self.members, key=lambda b: (b[0] / b[1], b[0]))


@dataclass
class TrainingCache:
    instance: ImageSet
    pool: Prompts | None             # (P rows) extra trigger-free prompts (--preserve-pool)
    prior: ImageSet | None           # class images (DreamBooth's prior term)
    scaling_factor: float
    shift_factor: float


def image_sizes(paths: list[Path], option: str) -> list[Size]:
    """Each image's (width, height) after EXIF orientation."""
    return [open_image(p, option).size for p in paths]


def encode_latents(model, paths: list[Path], placements: list[list[Placement]], *, random_flip: bool, option: str,
                   disk=None) -> dict[Size, tuple[list[int], list[Placement], torch.Tensor, torch.Tensor]]:
    """Encode each image at each of its placements: bucket -> (image indices, placements, mean, std), the
    tensors (F, n_b, C, h, w). With ``disk`` (a DiskCache) entries are read or written per image and bucket."""
    jobs = [(i, pl) for i, pls in enumerate(placements) for pl in pls]
    found: dict[int, dict[str, torch.Tensor]] = {}
    keys: list[str | None] = [None] * len(jobs)
    if disk is not None:
        dtype = str(next(model.pipe.vae.parameters()).dtype)
        hashes = {i: file_sha256(paths[i]) for i in {i for i, _ in jobs}}
        for j, (i, pl) in enumerate(jobs):
            keys[j] = disk.key("latents", image=hashes[i], bucket=list(pl.bucket), flips=bool(random_flip),
                               vae_dtype=dtype)
            if (hit := disk.get("latents", keys[j])) is not None:
                found[j] = hit
    todo = [j for j in range(len(jobs)) if j not in found]
    opened: dict[int, Image.Image] = {}
    for bucket in dict.fromkeys(jobs[j][1].bucket for j in todo):  # one VAE batch per bucket (one size)
        group = [j for j in todo if jobs[j][1].bucket == bucket]
        images = []
        for j in group:
            i, pl = jobs[j]
            if i not in opened:
                opened[i] = open_image(paths[i], option)
            images.append(fit(opened[i], pl))
        variants = [images] + ([[im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]] if random_flip else [])
        encoded = [model.encode_images(torch.stack([image_to_tensor(im) for im in v])) for v in variants]
        mean, std = torch.stack([m for m, _ in encoded]), torch.stack([s for _, s in encoded])
        for k, j in enumerate(group):
            found[j] = {"mean": mean[:, k], "std": std[:, k]}
            if disk is not None:
                disk.put("latents", keys[j], found[j])
    out = {}
    for bucket in dict.fromkeys(pl.bucket for _, pl in jobs):
        group = [j for j in range(len(jobs)) if jobs[j][1].bucket == bucket]
        # contiguous either way: the VAE's output layout (channels-last on the CPU) would otherwise follow the
        # latents into the U-Net, and a read-back entry (contiguous) would then give other float rounding
        out[bucket] = ([jobs[j][0] for j in group], [jobs[j][1] for j in group],
                       torch.stack([found[j]["mean"] for j in group], dim=1).contiguous(),
                       torch.stack([found[j]["std"] for j in group], dim=1).contiguous())
    return out


def image_set(encoded: dict, num_images: int, prompts: Prompts, plain: Prompts | None = None) -> ImageSet:
    return ImageSet({b: e[2] for b, e in encoded.items()}, {b: e[3] for b, e in encoded.items()},
                    {b: e[0] for b, e in encoded.items()}, {b: e[1] for b, e in encoded.items()},
                    num_images, prompts, plain)


def plan_placements(sizes: list[Size], buckets: list[Size]) -> list[list[Placement]]:
    """One placement per image, in the bucket nearest its aspect ratio."""
    return [[place(s, nearest_bucket(s, buckets))] for s in sizes]


def plan_class_placements(sizes: list[Size], instance_buckets: list[Size]) -> list[list[Placement]]:
    """Class images go to the instance bucket nearest their aspect ratio, so every batch can pair instance and
    class images of one bucket. An instance bucket no class image falls in gets every class image, cropped to it
    (logged): the prior term needs rows of that size too."""
    out = plan_placements(sizes, instance_buckets)
    taken = {pls[0].bucket for pls in out}
    empty = [b for b in instance_buckets if b not in taken]
    if empty:
        log.warning("--buckets: no class image has the aspect ratio of instance bucket(s) %s; every class image is "
                    "also cropped to %s. Add class images of those shapes to avoid the crops",
                    ", ".join(f"{w}x{h}" for w, h in empty), "them" if len(empty) > 1 else "it")
        for s, pls in zip(sizes, out):
            pls.extend(place(s, b) for b in empty)
    return out


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
            out.append(text.token_ids(s))
    return out


def build_cache(model, items: list, *, resolution: int, random_flip: bool, device, buckets: list[Size] | None = None,
                pool_prompts: list[str] | None = None, class_images: list[tuple[Path, str]] | None = None,
                caption_dropout: bool = False, disk=None) -> TrainingCache:
    """``items``: the concept's ConceptItems; ``buckets``: the aspect-ratio buckets (``--buckets``), else the one
    ``resolution`` square; ``class_images``: (image, prompt) pairs of the prior term; ``caption_dropout``: also
    encode the empty prompt, as the captions' last row; ``disk``: a DiskCache."""
    buckets = buckets or [(resolution, resolution)]
    paths = [it.image_path for it in items]
    placements = plan_placements(image_sizes(paths, "--data"), buckets)
    encoded = encode_latents(model, paths, placements, random_flip=random_flip, option="--data", disk=disk)
    sets = [[it.caption for it in items] + ([""] if caption_dropout else []), [it.plain for it in items]]
    if pool_prompts:
        sets.append(list(pool_prompts))
    if class_images:
        sets.append([p for _, p in class_images])
    prompts = encode_prompt_sets(model.text, sets, device=device, disk=disk)
    instance = image_set(encoded, len(items), prompts[0], prompts[1])
    instance.concept_of = [it.concept for it in items]
    pool = prompts[2] if pool_prompts else None
    prior = None
    if class_images:
        class_paths = [p for p, _ in class_images]
        class_pl = plan_class_placements(image_sizes(class_paths, "--class-data"), instance.buckets)
        prior = image_set(encode_latents(model, class_paths, class_pl, random_flip=random_flip, option="--class-data",
                                         disk=disk), len(class_images), prompts[-1])
    scale, shift = model.latent_scale
    return TrainingCache(instance, pool, prior, scale, shift)


def bucket_record(images: ImageSet, paths: list[Path]) -> dict[str, list]:
    """{image file name: [width, height]} of each image's bucket (``OUT/buckets.json``); an image in several
    buckets (class images) gets a list of them."""
    seen: dict[str, list] = {}
    for b in images.buckets:
        for i in images.members[b]:
            seen.setdefault(paths[i].name, []).append([b[0], b[1]])
    return {name: sizes[0] if len(sizes) == 1 else sizes for name, sizes in sorted(seen.items())}


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
    """Draws micro-batches: a bucket, images, a flip, z_0 ~ q(z|x), eps, t, pool prompts, then the class images.

    With several buckets each step first draws one, with probability proportional to the images it holds, and
    the whole global batch comes from it (instance and class rows alike): every image is drawn equally often on
    average. Within a bucket images are drawn without replacement, a new permutation whenever one is used up, so
    a bucket holding fewer images than the batch fills it by repeating its own images (each row with its own
    flip, latent sample, noise and timestep). With one bucket nothing is drawn for the bucket.

    With several concepts and ``balance="uniform"`` an image of concept c weighs 1 / (images of c): each row
    draws a concept (within the step's bucket, in proportion to those weights), then the next image of that
    concept's own permutation, so every concept is drawn equally often whatever its number of images.
    ``by-images`` draws images as if they were one concept. ``repeats`` (kohya's folder layout, one per concept)
    replaces the balance: an image of concept c weighs ``repeats[c]``, as kohya's ``10_sks teapot`` folders do.
    """

    def __init__(self, cache: TrainingCache, *, batch_size: int, objective, seed: int, pool_size: int = 0,
                 num_processes: int = 1, process_index: int = 0, caption_dropout: float = 0.0,
                 preserve_fraction: float = 1.0, balance: str = "uniform", repeats: list[int] | None = None):
        self.cache = cache
        self.caption_dropout = float(caption_dropout)
        self.preserve_fraction = float(preserve_fraction)
        if self.caption_dropout and len(cache.instance.prompts) != len(cache.instance) + 1:
            raise ValueError("caption dropout needs the cache built with caption_dropout=True (the empty prompt)")
        self.batch_size = batch_size
        self.pool_size = 0 if cache.pool is None else min(pool_size, len(cache.pool))
        self.objective = objective
        self.num_processes, self.process_index = num_processes, process_index
        self.generator = torch.Generator().manual_seed(seed)
        self.buckets = cache.instance.buckets
        if cache.prior is not None and set(cache.prior.buckets) != set(self.buckets):
            raise ValueError("the class images must cover exactly the instance buckets")
        if balance not in ("uniform", "by-images"):
            raise ValueError(f"balance must be uniform or by-images (got {balance!r})")
        inst = cache.instance
        concept_of = inst.concept_of or [0] * len(inst)
        n_concepts = max(concept_of) + 1
        split = (balance == "uniform" or repeats is not None) and n_concepts > 1
        per_concept = [concept_of.count(k) for k in range(n_concepts)]
        # each image's weight: 1 / (its concept's images) under uniform, its concept's repeats under kohya's layout
        image_weight = [float(repeats[k]) if repeats is not None else 1.0 / per_concept[k] for k in range(n_concepts)]
        # bucket -> [(stream name, the bucket's latents it draws from, weight)]
        self.groups: dict[Size, list[tuple[str, list[int], float]]] = {}
        for b in self.buckets:
            members = inst.members[b]
            if split:
                self.groups[b] = [(self._key("instance", b, k), local, len(local) * image_weight[k])
                                  for k in range(n_concepts)
                                  if (local := [j for j, i in enumerate(members) if concept_of[i] == k])]
            else:
                self.groups[b] = [(self._key("instance", b), list(range(len(members))), float(len(members)))]
        self.orders = {key: _Order(len(local)) for groups in self.groups.values() for key, local, _ in groups}
        if cache.prior is not None:
            self.orders.update({self._key("prior", b): _Order(len(cache.prior.members[b])) for b in self.buckets})

    def _key(self, name: str, bucket: Size, concept: int | None = None) -> str:
        """A stream's name in checkpoints: 'instance' and 'prior' with one bucket and concept (as before buckets
        and concepts existed)."""
        parts = [name] + ([f"{bucket[0]}x{bucket[1]}"] if len(self.buckets) > 1 else []) + \
            ([f"concept{concept}"] if concept is not None else [])
        return " ".join(parts)

    def _take(self, bucket: Size, n: int) -> torch.Tensor:
        """n latents of the bucket: from its one stream, or one concept draw per row and that concept's stream."""
        g, groups = self.generator, self.groups[bucket]
        if len(groups) == 1:
            key, local, _ = groups[0]
            return torch.tensor([local[j] for j in self.orders[key].take(n, g)])
        pick = torch.multinomial(torch.tensor([w for _, _, w in groups], dtype=torch.float64), n, replacement=True,
                                 generator=g).tolist()
        return torch.tensor([groups[k][1][self.orders[groups[k][0]].take(1, g)[0]] for k in pick])

    def _draw(self, images: ImageSet, name: str, bucket: Size, n: int) -> tuple[torch.Tensor, Noised]:
        c, g = self.cache, self.generator
        local = (self._take(bucket, n) if name == "instance"
                 else torch.tensor(self.orders[self._key(name, bucket)].take(n, g)))
        latent_mean, latent_std = images.latent_mean[bucket], images.latent_std[bucket]
        flips = torch.randint(0, latent_mean.shape[0], (n,), generator=g)
        mean, std = latent_mean[flips, local], latent_std[flips, local]
        z0 = (mean + std * torch.randn(mean.shape, generator=g) - c.shift_factor) * c.scaling_factor
        noise = torch.randn(z0.shape, generator=g)
        t = self.objective.sample_timesteps(n, g)
        noise = self.objective.offset(noise, g)
        placed = images.placements[bucket]
        micro = torch.tensor([[*placed[j].original[::-1], *placed[j].crop[::-1], *bucket[::-1]] for j in local.tolist()],
                             dtype=torch.long).reshape(n, 6)
        return torch.tensor(images.members[bucket])[local], Noised(z0, noise, t, micro)

    def next(self) -> Batch:
        """This process's slice of the global batch of ``batch_size * num_processes`` rows."""
        n, b = self.batch_size * self.num_processes, self.batch_size
        mine = slice(self.process_index * b, (self.process_index + 1) * b)
        c = self.cache
        bucket = self.buckets[0]
        if len(self.buckets) > 1:
            weights = torch.tensor([sum(w for _, _, w in self.groups[k]) for k in self.buckets], dtype=torch.float64)
            bucket = self.buckets[int(torch.multinomial(weights, 1, generator=self.generator))]
        idx, inst = self._draw(c.instance, "instance", bucket, n)
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
            cidx, prior_all = self._draw(c.prior, "prior", bucket, n)
            prompts["class"] = c.prior.prompts[cidx[mine]]
            prior = prior_all[mine]
        keep = None
        if self.preserve_fraction < 1:  # drawn only when on; every rank keeps the same number of rows
            k = max(1, math.ceil(self.preserve_fraction * b))
            picks = [torch.randperm(b, generator=self.generator)[:k].sort().values for _ in range(self.num_processes)]
            keep = picks[self.process_index]
        return Batch(inst[mine], prompts, prior, keep)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "orders": {k: o.state() for k, o in self.orders.items()},
                "sizes": {k: o.n for k, o in self.orders.items()}}

    def load_state_dict(self, state: dict) -> None:
        from cat_adapter.errors import CatAdapterError

        sizes = {k: o.n for k, o in self.orders.items()}
        if state.get("sizes", sizes) != sizes or set(state["orders"]) != set(self.orders):
            raise CatAdapterError(f"--resume: the checkpoint's data stream has image sets of sizes "
                                  f"{state.get('sizes')}, this run {sizes}; the concept or class folder changed since "
                                  "the checkpoint (or its images' buckets)")
        self.generator.set_state(state["generator"])
        for k, o in self.orders.items():
            o.load(state["orders"][k])
