"""The shipped shapes-world models: ``--model toy`` and ``--clip toy`` resolve here.

``assets/pipeline`` is a ``StableDiffusionPipeline`` folder and ``assets/clip`` a ``CLIPModel``
folder with its processor, both float32 safetensors written by ``cat-adapter toy build``;
``assets/build.json`` records how (command, recipe, versions, commit, sha256 of every weight file).
"""

from __future__ import annotations

import json
from pathlib import Path

from cat_adapter.errors import CatAdapterError

TOY = "toy"
ASSETS = Path(__file__).resolve().parent / "assets"


def _folder(name: str, option: str) -> Path:
    path = ASSETS / name
    marker = "model_index.json" if name == "pipeline" else "config.json"
    if not (path / marker).is_file():
        raise CatAdapterError(f"{option} toy: the shipped toy {name} is missing from this install ({path}); "
                              "reinstall cat-adapter or rebuild it with 'cat-adapter toy build'")
    return path


def toy_pipeline(option: str = "--model") -> Path:
    return _folder("pipeline", option)


def toy_clip(option: str = "--clip") -> Path:
    return _folder("clip", option)


def build_record() -> dict:
    path = ASSETS / "build.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def info() -> dict:
    """What ``cat-adapter toy info`` prints."""
    from cat_adapter.toy.world import BACKGROUND_RANGE, BACKGROUNDS, OUTLINES, PALETTE, PATTERNS, RESOLUTION, SHAPES

    record = build_record()
    sampling = record.get("recipe", {}).get("sampling", {})
    return {
        "pipeline": str(ASSETS / "pipeline"), "clip": str(ASSETS / "clip"),
        "shapes": list(SHAPES), "palette": {k: list(v) for k, v in PALETTE.items()}, "patterns": list(PATTERNS),
        "outlines": list(OUTLINES), "backgrounds": list(BACKGROUNDS),
        "background_grey_levels": {k: list(v) for k, v in BACKGROUND_RANGE.items()},
        "resolution": RESOLUTION, "steps": sampling.get("steps"), "guidance_scale": sampling.get("guidance_scale"),
        "max_prompt_tokens": record.get("recipe", {}).get("tokenizer", {}).get("model_max_length"),
        "built": {k: record.get(k) for k in ("command", "commit", "seconds")} if record else None,
        "weights": record.get("weights"),
    }
