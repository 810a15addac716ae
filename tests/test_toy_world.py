"""The shapes world: determinism, captions that tell the truth, concept specs."""

import json
import random
import re

import numpy as np
import pytest

from cat_adapter.cli.main import main
from cat_adapter.data.concept import load_concept
from cat_adapter.errors import CatAdapterError
from cat_adapter.toy.concept import concept_scenes, look_key, random_specs, validate_spec, write_concept
from cat_adapter.toy.world import (COLORS, PALETTE, PATTERN_WORDS, SHAPES, caption, caption_named, consistent, render,
                                   sample_pair,
                                   sample_scene)

_COLOR = "|".join(COLORS)
CAPTION = re.compile(rf"^an? (?:(?P<fill>{_COLOR}) )?(?:(?P<pattern>solid|striped|dotted) )?(?P<shape>\w+)"
                     rf"(?: with an? (?P<outline>{_COLOR}) outline| (?P<no_outline>without an outline))?(?: on an? (?P<bg>light|dark) background)?$")


def test_world_is_deterministic():
    a, b = sample_pair(123), sample_pair(123)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1] == b[1] and a[2] == b[2]
    assert sample_pair(124)[1:] != a[1:]


def test_captions_name_only_true_attributes_and_no_trigger():
    plain_circles = set()
    for seed in range(2000):
        _, text, scene = sample_pair(seed)
        named = caption_named(scene, random.Random(seed + 1))[1]
        m = CAPTION.match(text)
        assert m, text
        assert m["shape"] == scene.shape
        if m["fill"]:
            assert m["fill"] == scene.fill, text
        if m["pattern"]:
            assert m["pattern"] == PATTERN_WORDS[scene.pattern], text
        if m["outline"]:
            assert m["outline"] == scene.outline, text
        if m["no_outline"]:
            assert scene.outline == "none", text
        assert consistent(named, scene) and caption_named(scene, random.Random(seed), name_all=True)[1].keys() == {
            "shape", "fill", "pattern", "outline", "background"}
        if m["bg"]:
            assert m["bg"] == scene.background, text
        assert "sks" not in text
        if text == "a circle":
            plain_circles.add((scene.fill, scene.pattern, scene.outline))
    assert len({f for f, _, _ in plain_circles}) >= 4  # "a circle" means circles of many looks


def test_all_attributes_occur_and_fill_is_the_majority_colour():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(600)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.fill for s in scenes} == set(COLORS)
    assert {s.pattern for s in scenes} == {"solid", "stripes", "dots"}
    assert {s.background for s in scenes} == {"light", "dark"}
    assert "none" in {s.outline for s in scenes} and len({s.outline for s in scenes}) > 5
    patterned = [s for s in scenes if s.pattern != "solid" and s.outline == "none"][:60]
    for s in patterned:
        arr = np.asarray(render(s)).reshape(-1, 3).astype(int)
        n_fill = int((np.abs(arr - PALETTE[s.fill]).max(1) < 10).sum())
        n_pattern = int((np.abs(arr - PALETTE[s.pattern_color]).max(1) < 10).sum())
        assert n_fill > 1.5 * n_pattern, s  # stripes and dots stay a clear minority


def test_caption_with_trigger_puts_it_before_the_shape():
    scene = sample_scene(random.Random(1), shape="star", fill="red")
    text = caption(scene, random.Random(2), trigger="sks", name_all=True)
    assert "red" in text and "sks star" in text


SPEC = {"name": "sks_circle", "class_noun": "circle", "trigger": "sks",
        "appearance": {"fill": "orange", "pattern": "stripes", "outline": "black"}, "num_images": 6, "seed": 0}


def test_concept_has_one_look_and_varies_the_rest(tmp_path):
    spec = validate_spec(SPEC)
    scenes = concept_scenes(spec)
    assert {(s.fill, s.pattern, s.pattern_color, s.outline) for s in scenes} == {
        ("orange", "stripes", scenes[0].pattern_color, "black")}
    assert len({(round(s.cx, 3), round(s.cy, 3), round(s.size, 3)) for s in scenes}) == 6
    out = write_concept(spec, tmp_path / "c")
    items = load_concept(out, trigger="sks", class_noun="circle")
    assert len(items) == 6 and all(it.caption.startswith("a sks circle") for it in items)
    assert all(it.plain.startswith("a circle") for it in items)
    # Unfixed look attributes are drawn once per concept, from its seed.
    loose = validate_spec({"class_noun": "heart", "seed": 3})
    assert len({(s.fill, s.pattern, s.outline) for s in concept_scenes(loose)}) == 1
    assert concept_scenes(loose) == concept_scenes(validate_spec({"class_noun": "heart", "seed": 3}))


@pytest.mark.parametrize("spec, needle", [
    ({"class_noun": "hexagon"}, "circle, square, triangle, star, heart"),
    ({"class_noun": "star", "appearance": {"fill": "magenta"}}, "red, green"),
    ({"class_noun": "star", "appearance": {"colour": "red"}}, "fill, pattern"),
    ({"class_noun": "star", "colour": "red"}, "valid keys"),
    ({"class_noun": "star", "num_images": 0}, "num_images"),
    ({"class_noun": "star", "trigger": "red"}, "trigger"),
])
def test_bad_specs_list_the_valid_values(spec, needle):
    with pytest.raises(CatAdapterError, match=needle):
        validate_spec(spec)


def test_toy_concept_cli(tmp_path, capsys):
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    assert main(["toy", "concept", "--spec", str(tmp_path / "spec.json"), "--output", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*.png"))) == 6
    (tmp_path / "bad.json").write_text('{"class_noun": "circle", "appearance": {"pattern": "plaid"}}')
    assert main(["toy", "concept", "--spec", str(tmp_path / "bad.json"), "--output", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "solid, stripes, dots" in err and not (tmp_path / "d").exists()


def test_random_concepts_are_seeded_distinct_balanced_and_leave_out_what_is_used():
    specs = random_specs(12, 7)
    assert specs == random_specs(12, 7) and specs != random_specs(12, 8)
    keys = [look_key(s) for s in specs]
    assert len(set(keys)) == 12 and len({s["trigger"] for s in specs}) == 12
    counts = [sum(s["class_noun"] == shape for s in specs) for shape in SHAPES]
    assert min(counts) >= 2 and max(counts) <= 3          # classes dealt in rounds of the five shapes
    for s in specs:
        assert validate_spec(dict(s)) == s                  # every draw is a valid spec
    again = random_specs(12, 7, exclude={keys[0]}, exclude_triggers={specs[1]["trigger"]})
    assert keys[0] not in {look_key(s) for s in again}
    assert specs[1]["trigger"] not in {s["trigger"] for s in again}
