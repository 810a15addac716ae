"""``cat-adapter score``: the evaluation scores of images made elsewhere, listed in a CSV/JSONL manifest."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.evaluation.score import ScoreOptions
    from cat_adapter.options import add_arguments

    p = sub.add_parser(
        "score", help="Score images listed in a manifest (adapters trained with other tools).",
        description="MANIFEST columns: prompt_trigger, prompt_plain, seed, image_trigger, image_plain; optional "
        "reference (a concept image: Identity Score), base_image (base model's image for prompt_plain and seed), "
        "group (train, heldout or control; control rows have no trigger prompt/image and give Leakage), prompt_text. "
        "Empty cells mean absent; image paths are relative to the manifest's folder.")
    add_arguments(p, ScoreOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cat_adapter.cli.evaluate import summary_line
    from cat_adapter.evaluation.score import ScoreOptions, score_manifest
    from cat_adapter.options import from_args

    out = score_manifest(from_args(ScoreOptions, args))
    print(summary_line(json.loads((Path(out) / "metrics.json").read_text())))
    print(f"wrote {Path(out) / 'metrics.json'}, pairs.csv and grid.png")
    return 0
