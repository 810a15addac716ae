"""Images per second of evaluation generation at batch 1 vs batch 8 on a tiny pipeline; writes JSON.

    python benchmarks/generation_throughput.py [--steps 10] [--images 32] [--repeats 3] [--device cpu]

The same prompts and seeds are generated at every batch size with ``cat_adapter.sampling.generate``
(the function ``evaluate`` batches through); the script also reports the largest per-pixel
difference between the batch-1 and the batched images (uint8 levels). Target: >= 2x at batch 8.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def measure(pipe, prompts: list[str], seeds: list[int], *, batch_size: int, steps: int, repeats: int):
    from cat_adapter.sampling import generate

    generate(pipe, prompts[:batch_size], seeds[:batch_size], steps=steps, batch_size=batch_size)  # warm-up
    times, images = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images = generate(pipe, prompts, seeds, steps=steps, batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="Sampling steps per image.")
    ap.add_argument("--images", type=int, default=32, help="Images per measurement (a multiple of 8).")
    ap.add_argument("--repeats", type=int, default=3, help="Timed repeats per batch size (the median is reported).")
    ap.add_argument("--batch-sizes", default="1,8", help="Comma-separated batch sizes; the first is the baseline.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--output", default=str(HERE / "results" / "generation_throughput.json"))
    args = ap.parse_args(argv)

    from cat_adapter.io import write_json_atomic
    from cat_adapter.models import load_pipeline
    from cat_adapter.testing.tiny import build_tiny_pipeline

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_pipeline(Path(tmp) / "model", seed=0)   # U-Net (32, 64), latents 4x8x8, images 16x16
        pipe = load_pipeline(str(model)).to(args.device)
    prompts = [f"a photo of sks circle number {i % 4}" if i % 2 else f"a photo of circle number {i % 4}"
               for i in range(args.images)]
    seeds = list(range(args.images))
    results, reference = {}, None
    for b in sizes:
        times, images = measure(pipe, prompts, seeds, batch_size=b, steps=args.steps, repeats=args.repeats)
        arrays = np.stack([np.asarray(im, dtype=np.int16) for im in images])
        if reference is None:
            reference = arrays
        median = statistics.median(times)
        results[str(b)] = {"seconds": times, "median_seconds": median, "images_per_s": args.images / median,
                           "max_abs_pixel_diff_vs_baseline": int(np.abs(arrays - reference).max())}
        print(f"batch {b}: {args.images / median:.1f} images/s (median of {args.repeats}: {median:.3f} s)")
    base = results[str(sizes[0])]["images_per_s"]
    speedup = {b: r["images_per_s"] / base for b, r in results.items()}
    out = {
        "benchmark": "generation_throughput", "pipeline": "tiny (cat_adapter.tiny.build_tiny_pipeline, 16x16 images)",
        "device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else
        platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "images": args.images, "steps": args.steps, "guidance_scale": 7.5, "repeats": args.repeats,
        "results": results, "speedup_vs_batch_" + str(sizes[0]): speedup, "target_speedup": 2.0,
        "meets_target": max(speedup.values()) >= 2.0, "python": sys.version.split()[0],
    }
    write_json_atomic(args.output, out)
    print(f"speedup: {', '.join(f'batch {b}: {s:.2f}x' for b, s in speedup.items())}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
