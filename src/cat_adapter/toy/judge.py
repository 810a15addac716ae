"""Zero-shot judging of shapes-world images with a CLIP: shape, fill colour, pattern and outline.

Each attribute is read by comparing the image with one prompt per value, the other attributes
unnamed except the shape where the prompt needs a noun:

    shape    "a {shape}"
    fill     "a {colour} {shape}"
    pattern  "a {solid|striped|dotted} {shape}"
    outline  "a {shape} with a {colour} outline" / "a {shape} without an outline"

``shape`` in the last three is the true shape for fresh procedural images (``clip_zero_shot``), and
the shape CLIP read for generated ones (``read_attributes``).
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from cat_adapter.toy.world import COLORS, OUTLINES, PATTERN_WORDS, PATTERNS, SHAPES, render, sample_scene

ATTRIBUTES = ("shape", "fill", "pattern", "outline")


def prompts_for(attribute: str, shape: str | None = None) -> tuple[list[str], tuple[str, ...]]:
    """(prompts, values) for one attribute."""
    if attribute == "shape":
        return [f"a {s}" for s in SHAPES], SHAPES
    if attribute == "fill":
        return [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {shape}" for c in COLORS], COLORS
    if attribute == "pattern":
        return [f"a {PATTERN_WORDS[p]} {shape}" for p in PATTERNS], PATTERNS
    if attribute == "outline":
        return [f"a {shape} without an outline" if o == "none" else f"a {shape} with a {o} outline"
                for o in OUTLINES], OUTLINES
    raise ValueError(attribute)


class Judge:
    """Reads attributes of images with a CLIP (an ``evaluation.clip.ClipEmbedder``)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self._text: dict[tuple[str, str | None], np.ndarray] = {}

    def _prompts(self, attribute: str, shape: str | None) -> tuple[np.ndarray, tuple[str, ...]]:
        key = (attribute, shape)
        prompts, values = prompts_for(attribute, shape)
        if key not in self._text:
            self._text[key] = self.embedder.embed_texts(prompts)
        return self._text[key], values

    def read(self, images: Sequence, shapes: Sequence[str] | None = None,
             attributes: Sequence[str] = ATTRIBUTES) -> list[dict[str, str]]:
        """One dict per image; ``shapes`` (true shapes) condition the other prompts, else CLIP's own reading."""
        emb = self.embedder.embed_images(list(images))
        text, values = self._prompts("shape", None)
        read_shapes = [values[k] for k in (emb @ text.T).argmax(1)]
        out = [{"shape": s} for s in read_shapes]
        cond = list(shapes) if shapes is not None else read_shapes
        for attribute in attributes:
            if attribute == "shape":
                continue
            for i, shape in enumerate(cond):
                text, values = self._prompts(attribute, shape)
                out[i][attribute] = values[int((emb[i] @ text.T).argmax())]
        return out


def fresh_scenes(n: int, seed: int) -> list:
    """Scenes never in the build's pool (another seed string), for held-out checks."""
    return [sample_scene(random.Random(f"fresh-{seed}-{i}")) for i in range(n)]


def clip_zero_shot(clip: str, *, n: int = 1000, seed: int = 0, embedder=None) -> dict[str, float]:
    """Zero-shot accuracy of a CLIP folder on ``n`` fresh procedural images, per attribute."""
    from cat_adapter.evaluation.clip import ClipEmbedder

    embedder = embedder or ClipEmbedder(clip, device="cpu", batch_size=256)
    scenes = fresh_scenes(n, seed)
    reads = Judge(embedder).read([render(s) for s in scenes], shapes=[s.shape for s in scenes])
    return {a: round(float(np.mean([r[a] == getattr(s, a) for r, s in zip(reads, scenes)])), 4) for a in ATTRIBUTES}
