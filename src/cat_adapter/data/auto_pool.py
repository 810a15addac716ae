"""``--preserve-pool auto``: a preservation pool built from the concepts' class nouns and caption templates.

Each concept's trigger-free template (its caption template with the trigger removed) is filled with *other*
class nouns, each with one attribute: ``a {trigger} {class_noun}`` gives ``a red square``, ``a dotted star``,
``a heart with a blue outline``. The nouns and attributes are the model's world's where it has one
(``plugins.World``: the shapes world's shapes, colours, patterns and outlines for ``--model toy``), else a built-in
list of common object and animal nouns (or ``--preserve-pool-nouns FILE``) with colours and materials. No
concept's own class noun is used.

Two kinds of prompt are left out on purpose, so that the evaluation's control prompts can be held out from the
pool and a leakage measured on them means generalisation, not memorised preservation: bare other classes
(``a square``) and the concept's own class with attributes (``a green circle``). The shapes world's control
prompts are exactly those kinds, and ``compare`` checks that no control prompt is in the pool.
The pool is a finite list, encoded once; the seeded data stream draws ``--preserve-pool-size`` of them afresh
every step.
"""

from __future__ import annotations

import re

from cat_adapter.data.prompts import fill_template, remove_trigger

NOUNS = ("dog", "cat", "car", "chair", "cup", "bottle", "backpack", "teapot", "vase", "clock", "lamp", "shoe",
         "book", "bicycle", "guitar", "bird", "horse", "house", "tree", "flower", "bowl", "hat", "table", "sofa",
         "toy", "robot", "bear", "rabbit", "boat", "candle", "mug", "sneaker", "sunglasses", "umbrella", "kettle",
         "plant", "apple", "banana", "train", "airplane")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
MATERIALS = ("wooden", "metal", "glass", "plastic")
AUTO = "auto"


def _articles(text: str) -> str:
    """'a' before a vowel sound written with a vowel letter -> 'an' (and back)."""
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
    return re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\s])", r"\1 ", text)


def vocabulary(world=None, nouns: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(class nouns, attribute phrases with ``{noun}``): the model's world's (``plugins.World``), else the built-in
    lists; ``nouns`` replaces the nouns either way."""
    if world is not None:
        return list(nouns or world.class_nouns()), list(world.attributes())
    return list(nouns or NOUNS), [f"{a} {{noun}}" for a in COLOURS + MATERIALS]


def auto_pool(concepts, *, world=None, nouns: list[str] | None = None) -> list[str]:
    """Every concept's trigger-free template x every other class noun x every attribute, without repeats."""
    own = {c.class_noun.lower() for c in concepts if c.class_noun}
    names, attributes = vocabulary(world, nouns)
    out: dict[str, None] = {}
    for c in concepts:
        template = remove_trigger(fill_template(c.caption_template, c.trigger, "{class_noun}"), c.trigger)
        if "{class_noun}" not in template:
            template = f"{template} {{class_noun}}".strip()
        for noun in names:
            if noun.lower() in own:
                continue
            for attr in attributes:
                out[_articles(template.replace("{class_noun}", attr.format(noun=noun)))] = None
    return list(out)


def shared_with(pool: list[str], controls: list[str]) -> list[str]:
    """Prompts in both (case and spacing ignored)."""
    norm = {" ".join(p.lower().split()) for p in pool}
    return sorted(c for c in controls if " ".join(c.lower().split()) in norm)
