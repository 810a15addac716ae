"""The Method protocol: a method owns its trainable parameters and its loss; the loop knows nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch


@dataclass
class Batch:
    """One micro-batch. All randomness of a step is drawn into it, so a loss is a pure function of it."""

    latents: torch.Tensor                 # (B, C, h, w) clean latents z_0 (already scaled)
    noise: torch.Tensor                   # (B, C, h, w) eps
    timesteps: torch.Tensor               # (B,) long
    cond_trigger: torch.Tensor            # (B, L, D) text embeddings of y_T
    cond_plain: torch.Tensor              # (B, L, D) text embeddings of y (trigger-free)
    cond_pool: torch.Tensor | None = None  # (K, L, D) extra trigger-free prompts from --preserve-pool

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        def mv(t: torch.Tensor | None, float_: bool = True) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (float_ and dtype is not None) else t.dtype)

        return Batch(mv(self.latents), mv(self.noise), mv(self.timesteps, False), mv(self.cond_trigger),
                     mv(self.cond_plain), mv(self.cond_pool))


@dataclass
class LossOutput:
    total: torch.Tensor                      # scalar; what backward() is called on (already done in lean mode)
    terms: dict[str, float] = field(default_factory=dict)  # named terms, logged separately


BackwardFn = Callable[[torch.Tensor], None]


class Method(Protocol):
    """Interface every training method implements (LoRA, CAT, and later the baselines)."""

    name: str

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def loss(self, batch: Batch) -> LossOutput: ...

    def forward_backward(self, batch: Batch, backward: BackwardFn) -> LossOutput:
        """Compute the loss and call ``backward`` on it (methods may split it into several calls)."""
        ...

    def save(self, out_dir: Path, *, dtype: torch.dtype = torch.float32) -> Path:
        """Write the trained weights in the format users load (diffusers LoRA for LoRA/CAT)."""
        ...

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the trainable state saved in a checkpoint (resume)."""
        ...


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> type:
    from cat_adapter import methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    from cat_adapter import methods  # noqa: F401

    return sorted(_REGISTRY)
