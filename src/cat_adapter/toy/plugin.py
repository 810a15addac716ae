"""The shapes world as a plugin (entry point ``cat_adapter.plugins: toy``): the ``toy`` aliases of ``--model`` and
``--clip``, the world the core asks about the toy model (``plugins.World``), and the ``demo`` and ``toy``
subcommands. Everything the core knows of the shapes world comes through here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cat_adapter.toy.concept import concept_look, control_prompts, heldout_prompts, pool_prompts
from cat_adapter.toy.tuned import BASELINES, TCO

TOY = "toy"
LOOK_KEYS = ("fill", "pattern", "outline")


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
