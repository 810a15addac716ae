"""What keeps a run from mixing, losing or hiding a user's work: preflight before anything expensive, an estimate of
what the run writes, the one-line messages of a full disk or an interruption (with the checkpoint and the command
that resumes), the start-up summary and the warning about images smaller than --resolution."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import torch

from cat_adapter.config import TrainConfig
from cat_adapter.data.concept import ConceptItem
from cat_adapter.data.concepts import ConceptSpec
from cat_adapter.io import check_writable
from cat_adapter.methods import registry
from cat_adapter.methods.base import Method
from cat_adapter.training.checkpoint import checkpoint_step

log = logging.getLogger("cat_adapter.training.loop")
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)   # a write the disk refused


def undo_fresh_folder(out: Path, existed: bool) -> None:
    """Empty a folder this run found new or empty (remove it if the run made it): a refused run writes nothing."""
    for entry in out.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if not existed:
        out.rmdir()


def preflight(cfg: TrainConfig) -> None:
    """Before anything expensive: every folder the run writes is writable (a read-only or missing disk is one line)."""
    check_writable(cfg.run.output, "--output")
    sections = registry.get_spec(cfg.method.method).sections
    for option, folder in (("--cache-dir", cfg.run.cache_dir),
                           ("--class-data", cfg.prior.class_data if "prior" in sections else None)):
        if folder:
            check_writable(folder, option)


def disk_errno(exc: BaseException) -> int | None:
    """The errno of a write the disk refused: an OSError's, or the one safetensors' Rust writer quotes."""
    import re

    if isinstance(exc, OSError):
        return exc.errno if exc.errno in DISK_ERRORS else None
    m = re.search(r"os error (\d+)", str(exc))
    return int(m.group(1)) if m and int(m.group(1)) in DISK_ERRORS else None


def main_launch_process() -> bool:
    """The process of rank 0 under ``accelerate launch`` / torchrun (RANK unset: a plain process)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def disk_error(s, exc: BaseException) -> str:
    """A write that failed mid-run (``s``: the loop's Session): what was lost, what is kept, how to go on."""
    import os

    out = Path(s.cfg.run.output)
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename else ""
    return (f"--output {out}: cannot write{where}: {os.strerror(disk_errno(exc))}; the weights trained in memory up "
            f"to step "
            f"{s.reached} could not be written there; {resume_note(s)} once there is room")


def resume_note(s) -> str:
    """The last complete checkpoint of the Session ``s`` and the exact command that continues from it (or that there
    is none)."""
    out = Path(s.cfg.run.output).resolve()
    again = f"cat-adapter train --config {out / 'config.yaml'}"
    if s.last_checkpoint is not None:
        return (f"last complete checkpoint: {s.last_checkpoint} (step {checkpoint_step(s.last_checkpoint)}); "
                f"resume with: {again} --resume")
    return f"no checkpoint was written (--checkpoint-every N writes them); start again with: {again} --overwrite"


def startup_summary(cfg: TrainConfig, items: list[ConceptItem], specs: list[ConceptSpec], model, accelerator) -> str:
    """What the run is about to do, in one line: images and their captions, concepts, device and dtype, steps."""
    from_txt = sum(1 for it in items if it.caption_source != "template")
    o, r = cfg.optim, cfg.run
    concepts = ", ".join(f"{c.trigger} {c.class_noun or ''}".strip() for c in specs)
    quant = f", base {cfg.model.quantize_base}" if cfg.model.quantize_base != "none" else ""
    return (f"{cfg.method.method} on a {model.family} model: {len(items)} images ({from_txt} captioned by .txt files, "
            f"{len(items) - from_txt} by the caption template) of {concepts}; {o.steps} steps of batch "
            f"{o.batch_size} x {o.gradient_accumulation_steps} x {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}, mixed precision {r.mixed_precision}{quant}{_capacity(cfg, specs)}")


def _capacity(cfg: TrainConfig, specs: list[ConceptSpec]) -> str:
    """For several concepts in one LoRA: its rank, against the default of the singles' ranks together."""
    from cat_adapter.methods.lora.config import RANK_PER_CONCEPT
    from cat_adapter.methods.registry import get_spec

    if len(specs) < 2 or "lora" not in get_spec(cfg.method.method).sections:
        return ""
    return (f"; LoRA rank {cfg.lora.rank} for {len(specs)} concepts (default {RANK_PER_CONCEPT} per concept; "
            "--rank sets it)")


def warn_small_images(items: list[ConceptItem], resolution: int, *, buckets: bool = False) -> list[str]:
    """A warning naming the training images that will be upscaled: a shorter side below --resolution (with
    --buckets: an area below --resolution squared). Upscaled images train the model on their blur."""
    from PIL import Image

    small = []
    for it in items:
        with Image.open(it.image_path) as img:   # the header only
            w, h = img.size
        if (w * h < resolution * resolution) if buckets else (min(w, h) < resolution):
            small.append(f"{it.image_path.name} ({w}x{h})")
    if small:
        log.warning("%d of %d training images are smaller than --resolution %d and will be upscaled: %s%s; give larger "
                    "images or a lower --resolution", len(small), len(items), resolution, ", ".join(small[:5]),
                    ", ..." if len(small) > 5 else "")
    return small


def written_bytes(cfg: TrainConfig, method: Method) -> int:
    """What the run will write, estimated from its trained parameters: the final export (and EMA's), each
    --save-every snapshot, and each checkpoint kept (trained state, two optimizer moments, the export), plus 1 MB for
    logs and configs. Validation grids and the latent cache are not counted."""
    params = sum(p.numel() for p in method.parameters())
    r, steps = cfg.run, cfg.optim.steps
    export = params * torch.finfo(getattr(torch, r.save_dtype)).bits // 8
    exports = 1 + (cfg.optim.ema_decay is not None) + (steps // r.save_every if r.save_every else 0)
    checkpoints = 0
    if r.checkpoint_every:
        checkpoints = steps // r.checkpoint_every + 1
        checkpoints = min(checkpoints, r.checkpoints_limit + 1) if r.checkpoints_limit else checkpoints
    return exports * export + checkpoints * (params * 12 + export) + 2**20
