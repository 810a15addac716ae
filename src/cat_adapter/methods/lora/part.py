"""The ``lora`` part: peft LoRA on the model's denoiser; its base model is the adapter switched off."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.base import Exported, check_state_keys

ADAPTER_NAME = "default"
KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"


def tuner_layers(module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def layers_disabled(layers: list) -> Iterator[None]:
    """Switch LoRA layers off by their flag alone.

    Not diffusers' ``disable_adapters()``: peft's toggle sets ``requires_grad`` (off, then back on for
    every LoRA weight, including weights frozen on purpose) and walks every module (16 ms per
    toggle pair on the benchmark U-Net, 11% of a LoRA step); the flag flip changes nothing else.
    """
    previous = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, p in zip(layers, previous):
            m._disable_adapters = p


class LoraPart:
    """LoRA (B = 0 at the start, so the output starts exactly at the base's), trained in float32."""

    kind = "lora"

    def __init__(self, model, cfg, **_):
        from peft import LoraConfig

        o = cfg.lora
        self.model = model
        denoiser = model.denoiser
        model.check_lora_targets(o.target_modules)
        self.config = LoraConfig(r=o.rank, lora_alpha=o.lora_alpha if o.lora_alpha is not None else o.rank,
                                 lora_dropout=o.lora_dropout, target_modules=list(o.target_modules),
                                 init_lora_weights={"true": True}.get(o.init_lora_weights, o.init_lora_weights),
                                 use_dora=o.use_dora)
        try:
            denoiser.add_adapter(self.config, adapter_name=ADAPTER_NAME)
        except ValueError as exc:
            raise CatAdapterError(f"--target-modules {','.join(o.target_modules)}: {str(exc).splitlines()[0]}") from None
        self.params = [p for n, p in denoiser.named_parameters() if "lora_" in n]
        for p in self.params:
            p.requires_grad_(True)
            p.data = p.data.float()  # LoRA weights train in float32 whatever the frozen model's dtype
        self.layers = tuner_layers(denoiser)
        if not all(hasattr(m, "_disable_adapters") for m in self.layers):
            raise CatAdapterError("this peft version has no per-layer adapter flag; install peft>=0.14")

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def param_groups(self, optim) -> list[dict]:
        return [{"params": self.params}]

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.model.denoiser}

    @contextmanager
    def base(self) -> Iterator[None]:
        with layers_disabled(self.layers), self.model.ungraded():
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model.denoiser, adapter_name=ADAPTER_NAME)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        check_state_keys(set(self.state_dict()), set(state), "LoRA")
        result = set_peft_model_state_dict(self.model.denoiser, state, adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise CatAdapterError(f"checkpoint LoRA state does not match this run (unexpected {unexpected[:3]})")

    def after_step(self) -> None:
        pass

    def metadata(self) -> dict:
        return self.model.denoiser.peft_config[ADAPTER_NAME].to_dict()

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported:
        sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        files = {"lora": self.model.save_lora(out_dir, sd, self.metadata()).name}
        if export_format == "kohya":
            path = self.model.save_lora_kohya(out_dir / KOHYA_WEIGHT_NAME, sd, alpha=float(self.config.lora_alpha),
                                              rank=int(self.config.r))
            files["lora_kohya"] = path.name
        return Exported("lora", files, {"rank": int(self.config.r), "lora_alpha": float(self.config.lora_alpha),
                                        "target_modules": sorted(self.config.target_modules),
                                        "use_dora": bool(self.config.use_dora)})
