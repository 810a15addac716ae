"""Several concepts in one adapter (``--concepts FILE.yaml``), and the one-concept case of the same code.

A concepts file holds a ``concepts:`` list; each entry has ``name``, ``data`` (a concept folder, relative to the
file), ``trigger`` and ``class_noun``, and optionally ``caption_template`` and ``preserve_pool``: the entries of a
compare plan's concepts. ``--data/--trigger/--class-noun`` make the one-entry list.

Per-token CAT: a caption's trigger-free prompt y removes every concept's trigger that appears in it (by
``--preserve-prompt``: removed, the empty prompt, or each trigger replaced by its own class noun), so a caption
that names two concepts preserves the prompt with neither.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cat_adapter.data.concept import ConceptItem, load_concept
from cat_adapter.data.prompts import has_trigger, plain_prompt, trigger_class_clash
from cat_adapter.errors import CatAdapterError

KEYS = ("name", "data", "trigger", "class_noun", "caption_template", "preserve_pool")


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    data: str
    trigger: str
    class_noun: str | None
    caption_template: str
    preserve_pool: str | None = None
    repeats: int | None = None      # kohya's folder layout (``10_sks teapot``): its images weigh this much

    def record(self, preserve_prompt: str) -> dict:
        """The concept as adapter.json lists it."""
        return {"name": self.name, "trigger": self.trigger, "class_noun": self.class_noun,
                "preserve_prompt": preserve_prompt, "caption_template": self.caption_template}

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "repeats" or v is not None}


KOHYA_FOLDER = re.compile(r"^(\d+)_(\S.*)$")


def kohya_folders(folder: str | Path | None) -> list[tuple[int, str, Path]]:
    """kohya sd-scripts' dataset layout: ``folder`` holds ``<repeats>_<trigger> <class>`` subfolders (and no images of
    its own); [(repeats, "trigger class", subfolder)] sorted by name, or [] for any other folder."""
    from cat_adapter.data.concept import IMAGE_SUFFIXES

    p = Path(folder).expanduser() if folder else None
    if p is None or not p.is_dir():
        return []
    if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
        return []
    found = [(int(m.group(1)), m.group(2).strip(), s) for s in sorted(p.iterdir())
             if s.is_dir() and (m := KOHYA_FOLDER.match(s.name))]
    return found


def kohya_specs(d, found: list[tuple[int, str, Path]]) -> list[ConceptSpec]:
    """One concept per ``<repeats>_<trigger> <class>`` subfolder: the trigger and class from its name (a given
    --trigger or --class-noun must match them), its images weighted by its repeats."""
    specs = []
    for repeats, name, sub in found:
        words = name.split()
        trigger, noun = words[0], " ".join(words[1:]) or None
        where = f"--data {d.data}: folder {sub.name!r}"
        if repeats < 1:
            raise CatAdapterError(f"{where}: repeats must be >= 1 (the number before the underscore)")
        if d.trigger != "sks" and d.trigger != trigger:   # sks: --trigger's default, the folder names the trigger
            raise CatAdapterError(f"{where} names the trigger {trigger!r}, but --trigger is {d.trigger!r}; leave "
                                  "--trigger out (the folder name gives it) or rename the folder")
        if d.class_noun and noun and d.class_noun != noun:
            raise CatAdapterError(f"{where} names the class {noun!r}, but --class-noun is {d.class_noun!r}; leave "
                                  "--class-noun out or rename the folder")
        noun = noun or d.class_noun
        clash = trigger_class_clash(trigger, noun)
        if clash:
            raise CatAdapterError(f"{where}: trigger and class must differ: {clash}")
        specs.append(ConceptSpec(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name), str(sub.resolve()), trigger, noun,
                                 d.caption_template, None, repeats))
    check_concepts(specs, f"--data {d.data}", d.preserve_prompt)
    return specs


def read_concepts_file(path: str | Path, *, default_template: str, preserve_prompt: str = "remove"
                       ) -> list[ConceptSpec]:
    """Parse and check ``--concepts FILE``; a bad entry is a one-line error naming the file and the entry."""
    from cat_adapter.io import read_yaml

    path = Path(path).expanduser()
    where = f"--concepts {path}"
    raw = read_yaml(path, where)
    entries = raw.get("concepts") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatAdapterError(f"{where}: needs a non-empty 'concepts:' list of {{name, data, trigger, class_noun}}")
    specs = []
    for i, e in enumerate(entries):
        label = f"{where}: concept {i + 1}"
        if not isinstance(e, dict):
            raise CatAdapterError(f"{label} is not a mapping of {', '.join(KEYS)}")
        unknown = sorted(set(e) - set(KEYS))
        if unknown:
            raise CatAdapterError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
        for key in ("name", "data", "trigger"):
            if not isinstance(e.get(key), str) or not e[key].strip():
                raise CatAdapterError(f"{label}: '{key}' is required (a non-empty string)")
        data = Path(e["data"]).expanduser()
        data = data if data.is_absolute() else (path.parent / data)
        pool = e.get("preserve_pool")
        if pool:
            pool = str(Path(pool) if Path(pool).is_absolute() else (path.parent / pool))
        clash = trigger_class_clash(e["trigger"].strip(), e.get("class_noun"))
        if clash:
            raise CatAdapterError(f"{label} ({e['name'].strip()}): trigger and class_noun must differ: {clash}; choose "
                                  "a trigger that is no word of the class (a rare token such as zwx)")
        specs.append(ConceptSpec(e["name"].strip(), str(data.resolve()), e["trigger"].strip(), e.get("class_noun"),
                                 e.get("caption_template") or default_template, pool))
    check_concepts(specs, where, preserve_prompt)
    return specs


def concept_specs(d) -> list[ConceptSpec]:
    """The run's concepts: the ``--concepts`` file, or the one concept of ``--data/--trigger/--class-noun``."""
    if d.concepts:
        return read_concepts_file(d.concepts, default_template=d.caption_template, preserve_prompt=d.preserve_prompt)
    found = kohya_folders(d.data)
    if found:
        return kohya_specs(d, found)
    return [ConceptSpec(Path(d.data).name, d.data, d.trigger, d.class_noun, d.caption_template)]


def check_concepts(specs: list[ConceptSpec], where: str, preserve_prompt: str = "remove") -> None:
    """Unique names, folders and triggers; no trigger that holds another as a word; one-word triggers; class nouns
    where the template or ``--preserve-prompt class`` needs them."""
    seen_names, seen_data = {}, {}
    for s in specs:
        if s.name in seen_names:
            raise CatAdapterError(f"{where}: two concepts are named {s.name!r}; give each its own name")
        seen_names[s.name] = s
        if s.data in seen_data:
            raise CatAdapterError(f"{where}: folder {s.data} is listed twice ({seen_data[s.data]!r} and {s.name!r}); "
                                  "one folder is one concept")
        seen_data[s.data] = s.name
    for a in specs:
        for b in specs:
            if a is b:
                continue
            if a.trigger.lower() == b.trigger.lower():
                raise CatAdapterError(f"{where}: concepts {a.name!r} and {b.name!r} share the trigger {a.trigger!r}; "
                                      "each concept needs its own")
            if has_trigger(a.trigger, b.trigger):
                raise CatAdapterError(f"{where}: trigger {a.trigger!r} of {a.name!r} contains trigger {b.trigger!r} of "
                                      f"{b.name!r} as a word; a caption could not tell them apart")
    for s in specs:
        if any(c.isspace() for c in s.trigger):
            raise CatAdapterError(f"{where}: trigger {s.trigger!r} of {s.name!r} must be one word without spaces")
        if ("{class_noun}" in s.caption_template or preserve_prompt == "class") and not s.class_noun:
            raise CatAdapterError(f"{where}: concept {s.name!r} needs a class_noun (its caption template or "
                                  "--preserve-prompt class uses it)")
        if "{trigger}" not in s.caption_template:
            raise CatAdapterError(f"{where}: concept {s.name!r}: caption_template must contain {{trigger}}")


def per_token_plain(caption: str, specs: list[ConceptSpec], mode: str) -> str:
    """y of a caption: every concept's trigger in it removed (or replaced by its class noun; or the empty prompt)."""
    y = caption
    for s in specs:
        if has_trigger(y, s.trigger):
            y = plain_prompt(y, s.trigger, mode, s.class_noun)
    return y


def load_concepts(specs: list[ConceptSpec], *, missing_trigger: str, preserve_prompt: str) -> list[list[ConceptItem]]:
    """Every concept's items; each caption's y removes every trigger it holds (per-token CAT)."""
    out = []
    for s in specs:
        items = load_concept(s.data, trigger=s.trigger, class_noun=s.class_noun, caption_template=s.caption_template,
                             missing_trigger=missing_trigger, preserve_prompt=preserve_prompt,
                             option=f"--concepts ({s.name})" if len(specs) > 1 else "--data")
        if len(specs) > 1:
            items = [ConceptItem(it.image_path, it.caption, per_token_plain(it.caption, specs, preserve_prompt),
                                 it.caption_source, len(out)) for it in items]
        out.append(items)
    return out
