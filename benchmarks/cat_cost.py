"""Step time and peak memory of LoRA, CAT fast and CAT lean (issue: CAT <= 2x LoRA time, lean <= 1.2x memory),
and of the cheaper CAT steps: --cat-every K (the term on every K-th step) and --cat-fraction F (on ceil(F x B) rows).

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
    python benchmarks/cat_cost.py --old-src /tmp/old/src   # also the code of another checkout (its src/), interleaved
    python benchmarks/cat_cost.py --old-src /tmp/before/src --variants lora cat_fast cat_lean --batches 4
Writes benchmarks/results/cat_cost-<device>.json and prints a table with ratios to LoRA (and new / old).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"lora": dict(method="lora"), "cat_fast": dict(method="cat", cat_mode="fast"),
            "cat_lean": dict(method="cat", cat_mode="lean"),
            # the cheaper steps in fast mode (a skipped or smaller preservation batch needs less extra memory)
            "fast_every2": dict(method="cat", cat_mode="fast", cat_every=2),
            "fast_every4": dict(method="cat", cat_mode="fast", cat_every=4),
            "fast_frac0.5": dict(method="cat", cat_mode="fast", cat_fraction=0.5),
            "fast_frac0.25": dict(method="cat", cat_mode="fast", cat_fraction=0.25)}
OLD_VARIANTS = ("lora", "cat_fast", "cat_lean")   # what cat-adapter <= 9fbf7e2 had


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _new_api(variant: str, batch: int, unet, device: str):
    """The current API: the method the registry builds, on an SD model object around the benchmark U-Net."""
    import types

    import torch
    from diffusers import DDPMScheduler

    from cat_adapter.config import build_config
    from cat_adapter.data.batch import Batch, Noised
    from cat_adapter.methods.base import build_method
    from cat_adapter.models import Cond, SDModel, ModelSpec

    model = SDModel(types.SimpleNamespace(unet=unet, scheduler=DDPMScheduler()), ModelSpec("bench"), "bench")
    cfg = build_config(overrides=dict(model="bench", data="-", output="-", class_noun="x", **VARIANTS[variant]))
    method = build_method(cfg, model)
    method.train()
    g = torch.Generator().manual_seed(1)

    fraction = cfg.preservation.cat_fraction
    steps = [0]

    def make_batch():
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        inst = Noised(r(batch, 4, 16, 16), r(batch, 4, 16, 16), torch.randint(0, 1000, (batch,), generator=g))
        keep = None
        if fraction < 1:  # as the sampler draws them
            keep = torch.randperm(batch, generator=g)[:max(1, math.ceil(fraction * batch))].sort().values
        return Batch(inst, {"trigger": Cond(r(batch, 77, 32)), "plain": Cond(r(batch, 77, 32))}, None, keep).to(device)

    def forward_backward(b, backward):
        method.step = steps[0]   # as the training loop sets it: --cat-every counts optimizer steps
        steps[0] += 1
        return method.forward_backward(b, backward)

    return method.parameters(), forward_backward, make_batch


def _old_api(variant: str, batch: int, unet, device: str):
    """The API of cat-adapter <= 9fbf7e2 (methods subclass each other, Batch holds three embeddings)."""
    import torch
    from diffusers import DDPMScheduler

    from cat_adapter.config import MethodConfig
    from cat_adapter.methods import Batch, get_method

    method = get_method(VARIANTS[variant]["method"])(unet, DDPMScheduler(), MethodConfig(**VARIANTS[variant]))
    unet.train()
    g = torch.Generator().manual_seed(1)

    def make_batch():
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        return Batch(r(batch, 4, 16, 16), r(batch, 4, 16, 16), torch.randint(0, 1000, (batch,), generator=g),
                     r(batch, 77, 32), r(batch, 77, 32)).to(device)

    return method.trainable_parameters(), method.forward_backward, make_batch


def worker(variant: str, batch: int, steps: int, warmup: int, device: str, code: str = "new") -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(32, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")).to(device)
    unet.requires_grad_(False)
    import cat_adapter.methods

    # an old checkout with the registry (methods = parts x terms) takes the current API; <= 9fbf7e2 its own
    api = _new_api if code == "new" or not hasattr(cat_adapter.methods, "get_method") else _old_api
    params, forward_backward, make_batch = api(variant, batch, unet, device)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step() -> None:
        forward_backward(make_batch(), lambda loss: loss.backward())
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
    # the median step (as the docstring says): a burst of load on a shared CPU moves the mean of a short run
    return {"variant": variant, "batch": batch, "code": code, "mean_s": statistics.median(times),
            "peak_above_model_mb": (peak - base) / 2**20}


def _run(cmd: list[str], env) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--output", default=None)
    p.add_argument("--old-src", default=None, help="src/ folder of another checkout (e.g. a git worktree of "
                   "9fbf7e2) whose code runs interleaved with this one, same settings")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the variants to run (default: all)")
    p.add_argument("--worker", nargs=3, metavar=("VARIANT", "BATCH", "CODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker and a.worker[2] == "old":
        sys.path.insert(0, a.old_src)
        for name in [m for m in sys.modules if m.startswith("cat_adapter")]:
            del sys.modules[name]
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.steps, a.warmup, device, a.worker[2])))
        return
    # glibc keeps freed heap memory in the process and raises its mmap threshold dynamically, so RSS
    # would remember the largest tensor ever freed; a fixed threshold makes large tensors mmapped and
    # returned on free, and the peak RSS then follows live memory (what a GPU allocator reports).
    mem_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = []
    codes = ["new"] + (["old"] if a.old_src else [])
    for batch in a.batches:
        for rep in range(a.repeats):
            for variant, code in [(v, c) for v in a.variants for c in codes if c == "new" or v in OLD_VARIANTS]:  # interleaved: load drift hits all alike
                base_cmd = [sys.executable, __file__, "--worker", variant, str(batch), code, "--device", device] + \
                    (["--old-src", a.old_src] if a.old_src else [])
                # Time with the default allocator; memory in a separate short run with the fixed threshold.
                timed = _run(base_cmd + ["--steps", str(a.steps), "--warmup", str(a.warmup)], os.environ)
                if device == "cpu":
                    timed["peak_above_model_mb"] = _run(base_cmd + ["--steps", "2", "--warmup", "1"], mem_env)["peak_above_model_mb"]
                runs.append(timed)
                print(f"  batch {batch} repeat {rep} {variant} ({code}): {timed['mean_s']:.4f} s/step, "
                      f"{timed['peak_above_model_mb']:.0f} MB", file=sys.stderr)
    summary = {}
    for batch in a.batches:
        rows = {v: [r for r in runs if r["variant"] == v and r["batch"] == batch and r["code"] == "new"] for v in a.variants}
        med = {v: (statistics.median(r["mean_s"] for r in rs), statistics.median(r["peak_above_model_mb"] for r in rs))
               for v, rs in rows.items()}
        summary[str(batch)] = {v: {"s_per_step": t, "peak_above_model_mb": mem, "time_x_lora": t / med["lora"][0],
                                   "memory_x_lora": mem / med["lora"][1]} for v, (t, mem) in med.items()}
        if a.old_src:
            for v in [v for v in OLD_VARIANTS if v in a.variants]:
                old = [r for r in runs if r["variant"] == v and r["batch"] == batch and r["code"] == "old"]
                t_old = statistics.median(r["mean_s"] for r in old)
                m_old = statistics.median(r["peak_above_model_mb"] for r in old)
                summary[str(batch)][v].update({"old_s_per_step": t_old, "new_x_old_time": med[v][0] / t_old,
                                               "old_peak_above_model_mb": m_old, "new_x_old_memory": med[v][1] / m_old})
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    result = {"device": device, "device_name": name, "torch": torch.__version__, "repeats": a.repeats, "steps": a.steps,
              "old_src": a.old_src,
              "unet": "block_out_channels (32,64,64), layers_per_block 2, latents 4x16x16", "summary": summary, "runs": runs}
    path = Path(a.output or Path(__file__).parent / "results" / f"cat_cost-{device.split(':')[0]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print("| variant | batch | s/step (x LoRA) | peak MB above model (x LoRA) | new / old time | new / old memory |\n"
          "|---|---|---|---|---|---|")
    for batch, rows in summary.items():
        for v, r in rows.items():
            vs = (f"{r['new_x_old_time']:.2f} | {r['new_x_old_memory']:.2f}" if "new_x_old_time" in r else "- | -")
            print(f"| {v} | {batch} | {r['s_per_step']:.4f} ({r['time_x_lora']:.2f}) | "
                  f"{r['peak_above_model_mb']:.0f} ({r['memory_x_lora']:.2f}) | {vs} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
