"""``cat-adapter toy build``: train the shapes world's models from scratch, resumably.

Stages, each a pure function of the recipe and seed (data order, noise and caption choices come
from a generator seeded by (seed, stage, step), so a resumed stage continues exactly):

1. ``tokenizer``: a CLIP BPE trained on the world's captions with the ``tokenizers`` library; its
   base vocabulary is every byte with and without the end-of-word mark, so any word (a trigger
   never seen in captions included) splits into known pieces.
2. ``clip``: a tiny CLIP (text + vision) trained contrastively on (image, caption) pairs. A caption
   names a subset of its image's attributes, so every image a caption is true of is a positive.
   ``judge``: that CLIP trained further (same loss, its own data stream): the evaluation CLIP
   (``--clip toy``). The U-Net conditions on the stage-2 text tower, which stays fixed.
3. ``vae``: a tiny AutoencoderKL (32x32x3 -> 4x16x16); its ``scaling_factor`` is measured as
   1 / std of sampled latents over the world.
4. ``unet``: a tiny U-Net conditioned on the CLIP text encoder's last hidden states (frozen), with
   classifier-free guidance dropout (empty caption) and an EMA of its weights, which is shipped.

The result is ``OUTPUT/pipeline`` (a ``StableDiffusionPipeline`` folder), ``OUTPUT/clip`` (a
``CLIPModel`` folder with its processor: the judge) and ``OUTPUT/build.json`` (command, recipe, versions,
commit, timings, the first losses of every stage and the sha256 of every weight file). Stage
checkpoints live in ``OUTPUT/state`` until the build ends.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cat_adapter.errors import CatAdapterError
from cat_adapter.io import atomic_dir, atomic_path, write_json_atomic
from cat_adapter.toy.world import (BACKGROUNDS, COLORS, OUTLINES, PATTERN_WORDS, PATTERNS, RESOLUTION, SHAPES,
                                   caption_named, consistent, render, sample_scene)

STAGES = ("tokenizer", "clip", "judge", "vae", "unet")
# The stages that read a stage's output: redoing a stage redoes these too.
DEPENDANTS = {"tokenizer": ("clip", "judge", "unet"), "clip": ("judge", "unet"), "judge": (), "vae": ("unet",),
              "unet": ()}
RECIPE: dict[str, Any] = {
    "seed": 0,
    "pool_size": 50000,            # base-world examples: scene i is a pure function of (seed, i)
    "tokenizer": {"vocab_size": 640, "captions": 20000, "model_max_length": 32},
    "clip": {"steps": 2500, "batch_size": 64, "lr": 1e-3, "warmup": 150, "weight_decay": 0.1,
             "full_caption_prob": 0.5, "hidden": 128, "layers": 4, "heads": 4, "patch": 8, "projection_dim": 128},
    # The evaluation CLIP (--clip toy): the stage-2 CLIP trained further with the same loss and data
    # stream. The U-Net keeps conditioning on the stage-2 text tower.
    "judge": {"steps": 3000, "lr": 5e-4, "warmup": 100, "final_lr_fraction": 0.1},
    "vae": {"steps": 1000, "batch_size": 32, "lr": 1e-3, "warmup": 50, "kl_weight": 1e-6, "channels": [32, 32],
            "latent_channels": 4},
    # noise_offset: per-image, per-channel constant added to the training noise (offset noise). Flat
    # colours live in the latents' channel means, which a plain epsilon schedule never fully noises
    # (alpha_bar at t=999 is 0.005), so the random means of the sampler's start noise can sway the colour.
    "unet": {"steps": 6000, "batch_size": 32, "lr": 8e-4, "warmup": 200, "final_lr_fraction": 0.1,
             "cfg_dropout": 0.1, "ema_decay": 0.999, "noise_offset": 0.1, "channels": [32, 64, 64],
             "layers_per_block": 1, "attention_head_dim": 8},
    # Recommended sampling settings (toy info), not used by training: measured after the build with
    # benchmarks/toy_quality.py (fill right 78.5% at guidance 4, 80.5% at 6, 82.0% at 7.5, 78.5% at 10).
    "sampling": {"steps": 30, "guidance_scale": 7.5},
    "checkpoint_every": 250,
}
_STAGE_ID = {"tokenizer": 1, "clip": 2, "vae": 3, "unet": 4, "judge": 5}


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + _STAGE_ID[stage] * 10_000_019 + step)


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    return random.Random(f"{seed}-{stage}-{step}")


# ---------------------------------------------------------------------------------------------- data
class WorldPool:
    """Scenes ``0..size-1`` of the base world, rendered on first use and cached (uint8 tensors)."""

    def __init__(self, seed: int, size: int):
        self.seed, self.size = seed, size
        self._scenes: dict[int, Any] = {}
        self._pixels: dict[int, torch.Tensor] = {}

    def scene(self, i: int):
        if i not in self._scenes:
            self._scenes[i] = sample_scene(random.Random(f"world-{self.seed}-{i}"))
        return self._scenes[i]

    def pixels(self, idx: list[int]) -> torch.Tensor:
        """(n, 3, 32, 32) float in [-1, 1]."""
        for i in idx:
            if i not in self._pixels:
                arr = np.asarray(render(self.scene(i), RESOLUTION), dtype=np.uint8)
                self._pixels[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        return torch.stack([self._pixels[i] for i in idx]).float() / 127.5 - 1.0

    def sample_indices(self, g: torch.Generator, n: int) -> list[int]:
        return torch.randint(0, self.size, (n,), generator=g).tolist()


def world_vocabulary() -> list[str]:
    """Every word the base world's captions can use."""
    words = {"a", "an", "with", "without", "outline", "on", "background"}
    words |= set(SHAPES) | set(COLORS) | set(PATTERN_WORDS.values()) | set(BACKGROUNDS)
    return sorted(words)


# ---------------------------------------------------------------------------------------------- stages
def train_tokenizer(out: Path, recipe: dict) -> dict:
    """A CLIPTokenizer whose merges are learned on world captions and whose base is every byte."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import CLIPTokenizer

    from cat_adapter.tiny import bytes_to_unicode

    cfg = recipe["tokenizer"]
    seed = recipe["seed"]
    pool = WorldPool(seed, recipe["pool_size"])
    rng = step_rng(seed, "tokenizer", 0)
    captions = [caption_named(pool.scene(rng.randrange(pool.size)), rng, name_all=rng.random() < 0.5)[0]
                for _ in range(cfg["captions"])]
    # The same normalisation and pre-tokenisation as CLIPTokenizer, so the merges fit what it will see.
    probe = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = probe.backend_tokenizer.normalizer
    tok.pre_tokenizer = probe.backend_tokenizer.pre_tokenizer
    chars = list(bytes_to_unicode().values())
    special = ["<|startoftext|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=cfg["vocab_size"], special_tokens=special, initial_alphabet=chars,
                                  end_of_word_suffix="</w>", show_progress=False, min_frequency=2)
    tok.train_from_iterator(captions, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    # Base vocabulary first (both forms of every byte), then the learned merged tokens in merge order.
    vocab: dict[str, int] = {}
    for token in special + chars + [c + "</w>" for c in chars] + [t for t, _ in learned]:
        vocab.setdefault(token, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    clip_tok = CLIPTokenizer(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"),
                             model_max_length=cfg["model_max_length"], pad_token="<|endoftext|>")
    (out / "vocab.json").unlink()
    (out / "merges.txt").unlink()
    clip_tok.save_pretrained(out)
    return {"vocab_size": len(clip_tok), "merges": len(merges),
            "world_words_single_token": sum(len(clip_tok.tokenize(w)) == 1 for w in world_vocabulary()),
            "world_words": len(world_vocabulary())}


def load_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def build_clip_model(recipe: dict, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    c = recipe["clip"]
    common = dict(hidden_size=c["hidden"], intermediate_size=4 * c["hidden"], num_hidden_layers=c["layers"],
                  num_attention_heads=c["heads"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=recipe["tokenizer"]["model_max_length"],
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **common),
        vision_config=dict(image_size=RESOLUTION, patch_size=c["patch"], **common),
        projection_dim=c["projection_dim"])
    return CLIPModel(config)


def clip_loss(model, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              positives: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with several positives: caption j is a positive of image i when every
    attribute it names is true of image i (``positives[i, j]``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
    logits = out.logits_per_image                       # (images, texts)
    pos = positives.float()
    t_img = pos / pos.sum(1, keepdim=True)
    t_txt = pos.t() / pos.t().sum(1, keepdim=True)
    loss_i = -(t_img * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(t_txt * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def clip_batch(pool: WorldPool, tokenizer, recipe: dict, step: int, stage: str = "clip"):
    c = recipe["clip"]
    g, rng = step_generator(recipe["seed"], stage, step), step_rng(recipe["seed"], stage, step)
    idx = pool.sample_indices(g, c["batch_size"])
    scenes = [pool.scene(i) for i in idx]
    named = [caption_named(s, rng, name_all=rng.random() < c["full_caption_prob"]) for s in scenes]
    # Padded to the batch's longest caption: the text tower pools at the end-of-text token, so padding
    # length does not change the embedding, and world captions are half the model's length.
    tokens = tokenizer([t for t, _ in named], padding="longest", truncation=True,
                       max_length=tokenizer.model_max_length, return_tensors="pt")
    positives = torch.tensor([[consistent(n, s) for _, n in named] for s in scenes])
    return pool.pixels(idx), tokens["input_ids"], tokens["attention_mask"], positives


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
def measure_scaling_factor(vae, pool: WorldPool, device, n: int = 2048, seed: int = 0) -> float:
    """1 / std of sampled latents over ``n`` world images (what SD's 0.18215 is for its VAE)."""
    g = torch.Generator().manual_seed(seed)
    zs = []
    for i in range(0, n, 256):
        dist = vae.encode(pool.pixels(list(range(i, min(n, i + 256)))).to(device)).latent_dist
        zs.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device)).cpu())
    return float(1.0 / torch.cat(zs).std())


@torch.no_grad()
def encode_text(text_encoder, tokenizer, texts: list[str], device) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


def unet_loss(unet, scheduler, latents: LatentCache, text_encoder, tokenizer, pool: WorldPool, recipe: dict,
              step: int, scaling_factor: float, device) -> torch.Tensor:
    u = recipe["unet"]
    g, rng = step_generator(recipe["seed"], "unet", step), step_rng(recipe["seed"], "unet", step)
    idx = pool.sample_indices(g, u["batch_size"])
    texts = [caption_named(pool.scene(i), rng)[0] if rng.random() >= u["cfg_dropout"] else "" for i in idx]
    mean, std = latents.get(idx)
    z0 = (mean + std * torch.randn(mean.shape, generator=g)) * scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
    if u.get("noise_offset"):
        noise = noise + u["noise_offset"] * torch.randn((*z0.shape[:2], 1, 1), generator=g)
    zt = scheduler.add_noise(z0, noise, t)
    emb = encode_text(text_encoder, tokenizer, texts, device)
    pred = unet(zt.to(device), t.to(device), emb).sample
    return F.mse_loss(pred.float(), noise.to(device))


# ---------------------------------------------------------------------------------------------- loop
def _lr_lambda(warmup: int, steps: int, final: float = 1.0) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if final >= 1.0:
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _save_state(path: Path, step: int, model, optimizer, ema, losses: list[float]) -> None:
    from safetensors.torch import save_file

    from cat_adapter.training.checkpoint import _split_optimizer_state

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
    tensors.update({f"opt.{k}": v.cpu().contiguous() for k, v in opt_tensors.items()})
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, "losses": losses}))


def _load_state(path: Path, model, optimizer, ema) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    from cat_adapter.training.checkpoint import _join_optimizer_state

    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict(_join_optimizer_state({k[4:]: v for k, v in tensors.items() if k.startswith("opt.")},
                                                    meta["optimizer"]))
    return meta["step"], meta["losses"]


def run_stage(name: str, model, loss_fn: Callable[[int], torch.Tensor], *, steps: int, lr: float, warmup: int,
              state_dir: Path | None, checkpoint_every: int, weight_decay: float = 0.0, final_lr: float = 1.0,
              ema_decay: float | None = None, stop_after: int | None = None, log: Callable[[str], None] = print):
    """AdamW training of ``model`` for ``steps`` steps; returns (model or its EMA, per-step losses)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = _lr_lambda(warmup, steps, final_lr)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay else None
    start, losses = 0, []
    if state_dir is not None and (state_dir / "state.json").is_file():
        start, losses = _load_state(state_dir, model, optimizer, ema)
        log(f"[{name}] resumed at step {start}")
    end = steps if stop_after is None else min(steps, stop_after)
    t0, last = time.time(), time.time()
    model.train()
    for step in range(start, end):
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step)
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise CatAdapterError(f"toy build: non-finite {name} loss at step {step}; the last checkpoint is kept")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        done = step + 1
        if time.time() - last > 30 or done == end:
            recent = losses[-50:]
            rate = (done - start) / max(1e-9, time.time() - t0)
            log(f"[{name}] step {done}/{steps} loss {sum(recent) / len(recent):.4f} ({rate:.2f} steps/s)")
            last = time.time()
        if state_dir is not None and (done % checkpoint_every == 0 or done == end):
            _save_state(state_dir, done, model, optimizer, ema, losses)
    model.eval()
    return (ema if ema is not None else model), losses


# ---------------------------------------------------------------------------------------------- build
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*.safetensors"))}


def _versions() -> dict[str, str]:
    import diffusers
    import tokenizers
    import transformers

    from cat_adapter import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cat_adapter": __version__, "platform": platform.platform()}


def _command() -> str:
    return " ".join(["cat-adapter"] + sys.argv[1:]) if Path(sys.argv[0]).name == "cat-adapter" else " ".join(sys.argv)


def _commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def text_encoder_from_clip(clip_folder: Path):
    """The CLIP folder's text tower as a ``CLIPTextModel`` (what the pipeline conditions on), float32."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(str(clip_folder), dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def load_text_encoder(folder: Path):
    """The U-Net's text encoder: ``folder/text_encoder`` (a pipeline's) if present, else the stage-2 CLIP's text tower."""
    from transformers import CLIPTextModel

    if (folder / "text_encoder").is_dir():
        return CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32).eval()
    return text_encoder_from_clip(folder / "clip")


def load_progress(state: Path) -> dict:
    """Finished stages: ``done-<stage>.json`` files (and ``progress.json`` of earlier builds)."""
    progress = json.loads((state / "progress.json").read_text()) if (state / "progress.json").is_file() else {}
    progress.pop("invocations", None)
    seconds = progress.setdefault("seconds", {})
    for path in sorted(state.glob("done-*.json")):
        stage = path.stem[len("done-"):]
        record = json.loads(path.read_text())
        seconds[stage] = record.pop("seconds", None)
        progress[stage] = record
    return progress


def invocations(state: Path) -> list[dict]:
    old = json.loads((state / "progress.json").read_text()).get("invocations", []) if (state / "progress.json").is_file() else []
    path = state / "invocations.jsonl"
    new = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return old + new


def _mean_last(losses: list[float], n: int) -> float:
    tail = losses[-n:]
    return sum(tail) / max(1, len(tail))


def save_clip_folder(model, tokenizer, folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": RESOLUTION},
                                           crop_size={"height": RESOLUTION, "width": RESOLUTION},
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
        tokenizer=tokenizer)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))


def build(output: str | Path, *, resume: bool = False, device: str | None = None, recipe: dict | None = None,
          stop_after: int | None = None, stages: tuple[str, ...] = STAGES, inputs: Path | None = None,
          redo: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict:
    """Run the build into ``output``; returns the build record (also written to ``output/build.json``).

    ``stop_after`` runs every selected stage for only that many steps (a prefix of the real build,
    for checks); ``inputs`` is a finished build whose tokenizer/CLIP/VAE the later stages then use.
    ``redo`` (with ``resume``) first discards the results and checkpoints of those stages and of the
    stages that read them, so a recipe change to a stage that already ran can be built.
    """
    recipe = copy.deepcopy(recipe or RECIPE)
    output = Path(output)
    state = output / "state"
    if output.exists() and any(output.iterdir()) and not resume:
        raise CatAdapterError(f"--output {output}: exists and is not empty; choose a new folder or add --resume")
    redo = tuple(sorted({d for k in redo for d in (k, *DEPENDANTS[k])}, key=STAGES.index))
    if redo and not resume:
        raise CatAdapterError("--redo needs --resume (it reruns stages of an existing build)")
    if resume and (state / "recipe.json").is_file():
        saved = json.loads((state / "recipe.json").read_text())
        # A newer recipe may only change sections of stages that have not started or are redone (and
        # the recommended sampling settings, which training does not use).
        changed = [k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k)]
        started = [k for k in changed if k != "sampling" and (k not in STAGES or k not in recipe or (
                   k not in redo and ((state / f"{k}-train").exists() or (state / k).exists())))]
        if started:
            raise CatAdapterError(f"--resume {output}: that build used another recipe ({', '.join(sorted(started))}); "
                                  "start a new folder, or rerun those stages with --redo")
    for k in redo:
        for path in (state / k, state / f"{k}-train", state / f"done-{k}.json"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        log(f"[{k}] redo: earlier results and checkpoints removed")
    if redo and (state / "progress.json").is_file():  # stages recorded by builds before done-<stage>.json
        old = json.loads((state / "progress.json").read_text())
        for k in redo:
            old.pop(k, None)
            old.get("seconds", {}).pop(k, None)
        write_json_atomic(state / "progress.json", old)
    state.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state / "recipe.json", recipe)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = False
    seed = recipe["seed"]
    pool = WorldPool(seed, recipe["pool_size"])
    progress = load_progress(state)
    src = inputs or state
    timings = progress.setdefault("seconds", {})
    if stop_after is None:  # every invocation of a real build: the code that ran each part of it
        with open(state / "invocations.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"command": _command(), "commit": _commit(), "stages": list(stages), "redo": list(redo),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "threads": torch.get_num_threads(), "device": str(dev),
                                 "done": [k for k in STAGES if k in progress]}) + "\n")

    def done(stage: str, t: float) -> None:
        timings[stage] = round(time.time() - t, 1)
        write_json_atomic(state / f"done-{stage}.json", {**progress[stage], "seconds": timings[stage]})

    def first(losses: list[float]) -> list[float]:
        return [round(x, 6) for x in losses[:5]]

    def contrastive_stage(name: str, model, *, steps: int, lr: float, warmup: int, final_lr: float = 1.0):
        """Train a CLIP (stage ``clip`` or ``judge``), save it to state/NAME and record its zero-shot accuracy."""
        def step_loss(step: int) -> torch.Tensor:
            px, ids, mask, pos = clip_batch(pool, tokenizer, recipe, step, stage=name)
            return clip_loss(model, px.to(dev), ids.to(dev), mask.to(dev), pos.to(dev))

        t = time.time()
        model, losses = run_stage(name, model, step_loss, steps=steps, lr=lr, warmup=warmup,
                                  weight_decay=recipe["clip"]["weight_decay"], final_lr=final_lr,
                                  state_dir=state / f"{name}-train", checkpoint_every=recipe["checkpoint_every"],
                                  stop_after=stop_after, log=log)
        if stop_after is not None:
            return {name: first(losses)}
        with atomic_dir(state / name) as tmp:
            save_clip_folder(model.cpu(), tokenizer, tmp)
        from cat_adapter.toy.judge import clip_zero_shot

        acc = clip_zero_shot(str(state / name), n=500, seed=10_000_000)
        progress[name] = {"first_losses": first(losses), "final_loss": round(_mean_last(losses, 100), 5),
                          "zero_shot_500": acc}
        done(name, t)
        log(f"[{name}] zero-shot accuracy on 500 fresh images: {acc}")
        return None

    # 1. tokenizer
    if "tokenizer" in stages and "tokenizer" not in progress:
        t = time.time()
        with atomic_dir(state / "tokenizer") as tmp:
            progress["tokenizer"] = train_tokenizer(tmp, recipe)
        done("tokenizer", t)
        log(f"[tokenizer] {progress['tokenizer']}")
    tokenizer = load_tokenizer(src / "tokenizer") if (src / "tokenizer").is_dir() else None

    # 2. CLIP
    if "clip" in stages and "clip" not in progress:
        torch.manual_seed(seed + 2)
        model = build_clip_model(recipe, tokenizer).to(dev)
        c = recipe["clip"]
        result = contrastive_stage("clip", model, steps=c["steps"], lr=c["lr"], warmup=c["warmup"])
        if stop_after is not None:
            return result

    # 2b. the evaluation CLIP
    if "judge" in stages and "judge" not in progress:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(str(src / "clip"), dtype=torch.float32).to(dev)
        j = recipe["judge"]
        result = contrastive_stage("judge", model, steps=j["steps"], lr=j["lr"], warmup=j["warmup"],
                                   final_lr=j["final_lr_fraction"])
        if stop_after is not None:
            return result

    # 3. VAE
    if "vae" in stages and "vae" not in progress:
        torch.manual_seed(seed + 3)
        vae = build_vae(recipe).to(dev)
        v = recipe["vae"]

        def vae_step(step: int) -> torch.Tensor:
            g = step_generator(seed, "vae", step)
            return vae_loss(vae, pool.pixels(pool.sample_indices(g, v["batch_size"])).to(dev), g, v["kl_weight"])

        t = time.time()
        vae, losses = run_stage("vae", vae, vae_step, steps=v["steps"], lr=v["lr"], warmup=v["warmup"],
                                state_dir=state / "vae-train", checkpoint_every=recipe["checkpoint_every"],
                                stop_after=stop_after, log=log)
        if stop_after is not None:
            return {"vae": first(losses)}
        sf = measure_scaling_factor(vae, pool, dev, seed=seed)
        vae.register_to_config(scaling_factor=sf)
        with torch.no_grad():
            x = pool.pixels(list(range(pool.size - 256, pool.size))).to(dev)
            rec_mse = float(F.mse_loss(vae(x, sample_posterior=False).sample.clamp(-1, 1), x))
        with atomic_dir(state / "vae") as tmp:
            vae.cpu().save_pretrained(str(tmp), safe_serialization=True)
        progress["vae"] = {"first_losses": first(losses), "final_loss": round(_mean_last(losses, 100), 6),
                           "scaling_factor": sf, "reconstruction_mse_256": rec_mse}
        done("vae", t)
        log(f"[vae] scaling_factor {sf:.4f}, reconstruction MSE {rec_mse:.5f} (images in [-1, 1])")

    # 4. U-Net
    if "unet" in stages and "unet" not in progress:
        from diffusers import AutoencoderKL
        text_encoder = load_text_encoder(src).to(dev)
        from cat_adapter.models import dtype_kwarg

        vae = AutoencoderKL.from_pretrained(str(src / "vae"), **dtype_kwarg(torch.float32)).to(dev).eval()
        sf = float(vae.config.scaling_factor)
        latent_size = RESOLUTION // 2 ** (len(vae.config.block_out_channels) - 1)
        torch.manual_seed(seed + 4)
        unet = build_unet(recipe, text_encoder.config.hidden_size, latent_size).to(dev)
        scheduler = build_scheduler()
        latents = LatentCache(pool, vae, dev)
        u = recipe["unet"]

        def unet_step(step: int) -> torch.Tensor:
            return unet_loss(unet, scheduler, latents, text_encoder, tokenizer, pool, recipe, step, sf, dev)

        t = time.time()
        ema, losses = run_stage("unet", unet, unet_step, steps=u["steps"], lr=u["lr"], warmup=u["warmup"],
                                final_lr=u["final_lr_fraction"], ema_decay=u["ema_decay"],
                                state_dir=state / "unet-train", checkpoint_every=recipe["checkpoint_every"],
                                stop_after=stop_after, log=log)
        if stop_after is not None:
            return {"unet": first(losses)}
        with atomic_dir(state / "unet") as tmp:
            ema.cpu().save_pretrained(str(tmp), safe_serialization=True)
        progress["unet"] = {"first_losses": first(losses), "final_loss": round(_mean_last(losses, 200), 5)}
        done("unet", t)

    if stop_after is not None or set(stages) != set(STAGES):
        return progress
    return assemble(output, recipe, progress, log=log)


def assemble(output: Path, recipe: dict, progress: dict, *, log: Callable[[str], None] = print) -> dict:
    """Put the stages together as a pipeline folder (U-Net, VAE, stage-2 text tower) and a CLIP folder
    (the judge), hash them, write build.json."""
    import shutil

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel

    state = output / "state"
    tokenizer = load_tokenizer(state / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_pretrained(str(state / "unet")),
        vae=AutoencoderKL.from_pretrained(str(state / "vae")),
        text_encoder=text_encoder_from_clip(state / "clip"),
        tokenizer=tokenizer, scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    for name in ("pipeline", "clip"):
        if (output / name).exists():
            shutil.rmtree(output / name)
    with atomic_dir(output / "pipeline") as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    with atomic_dir(output / "clip") as tmp:
        save_clip_folder(CLIPModel.from_pretrained(str(state / "judge"), dtype=torch.float32), tokenizer, tmp)
    record = {
        "command": _command(), "invocations": invocations(state), "recipe": recipe, "stages": {k: v for k, v in progress.items() if k in STAGES},
        "seconds": progress.get("seconds", {}), "versions": _versions(), "commit": _commit(),
        "weights": {**{f"pipeline/{k}": v for k, v in weight_hashes(output / "pipeline").items()},
                    **{f"clip/{k}": v for k, v in weight_hashes(output / "clip").items()}},
    }
    with atomic_path(output / "build.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {output / 'pipeline'}, {output / 'clip'} and {output / 'build.json'}")
    return record


__all__ = ["RECIPE", "STAGES", "build", "assemble", "WorldPool", "world_vocabulary", "OUTLINES", "PATTERNS"]
