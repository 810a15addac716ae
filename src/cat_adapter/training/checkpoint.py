"""Resumable checkpoints, written atomically and without pickle.

``OUT/checkpoints/step-000040/`` holds ``adapter.safetensors`` (peft-format LoRA weights),
``optimizer.safetensors`` (every optimizer state tensor), ``rng.safetensors`` (torch CPU/CUDA
and data-sampler generator states) and ``state.json`` (step, optimizer hyperparameters, LR
scheduler, sampler position). A checkpoint is written to a temporary folder and renamed, so a
killed run leaves either the whole checkpoint or none.
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


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
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


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(out_dir: Path, step: int, *, adapter: dict[str, torch.Tensor], optimizer, lr_scheduler,
                    sampler_state: dict, limit: int | None = None) -> Path:
    root = Path(out_dir) / CHECKPOINT_DIR
    target = root / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
        opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state(), "sampler": sampler_state["generator"]}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {"step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(),
                 "sampler": {"order": sampler_state["order"], "position": sampler_state["position"]}}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if limit:
        for old in list_checkpoints(out_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return target


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything needed to continue: adapter, optimizer and scheduler states, RNG states, step."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    rng = load_file(str(path / "rng.safetensors"))
    return {
        "step": int(state["step"]),
        "adapter": load_file(str(path / "adapter.safetensors")),
        "optimizer": _join_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]),
        "lr_scheduler": state["lr_scheduler"],
        "sampler": {"generator": rng["sampler"], **state["sampler"]},
        "torch_cpu": rng["torch_cpu"],
        "torch_cuda": [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")],
    }


def restore_rng(ckpt: dict[str, Any]) -> None:
    torch.set_rng_state(ckpt["torch_cpu"])
    if ckpt["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["torch_cuda"])
