"""The last step of a full build: the stages put together as ``OUTPUT/pipeline``, ``OUTPUT/clip`` and
``OUTPUT/build.json``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from cat_adapter.io import atomic_dir, atomic_path
from cat_adapter.toy.build.clip import save_clip_folder, text_encoder_from_clip
from cat_adapter.toy.build.common import STAGES, _command, _commit, _versions, invocations, weight_hashes
from cat_adapter.toy.build.tokenizer import load_tokenizer
from cat_adapter.toy.build.unet import build_scheduler


def assemble(output: Path, recipe: dict, progress: dict, *, log: Callable[[str], None] = print) -> dict:
    """Put the stages together as a pipeline folder (U-Net, VAE, stage-2 text tower) and a CLIP folder
    (the judge), hash them, write build.json."""
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
        "command": _command(), "invocations": invocations(state), "recipe": recipe,
        "stages": {k: v for k, v in progress.items() if k in STAGES},
        "seconds": progress.get("seconds", {}), "versions": _versions(), "commit": _commit(),
        "weights": {**{f"pipeline/{k}": v for k, v in weight_hashes(output / "pipeline").items()},
                    **{f"clip/{k}": v for k, v in weight_hashes(output / "clip").items()}},
    }
    with atomic_path(output / "build.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {output / 'pipeline'}, {output / 'clip'} and {output / 'build.json'}")
    return record
