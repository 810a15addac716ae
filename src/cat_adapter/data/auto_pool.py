"""``--preserve-pool auto``: a preservation pool built from the concepts' class nouns and caption templates.

Each concept's trigger-free template is filled with class nouns,
each with one attribute: ``a {trigger} {class_noun}`` gives ``a red square``, ``a dotted star``, ``a heart with a
blue outline``, and the concept's own class with every attribute (``a green circle`` for a circle concept). The
nouns and attributes are the model's world's where it has one (``plugins.World``: the shapes world's shapes, colours,
patterns and outlines for ``--model toy``), else a built-in list of common object and animal nouns (or
``--preserve-pool-nouns FILE``) with colours and materials. The template is the subject phrase of the concept's own
captions where its images have .txt captions that name the class ("a sks square on a light background" gives
"a {trigger} {class_noun}", so pool prompts read as the prompts of its world: "a red star"), else its caption
template ("a photo of {trigger} {class_noun}" gives "a photo of red dog").

Bare class prompts (``a square``) are never in it, and ``--preserve-pool-exclude FILE`` holds prompts out: ``compare``
passes its control prompts, so leakage measured on them means generalisation, not memorised preservation. On 12
random shapes-world concepts the concept's own class with other attributes was what moved most when the pool left
it out (docs/benchmarks.md, preservation on random concepts). The pool is a finite list, encoded once; the seeded
data stream draws ``--preserve-pool-size`` of them afresh every step.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from cat_adapter.data.prompts import fill_template, remove_trigger, trigger_pattern

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


def subject_template(concept) -> str:
    """The most common subject phrase of the concept's .txt captions (the caption up to its class noun, trigger and
    class noun as ``{trigger}`` and ``{class_noun}``), or its caption template when no caption names the class."""
    if not concept.class_noun:
        return concept.caption_template
    noun = re.compile(rf"(?<![\w-]){re.escape(concept.class_noun)}(?![\w-])", re.IGNORECASE)
    found: Counter = Counter()
    folder = Path(concept.data).expanduser()
    for txt in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        caption = " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
        m = noun.search(caption)
        if m and trigger_pattern(concept.trigger).search(caption[:m.start()] + " " + caption[m.end():]):
            head = caption[:m.start()] + "{class_noun}"
            found[trigger_pattern(concept.trigger).sub("{trigger}", head)] += 1
    return found.most_common(1)[0][0] if found else concept.caption_template


def auto_pool(concepts, *, world=None, nouns: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """Every concept's trigger-free template x (every noun of the vocabulary and the concepts' own class nouns) x
    every attribute, without repeats, less ``exclude`` (case and spacing ignored)."""
    names, attributes = vocabulary(world, nouns)
    own = [c.class_noun for c in concepts if c.class_noun]
    names = list(dict.fromkeys(names + [n for n in own if n.lower() not in {x.lower() for x in names}]))
    held = {_norm(x) for x in exclude or ()}
    out: dict[str, None] = {}
    for c in concepts:
        template = remove_trigger(fill_template(c.caption_template, c.trigger, "{class_noun}"), c.trigger)
        if "{class_noun}" not in template:
            template = f"{template} {{class_noun}}".strip()
        for noun in names:
            for attr in attributes:
                prompt = _articles(template.replace("{class_noun}", attr.format(noun=noun)))
                if _norm(prompt) not in held:
                    out[prompt] = None
    return list(out)


def _norm(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def shared_with(pool: list[str], controls: list[str]) -> list[str]:
    """Prompts in both (case and spacing ignored)."""
    norm = {_norm(p) for p in pool}
    return sorted(c for c in controls if _norm(c) in norm)
