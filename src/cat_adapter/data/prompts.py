"""Trigger handling: from a caption with the trigger (y_T) to the trigger-free prompt y of Eq. 3.

Matching is word-boundary aware and case-insensitive: ``sks`` matches in ``a sks teapot``,
``sks's hat``, ``a sks-teapot`` and twice in ``sks and sks``, but not inside ``asks`` or
``sksx``. A possessive ``'s`` and a joining hyphen belong to the trigger.
"""

from __future__ import annotations

import re

PRESERVE_MODES = ("remove", "empty", "class")


def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """Regex matching ``trigger`` as a whole word, with an optional possessive and joining hyphen."""
    t = trigger.strip()
    word = re.escape(t)
    # A trigger that starts (ends) with a word character must not be preceded by a letter, digit,
    # underscore, hyphen or apostrophe (followed by a letter, digit or underscore). One with a bracket
    # at that edge, like ``<sks>``, already has its boundary: ``<sks>teapot`` matches.
    before = r"(?<![\w'’-])" if re.match(r"\w", t) else ""
    after = r"(?![\w])" if re.search(r"\w$", t) else ""
    # ``sks-sks`` (the trigger repeated with hyphens) is one match.
    return re.compile(rf"{before}(?:{word}-)*{word}(?P<poss>['’]s)?{after}(?P<hyphen>-(?=\w))?", re.IGNORECASE)


def has_trigger(caption: str, trigger: str) -> bool:
    return trigger_pattern(trigger).search(caption) is not None


def trigger_class_clash(trigger: str, class_noun: str | None) -> str | None:
    """Why ``trigger`` cannot name a concept of ``class_noun`` (None when it can): the same word, or one holding the
    other as a word under the trigger's matching rules. Removing such a trigger removes the class too, so CAT would
    preserve "a photo of" instead of "a photo of circle"."""
    if not class_noun or not class_noun.strip():
        return None
    if class_noun.strip().lower() == trigger.strip().lower():
        return "they are the same word: removing the trigger from a caption would remove the class"
    if has_trigger(class_noun, trigger):
        return (f"the class noun {class_noun!r} contains the trigger {trigger!r} as a word: removing the trigger "
                "from a caption would remove the class, and CAT would preserve a prompt without it")
    if any(has_trigger(trigger, word) for word in class_noun.split()):
        return (f"the trigger {trigger!r} contains the class noun {class_noun!r} as a word: the trigger-free "
                "prompt would lose the class with it")
    return None


def tidy(text: str) -> str:
    """Collapse whitespace and fix the punctuation a removed word leaves behind."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)         # "a , b" -> "a, b"
    text = re.sub(r"([,;:])(\s*[,;:])+", r"\1", text)     # ", ," -> ","
    text = re.sub(r"\(\s*\)", "", text)                   # "()" left by "(sks)"
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"^[\s,;:]+", "", text)                 # leading ", "
    text = re.sub(r"[\s,;:]+$", "", text)                 # trailing " ,"
    text = re.sub(r"[\s,;:]+([.!?])$", r"\1", text)
    return text.strip()


def remove_trigger(caption: str, trigger: str) -> str:
    """y = y_T without the trigger word(s): ``a photo of sks teapot`` -> ``a photo of teapot``."""
    return tidy(trigger_pattern(trigger).sub(" ", caption))


def replace_trigger(caption: str, trigger: str, class_noun: str) -> str:
    """Trigger -> class noun, without doubling a class noun that follows it.

    ``a sks teapot`` -> ``a teapot``; ``a sks-teapot`` -> ``a teapot``; ``a sks on a table`` ->
    ``a teapot on a table``; ``sks's lid`` -> ``teapot's lid``.
    """
    noun = class_noun.strip()
    # The class noun follows, possibly after more triggers: ``a sks sks teapot`` -> ``a teapot``.
    follows = re.compile(rf"(?:[\s-]*{trigger_pattern(trigger).pattern})*[\s-]*{re.escape(noun)}(?![\w])",
                         re.IGNORECASE)

    def _sub(match: re.Match[str]) -> str:
        if match.group("poss"):
            return noun + match.group("poss")
        if match.group("hyphen") or follows.match(caption, match.end()):
            return ""  # the class noun already follows: drop the trigger (and its hyphen) only
        return noun

    return tidy(trigger_pattern(trigger).sub(_sub, caption))


def plain_prompt(caption: str, trigger: str, mode: str = "remove", class_noun: str | None = None) -> str:
    """The trigger-free prompt y for caption y_T under ``--preserve-prompt`` ``mode``."""
    if mode == "remove":
        return remove_trigger(caption, trigger)
    if mode == "empty":
        return ""
    if mode == "class":
        if not class_noun:
            raise ValueError("--preserve-prompt class needs a class noun")
        return replace_trigger(caption, trigger, class_noun)
    raise ValueError(f"unknown --preserve-prompt mode {mode!r}; choose one of {', '.join(PRESERVE_MODES)}")


def fill_template(template: str, trigger: str, class_noun: str | None) -> str:
    """``{trigger}`` / ``{class_noun}`` placeholders; any other brace text is kept as it is."""
    return tidy(template.replace("{trigger}", trigger).replace("{class_noun}", class_noun or ""))


def replace_word(prompt: str, trigger: str, token: str) -> str:
    """Every whole-word ``trigger`` -> ``token``, keeping a possessive or hyphen after it (``sks's`` -> ``<sks>'s``)."""
    t = trigger.strip()
    # Not inside the token itself: "<sks>" written by the user stays "<sks>" (not "<<sks>>").
    before = r"(?<![\w'’<-])" if re.match(r"\w", t) else ""
    after = r"(?![\w>])" if re.search(r"\w$", t) else ""
    return re.sub(rf"{before}{re.escape(t)}{after}", lambda _m: token, prompt, flags=re.IGNORECASE)
