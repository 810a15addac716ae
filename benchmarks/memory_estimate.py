"""``cat-adapter memory``'s estimate: its activation factor fitted on the GPU cells we have measured, and its table for
SD 1.5, SDXL and FLUX.1-dev at none / int8 / nf4 (README and docs/benchmarks.md).

The fit: benchmarks/cat_cost.py measured, on one H200 (``benchmarks/results/cat_cost-cuda.json``), the peak memory
above the model of LoRA, CAT fast and CAT lean on a small U-Net at batch 4 and 16 (float32). This script rebuilds
that U-Net's configs in a temporary pipeline folder, counts the same steps on the meta device
(``cat_adapter.memory``) and prints measured - counted per cell; ``WORKSPACE_MIB`` in ``cat_adapter/memory.py`` is
the largest of those differences, rounded up (an estimate should not promise memory that is not there). Then the table: each
model at its native resolution, batch 1, rank 16, bf16, gradient checkpointing on (how these models are trained on
16-24 GB cards), for every --quantize-base mode, with and without --quantize-text-encoders where the family has a
large text encoder.

    python benchmarks/memory_estimate.py            # about 3 minutes on 2 CPU cores
Writes benchmarks/results/memory_estimate.json and .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "benchmarks" / "results" / "cat_cost-cuda.json"
# benchmarks/cat_cost.py's U-Net (its worker() builds it) and text embeddings 77 x 32
COST_UNET = dict(_class_name="UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[32, 64, 64], cross_attention_dim=32, attention_head_dim=8,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
COST_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                 max_position_embeddings=77, vocab_size=1000, projection_dim=32)
COST_VAE = dict(_class_name="AutoencoderKL", block_out_channels=[32, 64, 64, 64], latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                norm_num_groups=32)
MODELS = {"sd15": False, "sdxl": True, "flux-dev": True, "sd35-medium": True, "sd35-large": True, "chroma1-hd": True,
          "zimage-turbo": True}   # name -> has a large text encoder
MODES = ("none", "int8", "nf4")


def cost_folder(root: Path) -> Path:
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    files = {"model_index.json": index, "unet/config.json": COST_UNET, "vae/config.json": COST_VAE,
             "text_encoder/config.json": COST_TEXT, "scheduler/scheduler_config.json": {"_class_name": "DDPMScheduler"}}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(data))
    return root


def fit() -> list[dict]:
    """Per cat_cost GPU cell: the measured peak above the model, what the estimate counts for the same quantity
    (activations, backward's gradients in flight, the adapter's gradients and AdamW state) and the difference."""
    from cat_adapter.memory import WORKSPACE_MIB, MemoryOptions, estimate

    measured = json.loads(CELLS.read_text())["summary"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = cost_folder(Path(tmp))
        for batch, variants in measured.items():
            est = estimate(MemoryOptions(model=str(folder), batch_size=int(batch), mixed_precision="no",
                                         resolution=128, rank=4))
            for variant, m in variants.items():
                v = est.variants[variant]
                counted = (v["activations"] + v["transient"] - WORKSPACE_MIB * 2**20 + v["adapter_state"]
                           - 4 * v["adapter_params"]) / 2**20
                rows.append({"batch": int(batch), "variant": variant, "measured_mib": m["peak_above_model_mb"],
                             "counted_mib": counted, "difference_mib": m["peak_above_model_mb"] - counted,
                             "estimate_mib": counted + WORKSPACE_MIB})
    return rows


def main() -> None:
    from cat_adapter.memory import WORKSPACE_MIB, MemoryOptions, estimate

    t0 = time.perf_counter()
    rows = fit()
    print("fit on benchmarks/results/cat_cost-cuda.json (H200, float32, small U-Net), MiB above the model:")
    for r in rows:
        print(f"  batch {r['batch']:>2} {r['variant']:<8} measured {r['measured_mib']:6.1f}  counted "
              f"{r['counted_mib']:6.1f}  difference {r['difference_mib']:5.1f}  estimate {r['estimate_mib']:6.1f} "
              f"({r['estimate_mib'] / r['measured_mib'] - 1:+.1%})")
    print(f"largest difference {max(r['difference_mib'] for r in rows):.1f} MiB; WORKSPACE_MIB in "
          f"cat_adapter/memory.py is {WORKSPACE_MIB}")
    table = []
    for model in MODELS:
        for mode in MODES:
            for te in ((False, True) if mode != "none" and MODELS[model] else (False,)):
                est = estimate(MemoryOptions(model=model, quantize_base=mode, quantize_text_encoders=te, rank=16,
                                             gradient_checkpointing=True))
                row = {"model": model, "mode": mode, "text_encoders_quantized": te, "resolution": est.resolution,
                       **{k: {"peak_gib": v["peak"] / 2**30, "training_gib": v["training"] / 2**30,
                              "startup_gib": v["startup"] / 2**30, "fits_gib": v["fits_gib"]}
                          for k, v in est.variants.items()}}
                table.append(row)
                print(f"{model} {mode}{' +TE' if te else ''}: " + "  ".join(
                    f"{k} {row[k]['peak_gib']:.1f} GiB (fits {row[k]['fits_gib']})" for k in est.variants), flush=True)
    out = ROOT / "benchmarks" / "results"
    (out / "memory_estimate.json").write_text(json.dumps({"fit": rows, "workspace_mib": WORKSPACE_MIB,
                                                          "table": table}, indent=1) + "\n")
    (out / "memory_estimate.md").write_text(markdown(rows, table))
    print(f"[{time.perf_counter() - t0:.0f} s] wrote {out / 'memory_estimate.json'} and .md")


def markdown(rows: list[dict], table: list[dict]) -> str:
    from cat_adapter.memory import CONTEXT_GIB, WORKSPACE_MIB

    lines = ["# cat-adapter memory: the fit and the estimates", "",
             "Written by `python benchmarks/memory_estimate.py`. Fit on `cat_cost-cuda.json` (one H200, float32, the "
             "small U-Net of benchmarks/cat_cost.py), MiB above the model:", "",
             "| batch | method | measured | counted | difference | estimate (counted + workspace) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['variant']} | {r['measured_mib']:.1f} | {r['counted_mib']:.1f} | "
                     f"{r['difference_mib']:.1f} | {r['estimate_mib']:.1f} ({r['estimate_mib'] / r['measured_mib'] - 1:+.1%}) |")
    lines += ["", f"WORKSPACE_MIB = {WORKSPACE_MIB:g}.", "",
              "Estimates: native resolution, batch 1, rank 16, bf16, gradient checkpointing on, AdamW; peak GiB "
              "(the larger of start-up, every component on the GPU, and training, text encoders and VAE offloaded); "
              f"'fits': the smallest of 8/12/16/24/32/48/80 GiB holding peak + {CONTEXT_GIB:g} GiB.", "",
              "| model | --quantize-base | text encoders | LoRA | CAT fast | CAT lean | CAT lean / LoRA | fits (LoRA, CAT fast, CAT lean) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['model']} {r['resolution']} px | {r['mode']} | {'quantized' if r['text_encoders_quantized'] else 'bf16'} | "
                     f"{r['lora']['peak_gib']:.1f} | {r['cat_fast']['peak_gib']:.1f} | {r['cat_lean']['peak_gib']:.1f} | "
                     f"{r['cat_lean']['peak_gib'] / r['lora']['peak_gib']:.2f} | "
                     f"{r['lora']['fits_gib']}, {r['cat_fast']['fits_gib']}, {r['cat_lean']['fits_gib']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
