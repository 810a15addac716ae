"""Helpers of the evaluation tests: run the CLI, and recompute metrics independently of the package.

``recompute_*`` use only transformers, PIL and the standard library, never cat_adapter's scoring
code, so they check the package rather than repeat it.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import torch
from PIL import Image


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from cat_adapter.cli.main import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def read_pairs(folder: Path) -> list[dict]:
    with open(folder / "pairs.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class IndependentClip:
    """CLIPModel + the folder's AutoProcessor, one image or text at a time, float64 cosines."""

    def __init__(self, folder: Path):
        from transformers import AutoProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.proc = AutoProcessor.from_pretrained(str(folder))
        self._cache: dict = {}

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def image(self, path: Path) -> torch.Tensor:
        key = ("i", str(path))
        if key not in self._cache:
            img = Image.open(path).convert("RGB")
            x = self.proc(images=[img], return_tensors="pt")
            self._cache[key] = self._tensor(self.model.get_image_features(pixel_values=x["pixel_values"]))[0].double()
        return self._cache[key]

    @torch.no_grad()
    def text(self, text: str) -> torch.Tensor:
        key = ("t", text)
        if key not in self._cache:
            x = self.proc(text=[text], return_tensors="pt", truncation=True, max_length=77)
            feats = self.model.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
            self._cache[key] = self._tensor(feats)[0].double()
        return self._cache[key]

    @staticmethod
    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))


def hm(values: list[float], eps: float) -> float:
    """Eq. 11 with values <= eps clamped to eps."""
    return len(values) / sum(1.0 / max(v, eps) for v in values)


def recompute_scores(rows: list[dict], eps: float) -> dict:
    """Every aggregate of metrics.json from pairs.csv rows (written out again, not imported)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["metric"], []).append(r)
    out: dict = {}
    for m in ("prompt_score", "prompt_score_plain", "identity_score", "base_fidelity", "kps", "leakage"):
        cs = [float(r["cosine"]) for r in by.get(m, [])]
        if not cs:
            out[m] = None
            continue
        flip = m in ("kps", "leakage")
        h, mean, med = hm(cs, eps), statistics.fmean(cs), statistics.median(cs)
        out[m], out[m + "_mean"], out[m + "_median"] = ((1 - h, 1 - mean, 1 - med) if flip else (h, mean, med))
    for m in ("class_diversity", "base_class_diversity"):
        per_prompt: dict[str, list[float]] = {}
        for r in by.get(m, []):
            per_prompt.setdefault(r["prompt"], []).append(1 - float(r["cosine"]))
        out[m] = statistics.fmean(statistics.fmean(v) for v in per_prompt.values()) if per_prompt else None
    return out
