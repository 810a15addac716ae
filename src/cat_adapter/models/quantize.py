"""A quantized frozen base (``--quantize-base``, ``--quantize-text-encoders``), through diffusers' and transformers'
quantization configs at load time.

The weights are quantized while the pipeline is read, before anything is placed on a device: quantizing after
``.to(device)``, or only on a fresh start and not on ``--resume``, keeps full-size weights in memory (diffusers
issue 9108). Only the linear layers are quantized (the backends' default); LoRA layers are added on top by peft and
train in float32, and CAT's frozen pass is the same quantized base with the adapter switched off, so no second copy
of the base exists. The saved LoRA is a plain LoRA: it loads onto the unquantized base.

| mode | backend | device | why this backend |
|---|---|---|---|
| int8 | torchao ``Int8WeightOnlyConfig`` | CPU and CUDA | int8 weight-only matmuls run on the CPU at the float32 compute dtype (a toy U-Net step 1.1x the unquantized one here; optimum-quanto's qint8 1.7x), and peft has a torchao LoRA layer |
| fp8 | torchao ``Float8WeightOnlyConfig`` | CUDA (compute capability 8.9+) | float8 kernels exist only there |
| nf4 | bitsandbytes 4-bit NF4 (``BitsAndBytesConfig``) | CUDA | QLoRA's format; peft's bnb LoRA layer; bitsandbytes' 4-bit kernels need CUDA |
"""

from __future__ import annotations

from cat_adapter.errors import CatAdapterError
from cat_adapter.options import require_package

BACKENDS = {"int8": ("torchao", "quantization"), "fp8": ("torchao", "quantization"),
            "nf4": ("bitsandbytes", "bitsandbytes")}   # mode -> (import name, pip extra)
MODES = ("none", *BACKENDS)   # --quantize-base's choices (config.py; a test holds them equal)
NEEDS_CUDA = {"fp8": "a CUDA GPU with compute capability 8.9 or newer (float8 kernels)",
              "nf4": "a CUDA GPU (bitsandbytes' 4-bit kernels)"}


def check_mode(mode: str, *, device_type: str, option: str = "--quantize-base") -> None:
    """One line, before any model loads: the backend's package is installed and the device can run the mode."""
    if mode == "none":
        return
    package, extra = BACKENDS[mode]
    require_package(package, extra, f"{option} {mode}")
    if mode in NEEDS_CUDA and device_type != "cuda":
        raise CatAdapterError(f"{option} {mode} needs {NEEDS_CUDA[mode]}; this run is on the {device_type}: use "
                              f"{option} int8 (CPU and GPU) or none")


def _diffusers_config(mode: str, compute_dtype):
    import diffusers

    if mode == "nf4":
        return diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=compute_dtype)
    return diffusers.TorchAoConfig(_torchao_type(mode))


def _transformers_config(mode: str, compute_dtype):
    import transformers

    if mode == "nf4":
        return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=compute_dtype)
    return transformers.TorchAoConfig(quant_type=_torchao_type(mode))


def _torchao_type(mode: str):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()


def pipeline_config(mode: str, *, denoiser: str, text_encoders: tuple[str, ...] = (), compute_dtype=None):
    """diffusers' ``PipelineQuantizationConfig`` quantizing ``denoiser`` (and ``text_encoders``, transformers models)
    in ``mode``; None for ``none``."""
    if mode == "none":
        return None
    import logging

    import torch
    from diffusers import PipelineQuantizationConfig

    # torchao's import notes optional kernels it cannot load on a CPU build (triton, CUDA extensions) and torch notes
    # its enum registrations: nothing a user can act on
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    dtype = compute_dtype or torch.float32
    mapping = {denoiser: _diffusers_config(mode, dtype)}
    mapping.update({name: _transformers_config(mode, dtype) for name in text_encoders})
    return PipelineQuantizationConfig(quant_mapping=mapping)
