"""The ``lora`` part: peft LoRA on the model's denoiser; its base model is the adapter switched off."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from cat_adapter.adapters import layers_disabled, tuner_layers
from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.base import Exported, check_state_keys

ADAPTER_NAME = "default"
KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"
ADAPTER_PARAM = re.compile(r"\.(lora_|lokr_)")   # the trained tensors' names (LoRA, DoRA, LoKr)
TE_PREFIX = "text_encoder."   # the text encoder's LoRA keys in the method's state (checkpoints)


def _trainable(module) -> list[torch.nn.Parameter]:
    """The adapter tensors peft added to ``module``, made trainable and float32 whatever the frozen model's dtype."""
    params = [p for n, p in module.named_parameters() if ADAPTER_PARAM.search(n)]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()
    return params


class LoraPart:
    """LoRA (B = 0 at the start, so the output starts exactly at the base's), trained in float32."""

    kind = "lora"

    @classmethod
    def check_model(cls, cfg, model) -> None:
        """Options the loaded model's family cannot serve: one line, before anything is written."""
        if cfg.lora.train_text_encoder and not model.supports("text_encoder_lora"):
            raise CatAdapterError(f"--train-text-encoder is not built for the {model.family} family yet; train the "
                                  "denoiser's LoRA alone")
        if cfg.run.export_format == "kohya" and not model.supports("kohya_export"):
            raise CatAdapterError(f"--export-format kohya is not built for the {model.family} family; the diffusers "
                                  "file loads in diffusers and ComfyUI")

    def __init__(self, model, cfg, **_):
        o = cfg.lora
        self.model = model
        denoiser = model.denoiser
        targets = list(o.target_modules or model.lora_targets)
        model.check_lora_targets(targets)
        self.lora_type = o.lora_type
        self.alpha = float(o.lora_alpha if o.lora_alpha is not None else o.rank)
        self.config = self._peft_config(o, targets)
        try:
            denoiser.add_adapter(self.config, adapter_name=ADAPTER_NAME)
        except ValueError as exc:
            raise CatAdapterError(f"--target-modules {','.join(targets)}: {str(exc).splitlines()[0]}") from None
        self.params = _trainable(denoiser)
        self.te_params: list[torch.nn.Parameter] = []
        self.te_config = None
        if o.train_text_encoder:
            self._add_text_encoder_lora(o)
        self.layers = tuner_layers(denoiser) + (tuner_layers(model.text.encoder) if self.te_config else [])
        if not all(hasattr(m, "_disable_adapters") for m in self.layers):
            raise CatAdapterError("this peft version has no per-layer adapter flag; install peft>=0.14")

    def _peft_config(self, o, targets: list[str]):
        """peft's config for ``targets``: LoKr (one factor starts at 0) or LoRA (B A starts at 0)."""
        if self.lora_type == "lokr":
            from peft import LoKrConfig

            return LoKrConfig(r=o.rank, alpha=self.alpha, target_modules=list(targets))
        from peft import LoraConfig

        return LoraConfig(r=o.rank, lora_alpha=self.alpha, lora_dropout=o.lora_dropout, target_modules=list(targets),
                          use_dora=o.use_dora,
                          init_lora_weights={"true": True}.get(o.init_lora_weights, o.init_lora_weights))

    def _add_text_encoder_lora(self, o) -> None:
        """The same LoRA settings on the text encoder's attention projections (float32, trained)."""
        if not self.model.supports("text_encoder_lora"):
            raise CatAdapterError(f"--train-text-encoder is not built for the {self.model.family} family yet; "
                                  "train the denoiser's LoRA alone")
        encoder = self.model.text.encoder
        self.te_config = self._peft_config(o, o.text_encoder_target_modules)
        try:  # peft directly: transformers' add_adapter wants a newer peft than diffusers needs
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self.te_config, encoder, adapter_name=ADAPTER_NAME)
        except ValueError as exc:
            raise CatAdapterError(f"--text-encoder-target-modules {','.join(o.text_encoder_target_modules)}: "
                                  f"{str(exc).splitlines()[0]}") from None
        self.te_params = _trainable(encoder)
        self.te_lr = o.text_encoder_lr
        self.model.text.encoder_trained = True

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.params + self.te_params

    def param_groups(self, optim) -> list[dict]:
        groups = [{"params": self.params}]
        if self.te_params:
            groups.append({"params": self.te_params, **({"lr": self.te_lr} if self.te_lr else {})})
        return groups

    def modules(self) -> dict[str, torch.nn.Module]:
        if self.te_params:
            return {"denoiser": self.model.denoiser, "text_encoder": self.model.text.encoder}
        return {"denoiser": self.model.denoiser}

    @contextmanager
    def base(self) -> Iterator[None]:
        with layers_disabled(self.layers), self.model.ungraded():
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The U-Net's LoRA in peft's key names, and the text encoder's under ``text_encoder.``."""
        from peft.utils import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model.denoiser, adapter_name=ADAPTER_NAME)
        if self.te_config is not None:
            te = get_peft_model_state_dict(self.model.text.encoder, adapter_name=ADAPTER_NAME)
            sd.update({TE_PREFIX + k: v for k, v in te.items()})
        return sd

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        check_state_keys(set(self.state_dict()), set(state), "LoRA")
        parts = [(self.model.denoiser, {k: v for k, v in state.items() if not k.startswith(TE_PREFIX)})]
        if self.te_config is not None:
            parts.append((self.model.text.encoder, {k[len(TE_PREFIX):]: v for k, v in state.items()
                                                    if k.startswith(TE_PREFIX)}))
        for module, sd in parts:
            result = set_peft_model_state_dict(module, sd, adapter_name=ADAPTER_NAME)
            unexpected = getattr(result, "unexpected_keys", None) or []
            if unexpected:
                raise CatAdapterError(f"checkpoint LoRA state does not match this run (unexpected {unexpected[:3]})")

    def after_step(self) -> None:
        pass

    def metadata(self) -> dict:
        return self.model.denoiser.peft_config[ADAPTER_NAME].to_dict()

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported:
        full = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        sd = {k: v for k, v in full.items() if not k.startswith(TE_PREFIX)}
        te = {k[len(TE_PREFIX):]: v for k, v in full.items() if k.startswith(TE_PREFIX)} or None
        te_meta = self.model.text.encoder.peft_config[ADAPTER_NAME].to_dict() if te else None
        files = {"lora": self.model.save_lora(out_dir, sd, self.metadata(), te, te_meta).name}
        if export_format == "kohya":
            path = self.model.save_lora_kohya(out_dir / KOHYA_WEIGHT_NAME, sd, alpha=self.alpha,
                                              rank=int(self.config.r))
            files["lora_kohya"] = path.name
        return Exported("lora", files, {"rank": int(self.config.r), "lora_alpha": self.alpha,
                                        "target_modules": sorted(self.config.target_modules),
                                        "use_dora": bool(getattr(self.config, "use_dora", False)),
                                        "lora_type": self.lora_type,
                                        "text_encoder": bool(te)})
