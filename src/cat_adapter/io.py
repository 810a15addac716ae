"""Atomic file writing: write to a temporary name in the same folder, then rename.

A run killed half-way never leaves a half-written artefact under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600, and a library that rewrites the file (safetensors) may leave its own mode: a result
        # file gets the mode the user's umask gives a new file (0644 under 022), so others (a ComfyUI server) read it
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        user_modes(tmp)   # mkdtemp creates 0700; files inside get the user's umask too
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def user_modes(folder: Path) -> None:
    """Every folder and file under ``folder`` (itself included) with the mode the umask gives a new one."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output_folder(output: str | os.PathLike, *, markers: tuple[str, ...], kind: str, overwrite: bool = False,
                        resume: bool = False, option: str = "--output") -> str:
    """The one output-folder check: ``fresh`` (new or empty), ``resume`` or ``overwrite``; nothing is written.

    A folder with files is refused unless ``--resume`` (where the kind allows it) or ``--overwrite``, and
    ``--overwrite`` only replaces a folder this package wrote (one of ``markers`` inside), never a
    folder of other files.
    """
    from cat_adapter.errors import CatAdapterError

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CatAdapterError(f"{option} {out}: is a file; give a folder path")
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if resume:
        return "resume"
    if not overwrite:
        hint = "pass --resume to continue it or --overwrite to start again" if "config.yaml" in markers \
            else "pass --overwrite to replace it"
        raise CatAdapterError(f"{option} {out}: folder exists; {hint}")
    if not any((out / m).is_file() for m in markers):
        raise CatAdapterError(f"{option} {out}: not {kind} (no {' or '.join(markers)}); refusing to replace it, "
                              "choose another folder")
    return "overwrite"


def read_yaml(path: str | os.PathLike, source: str) -> Any:
    """The YAML document in ``path``; a missing file, bad YAML or a non-text file is one line naming ``source``."""
    import yaml

    from cat_adapter.errors import CatAdapterError

    path = Path(path)
    if not path.is_file():
        raise CatAdapterError(f"{source}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CatAdapterError(f"{source}: not valid YAML" + (f" (line {line + 1})" if line is not None else "")) from None
    except UnicodeDecodeError:
        raise CatAdapterError(f"{source}: not a text file") from None
