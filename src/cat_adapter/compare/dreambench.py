"""DreamBench (Ruiz et al. 2023, google/dreambooth's ``dataset/``) as compare concepts: ``compare --dreambench DIR``.

The dataset folder holds one sub-folder of 4-6 photos per subject (30 subjects) and ``prompts_and_classes.txt``:
a ``subject_name,class`` table, then two lists of 25 prompts written as Python ``'a {0} {1} in the jungle'.format(
unique_token, class_token)`` lines, the first for objects and the second for live subjects (cats and dogs). Each
subject becomes a concept (its folder, the plan's trigger, its class) whose held-out prompts are the 25 of its kind
with the trigger and the class filled in; the plan gives the variants, seeds, shared options and evaluation
(DreamBench: 4 images per prompt, ``dino`` and CLIP). The prompt files are written under the compare output
(``OUT/dreambench/``), so every shard and every rerun reads the same ones.
"""

from __future__ import annotations

import re
from pathlib import Path

from cat_adapter.errors import CatAdapterError

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = ("cat", "dog")   # DreamBench's live subjects (cat, cat2, dog, dog2, dog3, dog5-8)
_PROMPT = re.compile(r"""['"](.+?\{0\}.*?\{1\}.*?)['"]\s*\.format""")


def read_dreambench(dataset: str | Path, option: str = "--dreambench") -> tuple[dict[str, str], dict[str, list[str]]]:
    """({subject: class}, {"object": prompts, "live": prompts}) of a DreamBench dataset folder; one-line errors."""
    root = Path(dataset).expanduser()
    if not root.is_dir():
        raise CatAdapterError(f"{option} {dataset}: no such folder (google/dreambooth's dataset/ folder)")
    file = root / PROMPTS_FILE
    if not file.is_file():
        raise CatAdapterError(f"{option} {dataset}: no {PROMPTS_FILE} (DreamBench's subject classes and prompt "
                              "lists); copy it from google/dreambooth's dataset/ folder")
    text = file.read_text(encoding="utf-8", errors="replace")
    classes: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_\-]+)\s*,\s*([A-Za-z][A-Za-z _\-]*?)\s*", line)
        if m and m.group(1) != "subject_name":
            classes[m.group(1)] = m.group(2)
    lists = [[p for p in _PROMPT.findall(block)] for block in re.split(r"(?i)live subject prompts", text, maxsplit=1)]
    if len(lists) != 2 or not lists[0] or not lists[1]:
        raise CatAdapterError(f"{option} {file}: expected an object prompt list and a 'Live Subject Prompts' list "
                              "of '...{0} {1}...'.format(unique_token, class_token) lines")
    if not classes:
        raise CatAdapterError(f"{option} {file}: no 'subject_name,class' lines")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise CatAdapterError(f"{option} {dataset}: subject folder {unknown[0]} has no class in {PROMPTS_FILE}")
    missing = [s for s in classes if s not in folders]
    if missing:
        raise CatAdapterError(f"{option} {dataset}: {PROMPTS_FILE} names {missing[0]}, which has no folder")
    return classes, {"object": lists[0], "live": lists[1]}


def kind(class_noun: str) -> str:
    return "live" if class_noun in LIVE_CLASSES else "object"


def dreambench_concepts(dataset: str | Path, out: Path, *, trigger: str = "sks") -> list[dict]:
    """The plan's ``concepts`` for a DreamBench dataset: one per subject, its held-out prompts written to
    ``out/dreambench/<subject>.txt`` (rewritten only when their text changes)."""
    from cat_adapter.io import write_text_atomic

    classes, prompts = read_dreambench(dataset)
    folder = out / "dreambench"
    folder.mkdir(parents=True, exist_ok=True)
    concepts = []
    for subject, noun in sorted(classes.items()):
        lines = [p.replace("{0}", "{trigger}").replace("{1}", noun) for p in prompts[kind(noun)]]
        file = folder / f"{subject}.txt"
        text = "\n".join(lines) + "\n"
        if not file.is_file() or file.read_text() != text:
            write_text_atomic(file, text)
        concepts.append({"name": subject, "data": str(Path(dataset).expanduser().resolve() / subject),
                         "trigger": trigger, "class_noun": noun, "prompts": str(file.resolve())})
    return concepts
