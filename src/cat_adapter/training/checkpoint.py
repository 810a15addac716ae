"""Resumable checkpoints (format 2), written atomically and without pickle.

``OUT/checkpoints/step-000040/`` holds ``trained.safetensors`` (the method's trainable state: LoRA
weights, a full denoiser, token rows), the adapter's own files with ``adapter.json`` (so ``sample``, ``evaluate``
and ``--adapter`` take a checkpoint folder like a finished run), ``optimizer.safetensors`` (every optimizer state tensor),
``stream.safetensors`` (the one data-stream generator, the same on every rank), ``ema.safetensors`` (the EMA
weights, with --ema-decay), ``rng-rank<R>.safetensors``
(each rank's torch CPU/CUDA generators: dropout) and ``state.json`` (format version, step, world size,
optimizer hyperparameters, LR scheduler, stream positions, fp16 GradScaler state). A checkpoint is
written by the main process into a temporary folder and renamed, so a killed run leaves either the
whole checkpoint or none.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cat_adapter.io import atomic_dir

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict()`` as (tensors named ``state.<param>.<key>``, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of ``optimizer_tensors``: a ``state_dict()`` for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


FORMAT_VERSION = 2


def save_checkpoint(out_dir: Path, step: int, *, trained: dict[str, torch.Tensor], optimizer, lr_scheduler,
                    stream_state: dict, rng_states: list[dict[str, torch.Tensor]], scaler_state: dict | None = None,
                    limit: int | None = None, ema_state: dict | None = None, term_state: dict | None = None,
                    export=None) -> Path:
    """Write a checkpoint (main process); ``rng_states``: one dict of generator states per rank; ``export(folder)``
    writes the adapter's files and adapter.json into it (within the atomic write)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    target = root / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trained.items()}, str(tmp / "trained.safetensors"))
        opt_tensors, opt_meta = optimizer_tensors(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"generator": stream_state["generator"]}, str(tmp / "stream.safetensors"))
        for rank, rng in enumerate(rng_states):
            save_file(rng, str(tmp / f"rng-rank{rank}.safetensors"))
        ema_meta = None
        if ema_state is not None:  # diffusers' EMAModel.state_dict(): shadow tensors + JSON-able settings
            save_file({f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(ema_state["shadow_params"])},
                      str(tmp / "ema.safetensors"))
            ema_meta = {k: v for k, v in ema_state.items() if k != "shadow_params"}
        state = {"format_version": FORMAT_VERSION, "step": step, "world_size": len(rng_states), "ema": ema_meta,
                 "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(),
                 "stream": {k: v for k, v in stream_state.items() if k != "generator"}, "grad_scaler": scaler_state,
                 "terms": term_state or {}}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if export is not None:
            export(tmp)
    if limit:
        for old in list_checkpoints(out_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch generators (CPU, and every CUDA device)."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    return rng


def checkpoint_step(path: Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))
             and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, *, rank: int = 0) -> dict[str, Any]:
    """Everything needed to continue on process ``rank``: trained state, optimizer, scheduler, stream, RNG, step."""
    from cat_adapter.errors import CatAdapterError

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise CatAdapterError(f"--resume: checkpoint {path} is of format {state.get('format_version', 1)}, this "
                              f"version resumes format {FORMAT_VERSION}; finish it with the release that wrote it")
    rng_file = path / f"rng-rank{rank}.safetensors"
    rng = load_file(str(rng_file)) if rng_file.is_file() else None
    return {
        "step": int(state["step"]),
        "world_size": int(state["world_size"]),
        "trained": load_file(str(path / "trained.safetensors")),
        "optimizer": optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]),
        "lr_scheduler": state["lr_scheduler"],
        "stream": {"generator": load_file(str(path / "stream.safetensors"))["generator"], **state["stream"]},
        "grad_scaler": state.get("grad_scaler"),
        "rng": rng,
        "ema": _ema(path, state.get("ema")),
        "terms": state.get("terms", {}),
    }


def _ema(path: Path, meta: dict | None) -> dict | None:
    """The EMAModel state saved beside a checkpoint (None when the run kept none)."""
    if meta is None:
        return None
    shadow = load_file(str(path / "ema.safetensors"))
    return {**meta, "shadow_params": [shadow[f"shadow.{i}"] for i in range(len(shadow))]}


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
