"""Concept rates read from pixels, for a model whose world can read a concept's look (``plugins.World``).

``concept_rate_trigger``: the share of the adapted model's trigger images that show the concept's look;
``concept_rate_class``: the same for its trigger-free (class) images; ``concept_rate_control``: for the control
prompts (other classes, other attributes of the class). Added to an evaluation's ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cat_adapter.evaluation.manifest import read_manifest
from cat_adapter.io import write_json_atomic


def open_images(paths: list[Path]) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def add_concept_rates(eval_dir: Path, look: dict, world) -> dict:
    """The three rates of an evaluation folder's images, added to its metrics.json (with the look)."""
    rows = read_manifest(eval_dir / "manifest.csv")
    trig = [r.image_trigger for r in rows if r.group != "control" and r.image_trigger is not None]
    plain = [r.image_plain for r in rows if r.group != "control"]
    control = [r.image_plain for r in rows if r.group == "control"]

    def rate(paths: list[Path]) -> float | None:
        return world.concept_rate(open_images(paths), look) if paths else None

    rates = {"concept_rate_trigger": rate(trig), "concept_rate_class": rate(plain), "concept_rate_control": rate(control)}
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    metrics.update(rates)
    metrics["concept_look"] = look
    write_json_atomic(eval_dir / "metrics.json", metrics)
    return rates
