"""Personal concepts of the shapes world from a JSON spec: one fixed look, varied size/position/background.

    {"name": "sks_circle", "class_noun": "circle", "trigger": "sks",
     "appearance": {"fill": "orange", "pattern": "stripes", "outline": "black"}, "num_images": 6, "seed": 0}

Look attributes the spec leaves out (fill, pattern, pattern_color, outline) are drawn once from the
seed, so a concept always has one look; size, position and background vary across its images.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from cat_adapter.errors import CatAdapterError
from cat_adapter.io import atomic_dir
from cat_adapter.toy.world import (BACKGROUNDS, COLORS, OUTLINES, PATTERN_WORDS, PATTERNS, RESOLUTION, SHAPES, render,
                                   sample_scene)

SPEC_KEYS = ("name", "class_noun", "trigger", "appearance", "num_images", "seed", "resolution")
APPEARANCE = {"fill": COLORS, "pattern": PATTERNS, "pattern_color": COLORS, "outline": OUTLINES, "background": BACKGROUNDS}
LOOK_KEYS = ("fill", "pattern", "pattern_color", "outline")


def validate_spec(spec: object, source: str = "spec") -> dict:
    """The spec with defaults filled in; unknown names or values are errors listing the valid ones."""
    if not isinstance(spec, dict):
        raise CatAdapterError(f"{source}: expected a JSON object with keys {', '.join(SPEC_KEYS)}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise CatAdapterError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(SPEC_KEYS)}")
    out = {"name": None, "trigger": "sks", "appearance": {}, "num_images": 6, "seed": 0, "resolution": RESOLUTION, **spec}
    if out.get("class_noun") not in SHAPES:
        raise CatAdapterError(f"{source}: class_noun must be one of {', '.join(SHAPES)} (got {out.get('class_noun')!r})")
    trig = out["trigger"]
    if not isinstance(trig, str) or not trig.strip() or any(c.isspace() for c in trig) or trig.lower() in SHAPES + COLORS:
        raise CatAdapterError(f"{source}: trigger must be one word that is not a shape or colour name (got {trig!r})")
    for key in ("num_images", "seed", "resolution"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < (1 if key != "seed" else 0):
            raise CatAdapterError(f"{source}: {key} must be a {'non-negative' if key == 'seed' else 'positive'} integer")
    if out["resolution"] % 8:
        raise CatAdapterError(f"{source}: resolution must be a multiple of 8")
    app = out["appearance"]
    if not isinstance(app, dict):
        raise CatAdapterError(f"{source}: appearance must be an object with keys among {', '.join(APPEARANCE)}")
    for key, value in app.items():
        if key not in APPEARANCE:
            raise CatAdapterError(f"{source}: unknown appearance attribute {key!r}; valid: {', '.join(APPEARANCE)}")
        if value not in APPEARANCE[key]:
            raise CatAdapterError(f"{source}: appearance.{key} must be one of {', '.join(APPEARANCE[key])} (got {value!r})")
    if app.get("pattern") == "solid" and app.get("pattern_color"):
        raise CatAdapterError(f"{source}: appearance.pattern_color needs pattern stripes or dots")
    if app.get("fill") and app.get("fill") in (app.get("pattern_color"), app.get("outline")):
        raise CatAdapterError(f"{source}: appearance.fill must differ from pattern_color and outline")
    out["name"] = out["name"] or f"{out['trigger']}_{out['class_noun']}"
    return out


def concept_look(spec: dict) -> dict:
    """The concept's fixed look: the spec's attributes, the rest drawn once from its seed."""
    rng = random.Random(f"look-{spec['seed']}")
    fixed = {k: v for k, v in spec["appearance"].items() if k in LOOK_KEYS}
    scene = sample_scene(rng, shape=spec["class_noun"], **fixed)
    return {"fill": scene.fill, "pattern": scene.pattern, "pattern_color": scene.pattern_color, "outline": scene.outline}


def concept_scenes(spec: dict) -> list:
    look = concept_look(spec)
    rng = random.Random(f"images-{spec['seed']}")
    background = spec["appearance"].get("background")
    scenes = []
    for _ in range(spec["num_images"]):
        s = sample_scene(rng, shape=spec["class_noun"], fill=look["fill"], pattern=look["pattern"],
                         outline=look["outline"], **({"background": background} if background else {}))
        scenes.append(replace(s, pattern_color=look["pattern_color"]))
    return scenes


def write_concept(spec: dict, output: str | Path) -> Path:
    """Images ``NN.png`` with captions ``NN.txt`` ("a sks circle on a dark background") and ``concept.json``."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CatAdapterError(f"--output {output}: exists and is not empty; choose a new folder")
    with atomic_dir(output) as tmp:
        for i, scene in enumerate(concept_scenes(spec)):
            render(scene, spec["resolution"]).save(tmp / f"{i:02d}.png")
            # Captions always name the background, so "a sks circle" stays a held-out prompt.
            text = f"a {spec['trigger']} {scene.shape} on a {scene.background} background"
            (tmp / f"{i:02d}.txt").write_text(text + "\n")
        (tmp / "concept.json").write_text(json.dumps({**spec, "look": concept_look(spec)}, indent=1) + "\n")
    return output


def load_spec(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CatAdapterError(f"--spec {path}: file not found")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CatAdapterError(f"--spec {path}: not valid JSON (line {exc.lineno})") from None
    return validate_spec(spec, f"--spec {path}")


# ------------------------------------------------------------------------------------------ prompt sets
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def heldout_prompts(spec: dict) -> list[str]:
    """Trigger prompts never used as captions (concept captions always name the background)."""
    return [f"a {{trigger}} {spec['class_noun']}"]


def control_prompts(spec: dict, look: dict) -> list[str]:
    """Trigger-free prompts never trained on: the other classes, and the class with other attributes."""
    noun = spec["class_noun"]
    others = [s for s in SHAPES if s != noun]
    colours = [c for c in ("blue", "green", "red", "purple", "yellow") if c not in (look["fill"], look["outline"])]
    pattern = next(p for p in PATTERNS if p not in ("solid", look["pattern"]))
    outline = next(c for c in ("green", "red", "blue") if c not in (look["outline"], look["fill"]))
    return ([f"a {s}" for s in others]
            + [f"{_article(colours[0])} {colours[0]} {noun}", f"{_article(colours[1])} {colours[1]} {noun}",
               f"a {PATTERN_WORDS[pattern]} {noun}", f"a {noun} with a {outline} outline"])


def pool_prompts(spec: dict) -> list[str]:
    """A preservation pool of coloured prompts of the other classes (never a control prompt)."""
    others = [s for s in SHAPES if s != spec["class_noun"]]
    return [f"{_article(c)} {c} {s}" for i, s in enumerate(others) for c in (COLORS[(2 * i) % 8], COLORS[(2 * i + 5) % 8])]


# ------------------------------------------------------------------------------------------ random concepts
def look_key(spec: dict) -> tuple:
    """(class noun, fill, pattern, outline): what tells two concepts apart (pattern colour aside, as the analyzer)."""
    look = concept_look(spec)
    return (spec["class_noun"], look["fill"], look["pattern"], look["outline"])


def random_specs(n: int, seed: int, *, exclude: set[tuple] = frozenset(), exclude_triggers: set[str] = frozenset()
                 ) -> list[dict]:
    """``n`` concept specs drawn from the world's attribute space with ``seed``: classes dealt in shuffled rounds
    of the five shapes (each class as often as ``n`` allows), then fill, pattern (and its colour) and outline as the
    world draws them (an outline on 40 % of concepts); triggers of three random consonants. A draw whose ``look_key`` is in ``exclude`` (concepts already in use) or
    repeats an earlier one is drawn again, as is a trigger in ``exclude_triggers``."""
    rng = random.Random(f"random-concepts-{seed}")
    classes: list[str] = []
    while len(classes) < n:
        round_ = list(SHAPES)
        rng.shuffle(round_)
        classes += round_
    taken, triggers, out = set(exclude), {t.lower() for t in exclude_triggers}, []
    for noun in classes[:n]:
        while True:
            fill = rng.choice(COLORS)
            pattern = rng.choice(PATTERNS)
            outline = rng.choice([c for c in COLORS if c != fill]) if rng.random() < 0.4 else "none"
            appearance = {"fill": fill, "pattern": pattern, "outline": outline}
            if pattern != "solid":
                appearance["pattern_color"] = rng.choice([c for c in COLORS if c not in (fill, outline)])
            trigger = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(3))
            spec = validate_spec({"class_noun": noun, "trigger": trigger, "appearance": appearance,
                                  "name": f"{trigger}_{noun}"}, "random concept")
            key = look_key(spec)
            if key not in taken and trigger not in triggers:
                break
        taken.add(key)
        triggers.add(trigger)
        out.append(spec)
    return out
