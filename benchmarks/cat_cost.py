"""Step time and peak memory of LoRA, CAT fast and CAT lean (issue: CAT <= 2x LoRA time, lean <= 1.2x memory).

U-Net (32, 64, 64), 2 layers per block, latents 4x16x16, text embeddings 77x32, AdamW, the real
method classes of cat_adapter. Every (variant, batch, repeat) runs in a fresh process. Memory is
the peak above the loaded model + adapter (optimizer state, activations, gradients): on CUDA max_memory_allocated minus the
allocated memory before the first step; on CPU the peak RSS (VmHWM, reset through
/proc/self/clear_refs) minus the RSS before the first step, measured in a separate short run with
MALLOC_MMAP_THRESHOLD_=131072 so that freed tensors leave the process (glibc otherwise keeps freed
heap memory and raises its mmap threshold, and RSS remembers the largest tensor ever freed); the
timed runs use the default allocator. Time is the median over the timed steps
(after warm-up) of one run, then the median over repeats.

    python benchmarks/cat_cost.py                       # batches 4 and 16, 3 repeats
    python benchmarks/cat_cost.py --batches 4 --repeats 1 --steps 5
Writes benchmarks/results/cat_cost-<device>.json and prints a table with ratios to LoRA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"lora": dict(method="lora"), "cat_fast": dict(method="cat", cat_mode="fast"),
            "cat_lean": dict(method="cat", cat_mode="lean")}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def worker(variant: str, batch: int, steps: int, warmup: int, device: str) -> dict:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from cat_adapter.config import MethodConfig
    from cat_adapter.methods import Batch, get_method

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(32, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")).to(device)
    unet.requires_grad_(False)
    method = get_method(VARIANTS[variant]["method"])(unet, DDPMScheduler(), MethodConfig(**VARIANTS[variant]))
    unet.train()
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)

    def make_batch() -> Batch:
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        return Batch(r(batch, 4, 16, 16), r(batch, 4, 16, 16), torch.randint(0, 1000, (batch,), generator=g),
                     r(batch, 77, 32), r(batch, 77, 32)).to(device)

    def step() -> None:
        method.forward_backward(make_batch(), lambda loss: loss.backward())
        opt.step()
        opt.zero_grad(set_to_none=True)

    # Baseline: model, adapter and optimizer built, nothing run yet. On CPU freed memory may stay in the
    # process, so the peak is taken over the whole run from this point (the first step included).
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kb("VmRSS") * 1024
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM") * 1024
    return {"variant": variant, "batch": batch, "median_s": statistics.median(times), "peak_above_model_mb": (peak - base) / 2**20}


def _run(cmd: list[str], env) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--output", default=None)
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.steps, a.warmup, device)))
        return
    # glibc keeps freed heap memory in the process and raises its mmap threshold dynamically, so RSS
    # would remember the largest tensor ever freed; a fixed threshold makes large tensors mmapped and
    # returned on free, and the peak RSS then follows live memory (what a GPU allocator reports).
    mem_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = []
    for batch in a.batches:
        for rep in range(a.repeats):
            for variant in VARIANTS:  # interleaved, so drift in machine load hits every variant alike
                base_cmd = [sys.executable, __file__, "--worker", variant, str(batch), "--device", device]
                # Time with the default allocator; memory in a separate short run with the fixed threshold.
                timed = _run(base_cmd + ["--steps", str(a.steps), "--warmup", str(a.warmup)], os.environ)
                if device == "cpu":
                    timed["peak_above_model_mb"] = _run(base_cmd + ["--steps", "2", "--warmup", "1"], mem_env)["peak_above_model_mb"]
                runs.append(timed)
                print(f"  batch {batch} repeat {rep} {variant}: {timed['median_s']:.4f} s/step, "
                      f"{timed['peak_above_model_mb']:.0f} MB", file=sys.stderr)
    summary = {}
    for batch in a.batches:
        rows = {v: [r for r in runs if r["variant"] == v and r["batch"] == batch] for v in VARIANTS}
        med = {v: (statistics.median(r["median_s"] for r in rs), statistics.median(r["peak_above_model_mb"] for r in rs))
               for v, rs in rows.items()}
        summary[str(batch)] = {v: {"s_per_step": t, "peak_above_model_mb": mem, "time_x_lora": t / med["lora"][0],
                                   "memory_x_lora": mem / med["lora"][1]} for v, (t, mem) in med.items()}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    result = {"device": device, "device_name": name, "torch": torch.__version__, "repeats": a.repeats, "steps": a.steps,
              "unet": "block_out_channels (32,64,64), layers_per_block 2, latents 4x16x16", "summary": summary, "runs": runs}
    path = Path(a.output or Path(__file__).parent / "results" / f"cat_cost-{device.split(':')[0]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print("| variant | batch | s/step (x LoRA) | peak MB above model (x LoRA) |\n|---|---|---|---|")
    for batch, rows in summary.items():
        for v, r in rows.items():
            print(f"| {v} | {batch} | {r['s_per_step']:.4f} ({r['time_x_lora']:.2f}) | "
                  f"{r['peak_above_model_mb']:.0f} ({r['memory_x_lora']:.2f}) |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
