"""The shapes world as a plugin (entry point ``cat_adapter.plugins: toy``): the ``toy`` aliases of ``--model`` and
``--clip``, the world the core asks about the toy model (``plugins.World``), and the ``demo`` and ``toy``
subcommands. Everything the core knows of the shapes world comes through here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TOY = "toy"
# Option values tuned for the shapes world, per method; the demo and compare plans use them.
# The Chosen One: 128 images and clusters of 20 would cost more than the rest of a toy run.
TCO = {"tco_images": 32, "tco_cluster_size": 8, "tco_min_cluster": 3, "tco_max_iterations": 3,
       "tco_embedder": "toy", "tco_sample_steps": 20, "tco_guidance_scale": 4.0}
# DreamBooth's reference lr (5e-6) and TI's (2e-3, 1 vector) learn nothing measurable on the 2.2M-parameter toy
# U-Net in a demo's budget; these won a short sweep on the default concept (benchmarks/toy_baselines.py,
# docs/methods.md). TI's steps are its own: a TI step costs a fifth of a DreamBooth step here.
BASELINES = {"dreambooth": dict(lr=5e-4, num_class_images=16, class_sample_steps=20, class_guidance_scale=4.0),
             "ti": dict(lr=2e-2, num_vectors=4, steps=1000)}
LOOK_KEYS = ("fill", "pattern", "outline")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def heldout_prompts(spec: dict) -> list[str]:
    """Trigger prompts never used as captions (concept captions always name the background)."""
    return [f"a {{trigger}} {spec['class_noun']}"]


def control_prompts(spec: dict, look: dict) -> list[str]:
    """Trigger-free prompts never trained on: the other classes, and the class with other attributes."""
    from cat_adapter.toy.world import PATTERN_WORDS, PATTERNS, SHAPES

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
    from cat_adapter.toy.world import COLORS, SHAPES

    others = [s for s in SHAPES if s != spec["class_noun"]]
    return [f"{_article(c)} {c} {s}" for i, s in enumerate(others) for c in (COLORS[(2 * i) % 8], COLORS[(2 * i + 5) % 8])]


class ShapesWorld:
    """``plugins.World`` for the shipped toy model."""

    name = TOY

    def class_nouns(self) -> list[str]:
        from cat_adapter.toy.world import SHAPES

        return list(SHAPES)

    def attributes(self) -> list[str]:
        from cat_adapter.toy.world import COLORS, PATTERN_WORDS

        return ([f"{c} {{noun}}" for c in COLORS] + [f"{PATTERN_WORDS[p]} {{noun}}" for p in ("stripes", "dots")]
                + [f"{{noun}} with a {c} outline" for c in COLORS])

    def load_spec(self, source: str | Path | dict, where: str) -> dict:
        from cat_adapter.toy.concept import load_spec, validate_spec

        return validate_spec(dict(source), where) if isinstance(source, dict) else load_spec(source)

    def write_concept(self, spec: dict, folder: Path) -> None:
        from cat_adapter.toy.concept import write_concept

        write_concept(spec, folder)

    def concept_prompts(self, spec: dict) -> dict[str, list[str]]:
        look = self.concept_look(spec)
        return {"heldout": heldout_prompts(spec), "control": control_prompts(spec, look), "pool": pool_prompts(spec)}

    def concept_look(self, spec: dict) -> dict:
        from cat_adapter.toy.concept import concept_look

        return concept_look(spec)

    def look_of(self, images: list) -> dict | None:
        from cat_adapter.toy.analyze import analyze

        seen: Counter = Counter()
        for image in images:
            got = analyze(image)
            if all(got[k] is not None for k in LOOK_KEYS):
                seen[tuple(got[k] for k in LOOK_KEYS)] += 1
        return dict(zip(LOOK_KEYS, seen.most_common(1)[0][0])) if seen else None

    def concept_rate(self, images: list, look: dict) -> float:
        from cat_adapter.toy.analyze import concept_rate

        return concept_rate(images, look)

    def defaults(self, method: str) -> dict:
        return dict({"tco": TCO, **BASELINES}.get(method, {}))


def _register_demo(sub) -> None:
    from cat_adapter.toy.cli_demo import register

    register(sub)


def _register_toy(sub) -> None:
    from cat_adapter.toy.cli import register

    register(sub)


def register(plugins) -> None:
    """Entry point (group ``cat_adapter.plugins``)."""
    from cat_adapter.toy.assets import toy_clip, toy_pipeline

    plugins.register_alias(TOY, "pipeline", lambda option: str(toy_pipeline(option)))
    plugins.register_alias(TOY, "clip", lambda option: str(toy_clip(option)))
    plugins.register_world(ShapesWorld())
    plugins.register_command("demo", _register_demo)
    plugins.register_command("toy", _register_toy)
