"""Is the shipped toy model good enough to carry the paper's claim? Measured on fresh seeds.

    python benchmarks/toy_quality.py [--model toy] [--clip toy] [--images 1000] [--seeds 4] [--class-seeds 40]

1. Toy CLIP zero-shot accuracy on fresh procedural images (never in the build's pool), per attribute
   (shape, fill, pattern, outline; prompts in ``toy/judge.py``). Targets: 95 / 90 / 85 / 85 %.
2. Generations of "a {colour} {shape}" for every pair and ``--seeds`` seeds: the fill colour is
   right when the pixel analyzer's fill (nearest palette colour of the shape's majority) is the
   prompt's colour (target >= 80 %); the shape is right when the toy CLIP reads the prompt's shape
   (target >= 80 %).
3. Generations of "a {shape}": the fill colours must spread over the palette (normalised entropy of
   the analyzer's fills over the 10 colours, target >= 0.7), since an unnamed attribute varies.

Writes ``benchmarks/results/toy_quality.json`` and ``toy_generations.png`` (a grid of generations).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TARGETS = {"clip_shape": 0.95, "clip_fill": 0.90, "clip_pattern": 0.85, "clip_outline": 0.85,
           "gen_fill": 0.80, "gen_shape": 0.80, "class_fill_entropy": 0.70}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--clip", default="toy")
    ap.add_argument("--images", type=int, default=1000, help="Fresh procedural images for the CLIP check.")
    ap.add_argument("--seeds", type=int, default=4, help="Seeds per (colour, shape) prompt.")
    ap.add_argument("--class-seeds", type=int, default=40, help="Seeds per 'a {shape}' prompt.")
    ap.add_argument("--seed", type=int, default=123_456, help="First generation seed (fresh: not used elsewhere).")
    ap.add_argument("--guidance-scale", type=float, default=None, help="Default: the toy model's recommendation.")
    ap.add_argument("--sample-steps", type=int, default=None, help="Default: the toy model's recommendation.")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    from cat_adapter.evaluation.clip import ClipEmbedder
    from cat_adapter.models import load_pipeline
    from cat_adapter.sampling import generate, make_grid, save_image
    from cat_adapter.toy.analyze import analyze
    from cat_adapter.toy.assets import info
    from cat_adapter.toy.judge import Judge, clip_zero_shot
    from cat_adapter.toy.world import COLORS, SHAPES

    t0 = time.time()
    rec = info()
    steps = args.sample_steps or rec["steps"]
    guidance = args.guidance_scale if args.guidance_scale is not None else rec["guidance_scale"]
    embedder = ClipEmbedder(args.clip, device="cpu", batch_size=256)
    judge = Judge(embedder)
    zs = clip_zero_shot(args.clip, n=args.images, seed=987_654, embedder=embedder)
    print(f"toy CLIP zero-shot on {args.images} fresh images: {zs}", flush=True)

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    pairs = [(c, s) for s in SHAPES for c in COLORS]
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in pairs for _ in range(args.seeds)]
    seeds = [args.seed + k for _ in pairs for k in range(args.seeds)]
    images = generate(pipe, prompts, seeds, steps=steps, guidance_scale=guidance, batch_size=50)
    truth = [(c, s) for c, s in pairs for _ in range(args.seeds)]
    fills = [analyze(im)["fill"] for im in images]
    shapes = [r["shape"] for r in judge.read(images, attributes=("shape",))]
    fill_ok = [f == c for f, (c, _) in zip(fills, truth)]
    shape_ok = [r == s for r, (_, s) in zip(shapes, truth)]
    per_colour = {c: float(np.mean([ok for ok, (cc, _) in zip(fill_ok, truth) if cc == c])) for c in COLORS}
    per_shape = {s: float(np.mean([ok for ok, (_, ss) in zip(shape_ok, truth) if ss == s])) for s in SHAPES}
    print(f"'a {{colour}} {{shape}}' x {args.seeds} seeds: fill right {np.mean(fill_ok):.3f}, "
          f"shape right {np.mean(shape_ok):.3f}", flush=True)

    class_prompts = [f"a {s}" for s in SHAPES for _ in range(args.class_seeds)]
    class_seeds = [args.seed + 10_000 + k for _ in SHAPES for k in range(args.class_seeds)]
    class_images = generate(pipe, class_prompts, class_seeds, steps=steps, guidance_scale=guidance, batch_size=50)
    entropies, spreads = {}, {}
    for i, s in enumerate(SHAPES):
        got = Counter(analyze(im)["fill"] for im in class_images[i * args.class_seeds:(i + 1) * args.class_seeds])
        counts = np.array([got.get(c, 0) for c in COLORS], dtype=float)
        p = counts / max(1.0, counts.sum())
        entropies[s] = float(-(p[p > 0] * np.log(p[p > 0])).sum() / math.log(len(COLORS)))
        spreads[s] = {c: int(got.get(c, 0)) for c in COLORS if got.get(c)}
    class_shape_ok = [r["shape"] == p.split()[-1] for r, p in
                      zip(judge.read(class_images, attributes=("shape",)), class_prompts)]
    print(f"'a {{shape}}' x {args.class_seeds} seeds: normalised fill entropy {entropies}", flush=True)

    results = {
        "clip_shape": zs["shape"], "clip_fill": zs["fill"], "clip_pattern": zs["pattern"], "clip_outline": zs["outline"],
        "gen_fill": float(np.mean(fill_ok)), "gen_shape": float(np.mean(shape_ok)),
        "class_fill_entropy": float(np.mean(list(entropies.values()))),
    }
    record = {"results": results, "targets": TARGETS,
              "passed": {k: results[k] >= TARGETS[k] for k in TARGETS},
              "gen_fill_per_colour": per_colour, "gen_shape_per_shape": per_shape,
              "class_fill_entropy_per_shape": entropies, "class_fill_counts": spreads,
              "class_shape_right": float(np.mean(class_shape_ok)),
              "settings": {"images": args.images, "seeds": args.seeds, "class_seeds": args.class_seeds,
                           "first_seed": args.seed, "steps": steps, "guidance_scale": guidance,
                           "model": args.model, "clip": args.clip},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy_quality.json").write_text(json.dumps(record, indent=1) + "\n")
    rows = [[images[(i * len(COLORS) + j) * args.seeds] for j in range(len(COLORS))] for i in range(len(SHAPES))]
    rows += [class_images[i * args.class_seeds:i * args.class_seeds + len(COLORS)] for i in range(len(SHAPES))]
    save_image(make_grid(rows, row_labels=[f"a <colour> {s}" for s in SHAPES] + [f"a {s}" for s in SHAPES],
                         col_labels=list(COLORS), min_cell=64), out / "toy_generations.png")
    print("\n| measure | value | target |\n|---|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.3f} | >= {TARGETS[k]:.2f} {'ok' if v >= TARGETS[k] else 'MISSED'} |")
    print(f"\nwrote {out / 'toy_quality.json'} and {out / 'toy_generations.png'} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
