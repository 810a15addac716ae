"""Fig. 5 at real scale: step time and peak memory of LoRA, CAT fast and CAT lean on SD 1.5, SDXL and Flux-sized
denoisers, built from the public configs with random weights (nothing is downloaded), with the frozen base in bf16
and, in the quantized cells, int8 (torchao) and NF4 (bitsandbytes) as --quantize-base loads it. Each cell also
holds ``cat-adapter memory``'s estimate of its peak and the estimate's error against the measured peak.

Each cell builds the bf16 denoiser directly on the device, adds the method's LoRA through cat-adapter's own method
classes (the ones ``train`` uses: registry -> parts x terms -> run_terms), and times optimizer steps (AdamW, bf16
autocast, LoRA in float32) on random latents and text embeddings of the real shapes. Memory is the peak above the
model, adapter and optimizer state (the allocation after the warm-up steps, when AdamW's state exists), i.e.
activations and gradients. An out-of-memory cell is recorded as such; each cell's JSON is written as it finishes.

    python benchmarks/gpu_scale.py                        # the GPU cells (about 3-4 minutes on one H200)
    python benchmarks/gpu_scale.py --tiny --output /tmp/x  # CPU smoke run: tiny configs of the three families
Writes OUTPUT/<cell>.json and OUTPUT/gpu_scale.json (all cells) and prints a table with ratios to LoRA.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import types
from pathlib import Path

VARIANTS = {"lora": dict(method="lora"), "cat_fast": dict(method="cat", cat_mode="fast"),
            "cat_lean": dict(method="cat", cat_mode="lean")}

# Public configs (diffusers' config.json of each repo), random weights.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, cross_attention_dim=2048)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
# The tiny configs of the tests (CPU smoke run)
SD_TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
               cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
SDXL_TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                 cross_attention_dim=64, norm_num_groups=32)
FLUX_TINY = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                 guidance_embeds=True)

# family -> (denoiser config, tiny config, latent channels, text tokens, text width, pooled width, VAE factor)
FAMILIES = {"sd15": (SD15_UNET, SD_TINY, 4, 77, 768, None, 8), "sdxl": (SDXL_UNET, SDXL_TINY, 4, 77, 2048, 1280, 8),
            "flux": (FLUX_DEV, FLUX_TINY, 16, 512, 4096, 768, 8)}
TINY_TEXT = {"sd15": (77, 32, None), "sdxl": (77, 64, 32), "flux": (32, 32, 32)}
# (family, resolution, batch, gradient checkpointing, --quantize-base mode): Fig. 5's cells and the quantized ones
CELLS = [("sd15", 512, 1, False, "none"), ("sd15", 512, 4, False, "none"), ("sdxl", 1024, 1, True, "none"),
         ("sdxl", 1024, 1, False, "none"), ("sdxl", 1024, 4, True, "none"), ("flux", 1024, 1, True, "none"),
         ("sdxl", 1024, 1, True, "int8"), ("flux", 1024, 1, True, "int8"), ("flux", 1024, 1, True, "nf4")]
# the 2026 families, built through cat-adapter memory's config path: family -> (built-in config set, tiny builder)
GENERIC = {"sd35": ("sd35-large", "build_tiny_sd3_pipeline"), "zimage": ("zimage-turbo", "build_tiny_zimage_pipeline"),
           "chroma": ("chroma1-hd", "build_tiny_chroma_pipeline")}
CELLS += [("sd35", 1024, 1, True, "int8"), ("zimage", 1024, 1, True, "none"), ("chroma", 1024, 1, True, "int8")]
BUILTIN = {"sd15": "sd15", "sdxl": "sdxl", "flux": "flux-dev", **{k: v[0] for k, v in GENERIC.items()}}


def cell_name(family: str, res: int, batch: int, gc: bool, mode: str = "none") -> str:
    return f"{family}-{res}px-b{batch}-gc{'on' if gc else 'off'}" + ("" if mode == "none" else f"-{mode}")


def quantize(net, mode: str) -> None:
    """The denoiser's linear layers in ``mode``, as --quantize-base loads them: torchao's weight-only int8 / fp8
    (``quantize_``, the function diffusers' TorchAoConfig calls), bitsandbytes' NF4 (``Linear4bit``, what diffusers'
    BitsAndBytesConfig puts in place; quantized when moved to the GPU)."""
    import torch

    if mode == "none":
        return
    if mode in ("int8", "fp8"):
        from torchao.quantization import quantize_

        from cat_adapter.models.quantize import _torchao_type

        quantize_(net, _torchao_type(mode))
        return
    import bitsandbytes as bnb

    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, name, q.to(child.weight.device))


def estimate_cell(family: str, res: int, batch: int, gc: bool, mode: str) -> dict:
    """``cat-adapter memory``'s figures for the cell: the denoiser, adapter, optimizer and step (what the cell
    holds), by variant, in MiB."""
    from cat_adapter.memory import MemoryOptions, estimate

    est = estimate(MemoryOptions(model=BUILTIN[family], resolution=res, batch_size=batch, gradient_checkpointing=gc,
                                 quantize_base=mode))
    return {k: {"training_mib": v["training"] / 2**20,
                "above_model_mib": (v["activations"] + v["transient"] + 4 * v["adapter_params"]) / 2**20}
            for k, v in est.variants.items()}


def build_model(family: str, tiny: bool, device: str, dtype, mode: str = "none"):
    """cat-adapter's model object of ``family`` around a random-weight denoiser built on ``device`` in ``dtype``."""
    import torch
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, UNet2DConditionModel

    from cat_adapter.models import ModelSpec
    from cat_adapter.models.flux import FluxModel
    from cat_adapter.models.sd import SDModel
    from cat_adapter.models.sdxl import SDXLModel

    config = FAMILIES[family][1 if tiny else 0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = (FluxTransformer2DModel if family == "flux" else UNet2DConditionModel)(**config)
    finally:
        torch.set_default_dtype(previous)
    net.requires_grad_(False)
    quantize(net, mode)
    f = FAMILIES[family][6]
    spec = ModelSpec("bench")
    if family == "flux":
        return FluxModel(types.SimpleNamespace(transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(),
                                               vae_scale_factor=f), spec, "bench")
    pipe = types.SimpleNamespace(unet=net, scheduler=DDPMScheduler(), vae_scale_factor=f)
    return (SDXLModel if family == "sdxl" else SDModel)(pipe, spec, "bench")


def build_generic(family: str, tiny: bool, device: str, dtype, mode: str):
    """A 2026 family's model object around a random-weight denoiser built from its configs on ``device`` (the
    built-in config set; the tiny pipeline's configs with ``tiny``), as cat-adapter memory builds it on meta;
    returns (model, the text shape)."""
    import tempfile

    import torch

    from cat_adapter.memory import _build, family_class, model_around, read_configs
    from cat_adapter.testing import tiny as tiny_builders

    name, builder = GENERIC[family]
    if tiny:
        name = str(getattr(tiny_builders, builder)(Path(tempfile.mkdtemp()) / "model"))
    index, configs = read_configs(name)
    cls = family_class(index)
    net = _build(index, cls.denoiser_name, configs[cls.denoiser_name], dtype, device)
    for pad in ("x_pad_token", "cap_pad_token"):   # Z-Image creates these with torch.empty
        if hasattr(net, pad):
            with torch.no_grad():
                getattr(net, pad).fill_(1.0)
    quantize(net, mode)
    return model_around(cls, index, configs, net), cls.text_shape(configs, 32 if tiny else None)


def run_cell(family: str, res: int, batch: int, gc: bool, variant: str, *, tiny: bool, device: str, steps: int,
             warmup: int, mode: str = "none") -> dict:
    import torch

    from cat_adapter.config import build_config
    from cat_adapter.data.batch import Batch, Noised
    from cat_adapter.methods.base import build_method
    from cat_adapter.models import Cond

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    if family in GENERIC:
        model, text_shape = build_generic(family, tiny, device, dtype, mode)
    else:
        model = build_model(family, tiny, device, dtype, mode)
    params_m = sum(p.numel() for p in model.denoiser.parameters()) / 1e6
    cfg = build_config(overrides=dict(model="bench", data="-", output="-", class_noun="x", **VARIANTS[variant]))
    method = build_method(cfg, model)
    if gc:
        model.denoiser.enable_gradient_checkpointing()
    method.train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.01)
    if family in GENERIC:
        (channels, lat, _), (tokens, width, pooled) = model.latent_shape(res, res), text_shape
    else:
        channels = 4 if tiny else FAMILIES[family][2]   # the tiny Flux packs 4-channel latents
        tokens, width, pooled = TINY_TEXT[family] if tiny else FAMILIES[family][3:6]
        lat = res // FAMILIES[family][6]
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def make_batch() -> Batch:
        t = model.objective.sample_timesteps(batch, g)   # integer DDPM or float flow timesteps
        micro = torch.tensor([[res, res, 0, 0, res, res]] * batch)
        inst = Noised(r(batch, channels, lat, lat), r(batch, channels, lat, lat), t, micro)
        conds = {k: Cond(r(batch, tokens, width), None if pooled is None else r(batch, pooled)) for k in ("trigger", "plain")}
        return Batch(inst, conds).to(device)

    def step() -> None:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            method.forward_backward(make_batch(), lambda loss: loss.backward())
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"variant": variant, "denoiser_params_m": round(params_m, 1), "mean_s": statistics.fmean(times),
           "median_s": statistics.median(times)}
    if cuda:
        out["model_and_optimizer_mb"] = base / 2**20
        out["peak_above_model_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (smoke run), 1 step per variant")
    ap.add_argument("--output", default="benchmarks/results/gpu_scale", help="folder for the JSON files")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 4 on GPU, 1 tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on GPU, 1 tiny)")
    ap.add_argument("--cells", nargs="*", default=None, help="cell names to run (default: all)")
    args = ap.parse_args()
    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        sys.exit("gpu_scale.py: no CUDA device; run with --tiny for the CPU smoke run")
    steps = args.steps or (1 if args.tiny else 4)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "tiny": args.tiny, "steps": steps, "warmup": warmup,
            "dtype": "bf16 weights, bf16 autocast, LoRA float32" if device == "cuda" else "float32"}
    results = []
    for family, res, batch, gc, mode in CELLS:
        name = cell_name(family, res, batch, gc, mode)
        if args.cells and name not in args.cells:
            continue
        if mode == "nf4" and device != "cuda":
            print(f"{name}: skipped (bitsandbytes' NF4 needs CUDA)", flush=True)
            continue
        if args.tiny:
            res = 64 if family not in GENERIC else 16   # latents 8x8
        cell = {"cell": name, "family": family, "resolution": res, "batch": batch, "gradient_checkpointing": gc,
                "quantize_base": mode, "variants": {}}
        t0 = time.perf_counter()
        if not args.tiny:   # the estimate first, on the CPU, while nothing is on the GPU
            cell["estimate"] = estimate_cell(family, res, batch, gc, mode)
        for variant in VARIANTS:
            try:
                cell["variants"][variant] = run_cell(family, res, batch, gc, variant, tiny=args.tiny, device=device,
                                                     steps=steps, warmup=warmup, mode=mode)
            except torch.cuda.OutOfMemoryError:
                cell["variants"][variant] = {"variant": variant, "oom": True}
            est = cell.get("estimate", {}).get(variant)
            got = cell["variants"][variant]
            if est and "peak_allocated_mb" in got:
                got["estimate_error"] = est["training_mib"] / got["peak_allocated_mb"] - 1
            if device == "cuda":
                import gc

                gc.collect()
                torch.cuda.empty_cache()   # the cell's model and optimizer went out of scope
        cell["wall_s"] = round(time.perf_counter() - t0, 1)
        lora = cell["variants"].get("lora", {})
        for v in cell["variants"].values():
            if "mean_s" in v and "mean_s" in lora:
                v["time_vs_lora"] = v["mean_s"] / lora["mean_s"]
            if "peak_above_model_mb" in v and lora.get("peak_above_model_mb"):
                v["memory_vs_lora"] = v["peak_above_model_mb"] / lora["peak_above_model_mb"]
        (out / f"{name}.json").write_text(json.dumps({**meta, **cell}, indent=1))
        results.append(cell)
        line = "  ".join(f"{k} {v.get('mean_s', math.nan):.3f}s ({v.get('time_vs_lora', math.nan):.2f}x)"
                         + (f" {v['peak_above_model_mb']:.0f}MB ({v.get('memory_vs_lora', math.nan):.2f}x)"
                            if "peak_above_model_mb" in v else "")
                         + (f" peak {v['peak_allocated_mb'] / 1024:.1f}GiB (estimate {v['estimate_error']:+.0%})"
                            if "estimate_error" in v else "") + (" OOM" if v.get("oom") else "")
                         for k, v in cell["variants"].items())
        print(f"{name}: {line}  [{cell['wall_s']}s]", flush=True)
    (out / "gpu_scale.json").write_text(json.dumps({**meta, "cells": results}, indent=1))


if __name__ == "__main__":
    main()
