"""``--cache-dir``: VAE latent distributions and prompt embeddings kept on disk between runs.

An entry's key is a SHA-256 over everything its value depends on, so a stale entry is never found:
the base model (hub id and revision, or the content fingerprint of a local folder: ``toy build``
rewrites the same path), the image file's bytes (not its size or mtime), the bucket (width, height), whether both
flips are stored, the VAE's or text encoder's dtype, the prompt, and this format's version. Entries are
safetensors files written under a temporary name and renamed, so two runs sharing a cache (the shards
of a compare plan) never read a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 2  # 2: latents keyed by bucket (width, height), not by resolution


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DiskCache:
    def __init__(self, root: str | Path, model_identity: dict):
        self.root = Path(root).expanduser()
        # a local folder is named by its content fingerprint, not its path: a copy elsewhere shares the entries
        self.model = dict(model_identity)
        if "fingerprint" in self.model:
            self.model.pop("model", None)
        self.hits = self.misses = 0

    def key(self, kind: str, **fields) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, "kind": kind, "model": self.model, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(kind, key)
        if path.is_file():
            self.hits += 1
            return load_file(str(path))
        self.misses += 1
        return None

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
