"""Atomic file writing: write to a temporary name in the same folder, then rename.

A run killed half-way never leaves a half-written artefact under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
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


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """One line, before anything expensive, when ``folder`` (or the nearest folder above it that exists, where it
    will be made) cannot be written: a read-only disk, missing permissions."""
    from cat_adapter.errors import CatAdapterError

    p = Path(folder).expanduser().absolute()
    probe_dir = p
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise CatAdapterError(f"{option} {folder}: {probe_dir} is a file; give a folder path")
    try:
        fd, name = tempfile.mkstemp(prefix=".cat-adapter-write-check.", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise CatAdapterError(f"{option} {folder}: cannot write in {probe_dir} ({exc.strerror}); choose a writable "
                              "folder") from None


def check_free_space(folder: str | os.PathLike, needed: int, what: str, option: str = "--output") -> None:
    """One line when the disk of ``folder`` has less than ``needed`` bytes free for ``what``."""
    from cat_adapter.errors import CatAdapterError

    p = Path(folder).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < needed:
        raise CatAdapterError(f"{option} {folder}: this run writes about {needed / 2**20:.1f} MB ({what}) and its disk "
                              f"has {free / 2**20:.1f} MB free; free some space or choose another folder")


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


# ------------------------------------------------------------------------------------------ locks
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(lock: Path, *, command: str | None = None) -> bool:
    """Create ``lock`` exclusively; a lock left by a dead process on this host is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                return False  # being written right now: someone else has it
            if owner.get("host") != socket.gethostname() or _alive(int(owner.get("pid", 0))):
                return False
            try:  # stale: only one process wins the rename, and then retries the exclusive create
                os.rename(lock, lock.with_name(f"{lock.name}.stale-{os.getpid()}"))
                lock.with_name(f"{lock.name}.stale-{os.getpid()}").unlink()
            except FileNotFoundError:
                return False
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                       **({"command": command} if command else {})}, f)
        return True
    return False


def release(lock: Path) -> None:
    lock.unlink(missing_ok=True)


def lock_path(output: str | os.PathLike) -> Path:
    """The lock of an output folder: a sibling file, so it outlives --overwrite and evaluate's rename of the folder."""
    output = Path(output).expanduser().resolve()
    return output.parent / f".{output.name}.lock"


@contextmanager
def output_lock(output: str | os.PathLike, command: str, option: str = "--output") -> Iterator[None]:
    """Hold ``output`` for the life of a run: a second process on it gets one line naming the holder (pid, host,
    start time); a lock whose process is gone (same host) is taken over with a warning."""
    import datetime
    import logging

    from cat_adapter.errors import CatAdapterError

    lock = lock_path(output)
    stale = _stale_holder(lock)
    try:
        got = acquire(lock, command=command)
    except OSError as exc:
        raise CatAdapterError(f"{option} {output}: cannot write its lock {lock} ({exc.strerror}); choose a writable "
                              "folder") from None
    if not got:
        holder = {}
        for _ in range(40):   # the holder may have created the file an instant ago and be writing it
            holder = _holder(lock)
            if holder:
                break
            time.sleep(0.05)
        since = datetime.datetime.fromtimestamp(holder.get("since", 0)).isoformat(timespec="seconds")
        raise CatAdapterError(f"{option} {output}: in use by another run ({holder.get('command', 'cat-adapter')}, pid "
                              f"{holder.get('pid')} on {holder.get('host')}, since {since}); wait for it to end or "
                              "choose another folder")
    if stale:
        logging.getLogger("cat_adapter").warning("%s %s: took over the lock of pid %s on %s, which is no longer "
                                                 "running", option, output, stale.get("pid"), stale.get("host"))
    try:
        yield
    finally:
        release(lock)


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def _stale_holder(lock: Path) -> dict | None:
    import socket

    holder = _holder(lock) if lock.is_file() else {}
    if holder and holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
        return holder
    return None
