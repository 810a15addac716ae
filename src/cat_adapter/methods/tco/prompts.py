"""The Chosen One's two prompts: p for the first iteration (no trigger) and y_T for training and later iterations."""

from __future__ import annotations

import re

from cat_adapter.data.prompts import fill_template, has_trigger, remove_trigger
from cat_adapter.errors import CatAdapterError


def tco_prompts(prompt: str, trigger: str, class_noun: str | None) -> tuple[str, str]:
    """(p, y_T): ``{class_noun}`` is filled in; the trigger goes where ``{trigger}`` stands, else before the first
    whole-word class noun ('a watercolor fox character' -> 'a watercolor sks fox character')."""
    if "{trigger}" in prompt:
        y_t = fill_template(prompt, trigger, class_noun)
        return remove_trigger(y_t, trigger), y_t
    p = fill_template(prompt, trigger, class_noun) if "{class_noun}" in prompt else prompt
    if has_trigger(p, trigger):
        return remove_trigger(p, trigger), p
    if not class_noun:
        raise CatAdapterError(f"--tco-prompt {prompt!r}: give --class-noun (the trigger goes before it) or put "
                              "{trigger} in the prompt")
    match = re.search(rf"(?<![\w-]){re.escape(class_noun)}(?![\w-])", p, flags=re.IGNORECASE)
    if match is None:
        raise CatAdapterError(f"--tco-prompt {prompt!r} does not name --class-noun {class_noun!r}; the trigger goes "
                              "before the class noun, so name it (or put {trigger} in the prompt)")
    return p, p[:match.start()] + f"{trigger} " + p[match.start():]
