"""``cat-adapter demo``: a self-contained CAT run on a tiny model this command builds (offline, CPU, ~1 min).

The tiny model has random weights: the run shows the whole pipeline working (data, CAT loss,
checkpoints, diffusers-loadable weights, grids), not image quality. The built-in shapes world
(a trained toy model) replaces it when it lands.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Build a tiny model and concept, train CAT on it, sample from it (offline).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", default="runs/demo", help="Folder for the model, concept, adapter and grids.")
    p.add_argument("--steps", type=int, default=60, help="Training steps.")
    p.add_argument("--cat-alpha", type=float, default=1.0, help="CAT strength alpha.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the model, the concept and the training run.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output folder.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    from cat_adapter.config import build_config
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.tiny import build_tiny_pipeline, write_shape_concept
    from cat_adapter.training.loop import train

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CatAdapterError(f"--output {out}: is a file; give a folder path")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise CatAdapterError(f"--output {out}: folder exists; pass --overwrite to replace it")
        if not (out / "adapter").exists() and not (out / "model").exists():
            raise CatAdapterError(f"--output {out}: not a demo folder; refusing to delete it")
        shutil.rmtree(out)
    print(f"building a tiny random-weight Stable Diffusion pipeline in {out / 'model'}")
    build_tiny_pipeline(out / "model", seed=args.seed, sample_size=16, vae_blocks=2)
    write_shape_concept(out / "data", n=4, size=32, seed=args.seed)
    cfg = build_config(overrides=dict(
        model=str(out / "model"), data=str(out / "data"), trigger="sks", class_noun="circle", method="cat",
        cat_alpha=args.cat_alpha, steps=args.steps, lr=1e-3, resolution=32, seed=args.seed,
        output=str(out / "adapter"), checkpoint_every=max(1, args.steps // 2), validation_prompt="a sks circle",
        validation_every=max(1, args.steps // 2), validation_steps=10))
    adapter = train(cfg)
    print(f"adapter (loads with pipe.load_lora_weights): {adapter / 'pytorch_lora_weights.safetensors'}")
    print(f"per-step losses: {adapter / 'log.jsonl'}; validation grid: {adapter / 'validation.png'}")
    print("note: this tiny model has random weights; the images show the pipeline, not quality.")
    return 0
