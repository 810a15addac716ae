"""``cat-adapter sample``: images from a base model, optionally with a trained LoRA."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="Generate images with a base model and an optional adapter.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Hub id, diffusers folder, single-file .safetensors, or toy (the built-in shapes world).")
    p.add_argument("--adapter", "--lora", dest="adapter", default=None,
                   help="Adapter: a cat-adapter output folder (any method), a diffusers LoRA folder or .safetensors, "
                   "a kohya LoRA file, a learned_embeds.safetensors; none (or omitted) for the base model. --lora is an "
                   "alias.")
    p.add_argument("--lora-scale", type=float, default=1.0, help="Multiplier of the LoRA update.")
    p.add_argument("--prompt", required=True, action="append", help="Prompt; repeat for several.")
    p.add_argument("--negative-prompt", default=None, help="Negative prompt.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the first image; image i uses seed + i.")
    p.add_argument("--num-images", type=int, default=4, help="Images per prompt.")
    p.add_argument("--steps", type=int, default=30, help="Sampling steps.")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    p.add_argument("--resolution", type=int, default=None, help="Image size (default: the model's).")
    p.add_argument("--batch-size", type=int, default=4, help="Images per forward batch.")
    p.add_argument("--single-file-config", default=None, help="Config folder for a single-file --model (offline).")
    p.add_argument("--allow-pickle", action="store_true", help="Allow non-safetensors weights (weights_only=True).")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    p.add_argument("--output", required=True, help="Folder for the PNGs and grid.png.")
    p.add_argument("--overwrite", action="store_true", help="Replace the images of a non-empty --output folder.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.sampling import SampleOptions, sample_to_folder

    names = SampleOptions.__dataclass_fields__
    options = SampleOptions(prompts=args.prompt, **{k: v for k, v in vars(args).items() if k in names})
    files = sample_to_folder(options)
    if options.adapter:
        from cat_adapter.adapters import load_adapter

        found = load_adapter(options.adapter, allow_pickle=options.allow_pickle)
        print(f"adapter: {found.recognised} ({'+'.join(found.kinds)}) from {found.path}")
    print(f"wrote {len(files) - 1} images and {files[-1]}")
    return 0
