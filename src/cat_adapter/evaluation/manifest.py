"""The manifest of generated images that ``score`` reads and ``evaluate`` writes (CSV or JSONL).

Columns (an empty cell, a missing JSON key or JSON null means absent):
  prompt_trigger  y_T, the prompt with the trigger (absent in ``control`` rows)
  prompt_plain    y, its trigger-free form, or a control prompt c (may be the empty prompt)
  seed            the seed of the initial noise shared by the row's images
  image_trigger   I^{y_T}(p, s) from the adapter (absent in ``control`` rows)
  image_plain     I^{y}(p, s) from the adapter, or I^{c}(s) in a ``control`` row
  base_image      optional: I_base^{y}(p, s), the base model's image for prompt_plain and seed
  reference       optional: a concept image; the row then counts for the Identity Score
  group           optional: train (default), heldout or control (a control row counts for Leakage)
  prompt_text     optional: the text of the Prompt Score (default: prompt_plain); ``evaluate``
                  writes the trigger-removed prompt here, whatever ``--preserve-prompt`` is
Image paths are relative to the manifest's folder (or absolute).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.metrics import GROUPS
from cat_adapter.io import write_text_atomic

REQUIRED = ("prompt_trigger", "prompt_plain", "seed", "image_trigger", "image_plain")
OPTIONAL = ("base_image", "reference", "group", "prompt_text")
COLUMNS = ("group", "prompt_trigger", "prompt_plain", "prompt_text", "seed", "image_trigger", "image_plain",
           "base_image", "reference")
IMAGE_COLUMNS = ("image_trigger", "image_plain", "base_image", "reference")


@dataclass(frozen=True)
class ManifestRow:
    group: str
    prompt_trigger: str | None
    prompt_plain: str
    seed: int
    image_trigger: Path | None
    image_plain: Path
    base_image: Path | None = None
    reference: Path | None = None
    prompt_text: str | None = None

    @property
    def text(self) -> str:
        """The text compared with images in the Prompt Score (Eq. 4)."""
        return self.prompt_text if self.prompt_text is not None else self.prompt_plain


def _raw_rows(path: Path, option: str) -> list[tuple[int, dict]]:
    """(line number, {column: value or None}) for every row of a CSV or JSONL file."""
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise CatAdapterError(f"{option} {path} line {n}: not a JSON object (JSONL: one object per line)") from None
            if not isinstance(obj, dict):
                raise CatAdapterError(f"{option} {path} line {n}: not a JSON object (JSONL: one object per line)")
            rows.append((n, obj))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("prompt_plain", "seed", "image_plain") if c not in header]
    if missing:
        raise CatAdapterError(f"{option} {path}: CSV header lacks {', '.join(missing)} (needs "
                              f"{', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
    reader.fieldnames = header
    for raw in reader:
        if None in raw:
            raise CatAdapterError(f"{option} {path} line {reader.line_num}: more cells than header columns")
        rows.append((reader.line_num, raw))
    return rows


def _cell(raw: dict, key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    value = str(value) if not isinstance(value, str) else value
    return value if value.strip() != "" else None


def read_manifest(path: str | Path, *, option: str = "--manifest") -> list[ManifestRow]:
    """Parse and check a manifest; every image it names must exist. Errors name the line and column."""
    path = Path(path)
    if not path.is_file():
        raise CatAdapterError(f"{option} {path}: file not found")
    base = path.parent
    rows = []
    for n, raw in _raw_rows(path, option):
        where = f"{option} {path} line {n}"
        unknown = sorted(set(raw) - set(COLUMNS))
        if unknown:
            raise CatAdapterError(f"{where}: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        group = _cell(raw, "group") or "train"
        if group not in GROUPS:
            raise CatAdapterError(f"{where}: group {group!r} is not one of {', '.join(GROUPS)}")
        needed = ("seed", "image_plain") if group == "control" else REQUIRED
        absent = [c for c in needed if c != "prompt_plain" and _cell(raw, c) is None]
        if absent:
            raise CatAdapterError(f"{where}: {group} row lacks {', '.join(absent)}")
        if raw.get("prompt_plain") is None:
            raise CatAdapterError(f"{where}: row lacks prompt_plain")
        if group == "control" and (_cell(raw, "prompt_trigger") or _cell(raw, "image_trigger")):
            raise CatAdapterError(f"{where}: a control row has no prompt_trigger or image_trigger")
        try:
            seed = int(str(_cell(raw, "seed")).strip())
        except ValueError:
            raise CatAdapterError(f"{where}: seed {raw.get('seed')!r} is not an integer") from None
        images = {}
        for col in IMAGE_COLUMNS:
            value = _cell(raw, col)
            if value is None:
                images[col] = None
                continue
            p = Path(os.path.normpath(base / Path(value).expanduser()))
            if not p.is_file():
                raise CatAdapterError(f"{where}: {col} {value} not found (paths are relative to {base})")
            images[col] = p
        rows.append(ManifestRow(group=group, prompt_trigger=_cell(raw, "prompt_trigger"),
                                prompt_plain=str(raw.get("prompt_plain") or ""), seed=seed,
                                prompt_text=_cell(raw, "prompt_text"),
                                **images))
    if not rows:
        raise CatAdapterError(f"{option} {path}: no rows")
    return rows


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> Path:
    """Write a CSV manifest (atomically) with image paths relative to its folder."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        cells = {c: getattr(r, c) for c in COLUMNS}
        for c in IMAGE_COLUMNS:
            cells[c] = os.path.relpath(cells[c], path.parent) if cells[c] is not None else ""
        cells["prompt_trigger"] = r.prompt_trigger or ""
        cells["prompt_text"] = "" if r.prompt_text is None else r.prompt_text
        writer.writerow(cells)
    write_text_atomic(path, buf.getvalue())
    return path
