"""The analytic shapes-world analyzer: accuracy on rendered scenes, robustness, blanks, concept rates."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cat_adapter.toy.analyze import analyze, concept_rate, matches_look, nearest_color
from cat_adapter.toy.world import PALETTE, render, sample_pair, sample_scene

KEYS = ("fill", "pattern", "outline")
SEEDS = range(50_000, 50_300)      # not the seeds the thresholds were tuned on


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Slight blur (radius 0.5 at 32 px) and Gaussian noise (sigma 8/255)."""
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float64)
    return Image.fromarray(np.clip(a + rng.normal(0.0, 8.0, a.shape), 0, 255).astype(np.uint8))


def _accuracy(pairs: list[tuple[Image.Image, object]]) -> dict[str, float]:
    hits = dict.fromkeys(KEYS, 0)
    for img, scene in pairs:
        got = analyze(img)
        for k in KEYS:
            hits[k] += got[k] == getattr(scene, k)
    return {k: v / len(pairs) for k, v in hits.items()}


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, object]]:
    return [(img, scene) for img, _, scene in map(sample_pair, SEEDS)]


def test_accuracy_on_rendered_scenes(scenes):
    acc = _accuracy(scenes)        # measured on 1000 scenes: fill, pattern and outline all >= 99.6 %
    assert acc["fill"] >= 0.97 and acc["pattern"] >= 0.95 and acc["outline"] >= 0.95, acc


def test_pattern_colour_and_foreground_fraction(scenes):
    got = [(analyze(img), scene) for img, scene in scenes[:100]]
    assert np.mean([g["pattern_color"] == s.pattern_color for g, s in got]) >= 0.93
    for g, s in got:
        assert 0.02 < g["foreground_fraction"] < 0.9
    # bigger shapes cover more of the image
    small = [g["foreground_fraction"] for g, s in got if s.size < 0.6 and s.shape == "square"]
    large = [g["foreground_fraction"] for g, s in got if s.size > 0.75 and s.shape == "square"]
    assert small and large and max(small) < min(large)


def test_robust_to_blur_and_noise(scenes):
    rng = np.random.default_rng(0)
    acc = _accuracy([(_degrade(img, rng), scene) for img, scene in scenes[:200]])
    assert acc["fill"] >= 0.95 and acc["pattern"] >= 0.9 and acc["outline"] >= 0.9, acc


def test_hard_contrasts():
    """White/black shapes, patterns and outlines next to a background of nearly the same grey."""
    rng = random.Random(7)
    cases = [dict(outline="white", background="light"), dict(outline="black", background="dark"),
             dict(fill="white", background="dark"), dict(fill="black", background="light"),
             dict(pattern="stripes", pattern_color="white", background="light"),
             dict(pattern="dots", pattern_color="black", background="dark")]
    pairs = []
    for fixed in cases:
        for _ in range(15):
            scene = sample_scene(rng, **fixed)
            while scene.fill in (scene.outline, scene.pattern_color):   # fixed colours may clash
                scene = sample_scene(rng, **fixed)
            pairs.append((render(scene), scene))
    acc = _accuracy(pairs)
    assert min(acc.values()) >= 0.9, acc


def test_any_size_and_mode():
    for seed in range(5):
        img, _, scene = sample_pair(seed)
        base = {k: analyze(img)[k] for k in KEYS}
        assert {k: analyze(render(scene, 64))[k] for k in KEYS} == base
        assert {k: analyze(img.convert("RGBA"))[k] for k in KEYS} == base


@pytest.mark.parametrize("image", [
    Image.new("RGB", (32, 32), (215, 215, 215)),
    Image.new("RGB", (64, 64), (40, 40, 40)),
    Image.new("RGB", (32, 32), (255, 255, 255)),
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)),
], ids=["light", "dark-64px", "white", "noise"])
def test_no_clear_foreground_gives_none(image):
    got = analyze(image)
    assert got["fill"] is None and got["pattern"] is None and got["outline"] is None and got["pattern_color"] is None
    assert not matches_look(image, {"fill": "red", "pattern": "solid", "outline": "none"})


def test_nearest_color():
    for name, rgb in PALETTE.items():
        assert nearest_color(rgb) == name
        assert nearest_color(np.clip(np.array(rgb) + [12, -10, 8], 0, 255)) == name
    assert nearest_color((20, 20, 25)) == "black" and nearest_color((245, 250, 240)) == "white"


def _look_images(look: dict, n: int, seed: int) -> list[Image.Image]:
    """Images of one look with varied shape, size, position and background."""
    rng = random.Random(seed)
    return [render(sample_scene(rng, **look)) for _ in range(n)]


def test_concept_rate_counts_matching_looks():
    look = {"fill": "orange", "pattern": "stripes", "pattern_color": "black", "outline": "black"}
    mine = _look_images(look, 12, seed=1)
    assert concept_rate(mine, look) >= 0.9
    # pattern_color is not compared
    assert concept_rate(mine, {**look, "pattern_color": "blue"}) == concept_rate(mine, look)
    others = [{**look, "fill": "yellow"}, {**look, "pattern": "dots"}, {**look, "pattern": "solid", "pattern_color": None},
              {**look, "outline": "none"}, {**look, "outline": "blue"}]
    for other in others:
        theirs = _look_images(other, 6, seed=2)
        assert concept_rate(theirs, look) <= 0.2, other
        assert concept_rate(theirs, other) >= 0.8, other
    mixed = mine[:6] + _look_images(others[0], 4, seed=3)
    rate = concept_rate(mixed, look)
    assert rate == sum(matches_look(img, look) for img in mixed) / len(mixed)
    assert rate == pytest.approx(0.6, abs=0.1)
    assert concept_rate([], look) == 0.0
