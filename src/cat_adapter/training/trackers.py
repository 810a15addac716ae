"""Experiment trackers (``--report-to tensorboard|wandb``) through accelerate's ``log_with``.

``OUT/log.jsonl`` stays the record of a run; a tracker gets the same numbers per step (every loss term,
lr, seconds, memory, CAT's alpha) and the validation grids as images. Trackers are optional extras:
a missing package is a one-line error naming the pip extra, before any model loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cat_adapter.errors import CatAdapterError
from cat_adapter.options import require_package

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}   # --report-to value -> import name (= pip extra)
PROJECT = "cat-adapter"


def check(report_to: str) -> None:
    if report_to in PACKAGES:
        require_package(PACKAGES[report_to], PACKAGES[report_to], f"--report-to {report_to}")


def accelerator_kwargs(report_to: str, out: Path) -> dict:
    """``Accelerator`` arguments: event files under ``OUT/logs/``."""
    if report_to == "none":
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": report_to, "project_config": ProjectConfiguration(project_dir=str(out),
                                                                          logging_dir=str(out / "logs"))}


def hparams(cfg) -> dict:
    """The run's options, flat and scalar (what TensorBoard's hparams and W&B's config take)."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}/{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def start(accelerator, cfg) -> bool:
    """Open the trackers (main process); False when --report-to none."""
    report_to = cfg.run.report_to
    if report_to == "none":
        return False
    if not any(getattr(t, "value", t) == report_to for t in accelerator.log_with):
        raise CatAdapterError(f"--report-to {report_to}: the accelerator given to train() was not made with "
                              f"log_with={report_to!r}")
    accelerator.init_trackers(PROJECT, config=hparams(cfg))
    return True


def log_step(accelerator, record: dict, step: int) -> None:
    accelerator.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}, step=step)


def log_image(accelerator, path: Path, step: int, tag: str = "validation") -> None:
    """A written PNG (the validation grid) to every tracker, as an HWC uint8 image."""
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, step, dataformats="HWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [image]}, step=step)
