"""``cat-adapter evaluate``: paired images of an adapter (or the base model), then the paper's scores and ours."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.evaluation.evaluate import EvalOptions
    from cat_adapter.options import add_arguments

    p = sub.add_parser(
        "evaluate", help="Generate paired images and compute Prompt/Identity/KPS scores (paper Eqs. 4-11) and ours.",
        description="For every prompt with the trigger (the concept's captions, and --prompts) and every seed, "
        "generate with the adapter from y_T and from y (same initial noise) and with the base model from y; "
        "embed with CLIP and write metrics.json, pairs.csv (every cosine), manifest.csv, images/ and grid.png.")
    add_arguments(p, EvalOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cat_adapter.evaluation.evaluate import EvalOptions, evaluate
    from cat_adapter.options import from_args

    out = evaluate(from_args(EvalOptions, args))
    m = json.loads((Path(out) / "metrics.json").read_text())
    if m.get("adapter_recognised"):
        print(f"adapter: {m['adapter_recognised']} ({'+'.join(m['adapter_kinds'])}) from {m['adapter']}")
    if "confusion" in m:  # every concept of a multi-concept adapter
        for name, per in m["per_concept"].items():
            print(summary_line({**per, "label": f"{m['label']}:{name}"}))
        c = m["confusion"]
        print(f"confusion ({c['kind']}): largest share of another concept's look/identity "
              f"{'n/a' if c['max_off_diagonal'] is None else format(c['max_off_diagonal'], '.3f')}")
        print(f"wrote {out / 'metrics.json'}, confusion.csv, confusion.png and one evaluation folder per concept")
        return 0
    print(summary_line(m))
    print(f"wrote {out / 'metrics.json'}, pairs.csv, manifest.csv, images/ and grid.png")
    return 0


def summary_line(m: dict) -> str:
    keys = ("prompt_score", "identity_score", "kps", "base_fidelity", "class_diversity", "leakage")
    line = f"{m['label']}: " + ", ".join(f"{k} {'n/a' if m.get(k) is None else format(m[k], '.4f')}" for k in keys)
    return line + (f", drift_plain {m['drift_plain']:.3g}" if m.get("drift_plain") is not None else "")
