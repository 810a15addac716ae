"""What every stage of the toy build shares: the recipe, seeded generators, the world pool, the
training loop with its resumable checkpoints, and the build's bookkeeping (progress, invocations,
hashes, versions, commit)."""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.io import atomic_dir, write_json_atomic
from cat_adapter.training.checkpoint import optimizer_state, optimizer_tensors  # noqa: I001
from cat_adapter.toy.world import BACKGROUNDS, COLORS, PATTERN_WORDS, RESOLUTION, SHAPES, render, sample_scene

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


# ---------------------------------------------------------------------------------------------- a build
@dataclass
class BuildContext:
    """What the stages of one ``build()`` call share."""

    recipe: dict
    state: Path                    # OUTPUT/state: stage results, checkpoints, done-<stage>.json
    src: Path                      # where later stages read earlier results (state, or --inputs)
    device: torch.device
    pool: WorldPool
    progress: dict
    stop_after: int | None = None
    log: Callable[[str], None] = print
    tokenizer: Any = None
    seconds: dict = field(init=False)

    def __post_init__(self):
        self.seconds = self.progress.setdefault("seconds", {})

    def done(self, stage: str, t0: float) -> None:
        """Record a finished stage (its timing and ``progress[stage]``) in ``state/done-<stage>.json``."""
        self.seconds[stage] = round(time.time() - t0, 1)
        write_json_atomic(self.state / f"done-{stage}.json", {**self.progress[stage], "seconds": self.seconds[stage]})

    def train(self, name: str, model, loss_fn: Callable[[int], torch.Tensor], **kwargs):
        """``run_stage`` with this build's checkpoint folder, interval, prefix length and log."""
        return run_stage(name, model, loss_fn, state_dir=self.state / f"{name}-train",
                         checkpoint_every=self.recipe["checkpoint_every"], stop_after=self.stop_after,
                         log=self.log, **kwargs)


def first_losses(losses: list[float]) -> list[float]:
    return [round(x, 6) for x in losses[:5]]


def mean_last(losses: list[float], n: int) -> float:
    tail = losses[-n:]
    return sum(tail) / max(1, len(tail))


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

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = optimizer_tensors(optimizer.state_dict())
    tensors.update({f"opt.{k}": v.cpu().contiguous() for k, v in opt_tensors.items()})
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, "losses": losses}))


def _load_state(path: Path, model, optimizer, ema) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict(optimizer_state({k[4:]: v for k, v in tensors.items() if k.startswith("opt.")},
                                              meta["optimizer"]))
    return meta["step"], meta["losses"]


def _ema_update(ema, model, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


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
            _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
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


# ---------------------------------------------------------------------------------------------- bookkeeping
def prepare_state(output: Path, recipe: dict, *, resume: bool, redo: tuple[str, ...],
                  log: Callable[[str], None] = print) -> tuple[str, ...]:
    """Check ``output`` and ``recipe`` against an earlier build, discard the stages to redo (with their
    dependants; returned in stage order) and write ``state/recipe.json``."""
    state = output / "state"
    if output.exists() and any(output.iterdir()) and not resume:
        raise CatAdapterError(f"--output {output}: exists and is not empty; choose a new folder or add --resume")
    redo = tuple(sorted({d for k in redo for d in (k, *DEPENDANTS[k])}, key=STAGES.index))
    if redo and not resume:
        raise CatAdapterError("--redo needs --resume (it reruns stages of an existing build)")
    if resume and (state / "recipe.json").is_file():
        _check_recipe(output, json.loads((state / "recipe.json").read_text()), recipe, redo)
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
    return redo


def _check_recipe(output: Path, saved: dict, recipe: dict, redo: tuple[str, ...]) -> None:
    """A newer recipe may only change sections of stages that have not started or are redone (and the
    recommended sampling settings, which training does not use)."""
    state = output / "state"
    changed = [k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k)]
    started = [k for k in changed if k != "sampling" and (k not in STAGES or k not in recipe or (
               k not in redo and ((state / f"{k}-train").exists() or (state / k).exists())))]
    if started:
        raise CatAdapterError(f"--resume {output}: that build used another recipe ({', '.join(sorted(started))}); "
                              "start a new folder, or rerun those stages with --redo")


def record_invocation(state: Path, stages: tuple[str, ...], redo: tuple[str, ...], device, progress: dict) -> None:
    """Append this invocation of a real build (the code that ran each part of it) to ``invocations.jsonl``."""
    with open(state / "invocations.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"command": _command(), "commit": _commit(), "stages": list(stages), "redo": list(redo),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "threads": torch.get_num_threads(), "device": str(device),
                             "done": [k for k in STAGES if k in progress]}) + "\n")


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
    """HEAD, with ``+dirty`` when tracked files under ``cat_adapter/toy`` differ from it."""
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None
