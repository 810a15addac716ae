"""LoRA vs CAT vs CAT+pool on five shapes-world concepts (one per shape) x three training seeds.

    python benchmarks/toy_concepts.py [--seeds 0 1 2] [--steps 300] [--out runs/toy_concepts]
                                      [--concepts NAME ...] [--reuse] [--threads N]

``--reuse`` keeps a concept's finished run (same spec and settings) instead of redoing it, so an
interrupted benchmark continues, and concepts can run in parallel processes (``--concepts`` and
``--threads 1`` each) before a last ``--reuse`` call over all of them writes the tables.

Settings are fixed up front and identical for every method (``toy.demo.DemoSettings``: steps, lr,
rank, batch, concept images, seeds, evaluation seeds). Each concept runs ``cat-adapter demo``'s
pipeline (train, evaluate with the toy CLIP, pixel concept rates). Writes
``benchmarks/results/toy_concepts.json`` and ``toy_concepts.md``: the mean over all concept x seed
runs with the half-width of its 95 % interval (t over runs), and one table per concept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Fill colours the toy model renders reliably (benchmarks/toy_quality.py: blue 95%, cyan 100%, red 80%,
# yellow 100%, white 95% right); orange, pink and purple are its weak colours.
CONCEPTS = [
    {"name": "sks_circle", "class_noun": "circle", "trigger": "sks",
     "appearance": {"fill": "blue", "pattern": "stripes", "pattern_color": "yellow", "outline": "black"}},
    {"name": "zwx_square", "class_noun": "square", "trigger": "zwx",
     "appearance": {"fill": "cyan", "pattern": "dots", "pattern_color": "red", "outline": "none"}},
    {"name": "qlo_triangle", "class_noun": "triangle", "trigger": "qlo",
     "appearance": {"fill": "red", "pattern": "solid", "outline": "blue"}},
    {"name": "vrt_star", "class_noun": "star", "trigger": "vrt",
     "appearance": {"fill": "yellow", "pattern": "stripes", "pattern_color": "black", "outline": "none"}},
    {"name": "mbp_heart", "class_noun": "heart", "trigger": "mbp",
     "appearance": {"fill": "white", "pattern": "dots", "pattern_color": "blue", "outline": "black"}},
]
COLUMNS = ("identity_score", "prompt_score", "kps", "base_fidelity", "leakage", "concept_rate_trigger",
           "concept_rate_class", "concept_rate_control")
LABELS = ("base", "lora", "cat", "cat_pool")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="Training steps (default: the demo's).")
    ap.add_argument("--concepts", nargs="+", default=[c["name"] for c in CONCEPTS])
    ap.add_argument("--out", default="runs/toy_concepts", help="Folder for the runs (replaced).")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--reuse", action="store_true", help="Keep finished concept runs with the same spec and settings.")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 per process when running several).")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.concepts) - {c["name"] for c in CONCEPTS})
    if unknown:
        ap.error(f"--concepts: unknown {unknown}; valid: {[c['name'] for c in CONCEPTS]}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from cat_adapter.evaluation.metrics import mean_ci95
    from cat_adapter.toy.concept import validate_spec
    from cat_adapter.toy.demo import DemoSettings, run_demo, toy_model_id

    settings = DemoSettings(seeds=list(args.seeds))
    if args.steps:
        settings.steps = args.steps
    t0 = time.time()
    runs: list[dict] = []
    seconds: dict[str, float] = {}
    for spec in CONCEPTS:
        if spec["name"] not in args.concepts:
            continue
        spec = validate_spec({**spec, "num_images": 6, "seed": 0}, spec["name"])
        folder = Path(args.out) / spec["name"]
        done = json.loads((folder / "demo.json").read_text()) if (folder / "demo.json").is_file() else {}
        if (args.reuse and "seconds" in done and done.get("spec") == spec and done.get("settings") == asdict(settings)
                and done.get("toy_model") == toy_model_id()):
            print(f"=== {spec['name']}: finished run kept ({done['seconds']:.0f} s) ===", flush=True)
            seconds[spec["name"]] = done["seconds"]
        else:
            print(f"=== {spec['name']} ===", flush=True)
            seconds[spec["name"]] = run_demo(folder, spec, settings)["seconds"]
        for d in sorted((folder / "eval").iterdir()):
            m = json.loads((d / "metrics.json").read_text())
            runs.append({"concept": spec["name"], "label": m["label"], "eval": d.name,
                         **{c: m.get(c) for c in COLUMNS}})

    def table(rows: list[dict]) -> list[str]:
        lines = ["| method | " + " | ".join(COLUMNS) + " | runs |", "|---" * (len(COLUMNS) + 2) + "|"]
        for label in LABELS:
            group = [r for r in rows if r["label"] == label]
            if not group:
                continue
            cells = []
            for c in COLUMNS:
                mean, half = mean_ci95([r[c] for r in group if r[c] is not None])
                cells.append("" if mean is None else f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(group)} |")
        return lines

    md = [f"All concepts ({len({r['concept'] for r in runs})}) x seeds {args.seeds}; base is evaluated once per "
          "concept (its images do not depend on a training seed). ± is the 95 % interval half-width over runs.", ""]
    md += table(runs)
    for name in dict.fromkeys(r["concept"] for r in runs):
        md += ["", f"**{name}**", ""] + table([r for r in runs if r["concept"] == name])
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "toy_concepts.md").write_text("\n".join(md) + "\n")
    (results / "toy_concepts.json").write_text(json.dumps(
        {"runs": runs, "settings": {**settings.__dict__}, "concepts": CONCEPTS,
         "seconds": round(time.time() - t0, 1), "seconds_per_concept": seconds}, indent=1) + "\n")
    print("\n".join(md))
    print(f"\nwrote {results / 'toy_concepts.md'} and toy_concepts.json ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
