"""``cat-adapter score``: the evaluation scores of images made elsewhere, listed in a CSV/JSONL manifest."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.evaluation.clip import DEFAULT_CLIP
    from cat_adapter.evaluation.metrics import DEFAULT_EPSILON

    p = sub.add_parser(
        "score", help="Score images listed in a manifest (adapters trained with other tools).",
        description="MANIFEST columns: prompt_trigger, prompt_plain, seed, image_trigger, image_plain; optional "
        "reference (a concept image: Identity Score), base_image (base model's image for prompt_plain and seed), "
        "group (train, heldout or control; control rows have no trigger prompt/image and give Leakage), prompt_text. "
        "Empty cells mean absent; image paths are relative to the manifest's folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, help="CSV or JSONL (.jsonl) manifest.")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model: hub id, local folder (CLIPModel + its processor), or toy (the shapes-world CLIP).")
    p.add_argument("--output", required=True, help="Folder for metrics.json, pairs.csv and grid.png.")
    p.add_argument("--label", default=None, help="Name of this run in reports (default: the manifest folder's name).")
    p.add_argument("--hm-epsilon", type=float, default=DEFAULT_EPSILON,
                   help="Cosines <= this are clamped to it before the harmonic mean (and counted).")
    p.add_argument("--clip-batch-size", type=int, default=32, help="Images or texts per CLIP batch.")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing evaluation folder.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cat_adapter.cli.evaluate import summary_line
    from cat_adapter.evaluation.score import score

    out = score(args.manifest, output=args.output, clip=args.clip, label=args.label, epsilon=args.hm_epsilon,
                clip_batch_size=args.clip_batch_size, overwrite=args.overwrite, cpu=args.cpu)
    print(summary_line(json.loads((Path(out) / "metrics.json").read_text())))
    print(f"wrote {Path(out) / 'metrics.json'}, pairs.csv and grid.png")
    return 0
