"""The ``full`` part: every denoiser weight trains (in float32); its base model is a frozen copy."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from cat_adapter.methods.base import Exported, check_state_keys


class FullPart:
    """A full fine-tune. The frozen copy of the original weights (kept in the frozen components' dtype) exists
    only when something needs the base model during training: the preservation term or validation grids."""

    kind = "full"

    @classmethod
    def check_model(cls, cfg, model) -> None:
        """Every family trains its denoiser in full."""

    def __init__(self, model, cfg, *, need_base_copy: bool = False, **_):
        self.model = model
        denoiser = model.denoiser
        self.frozen_copy = None
        if need_base_copy:
            self.frozen_copy = copy.deepcopy(denoiser).requires_grad_(False).eval()
        for t in list(denoiser.parameters()) + list(denoiser.buffers()):  # trained weights stay float32 under
            if t.is_floating_point():                                      # mixed precision (dtype policy)
                t.data = t.data.float()
        denoiser.requires_grad_(True)
        self.params = list(denoiser.parameters())

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def param_groups(self, optim) -> list[dict]:
        return [{"params": self.params}]

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.model.denoiser}

    def base(self):
        if self.frozen_copy is None:
            raise RuntimeError("the base model of a full fine-tune needs the frozen copy (need_base_copy)")
        return self.model.denoiser_swapped(self.frozen_copy)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.model.denoiser.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(set(self.state_dict()), set(state), "denoiser")
        self.model.denoiser.load_state_dict(state, strict=True)

    def after_step(self) -> None:
        pass

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported:
        folder = self.model.denoiser_name   # unet/ or transformer/, as in a pipeline folder
        self.model.save_denoiser(out_dir / folder, dtype)
        return Exported("full", {"denoiser": folder}, {"component": self.model.denoiser_name})
