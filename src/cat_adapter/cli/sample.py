"""``cat-adapter sample``: images from a base model, optionally with a trained LoRA."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.options import add_arguments
    from cat_adapter.sampling import SampleOptions

    p = sub.add_parser("sample", help="Generate images with a base model and an optional adapter.")
    add_arguments(p, SampleOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.options import from_args
    from cat_adapter.sampling import SampleOptions, sample_to_folder

    options = from_args(SampleOptions, args)
    files = sample_to_folder(options)
    if options.adapter:
        from cat_adapter.adapters import load_adapter

        found = load_adapter(options.adapter, allow_pickle=options.allow_pickle)
        print(f"adapter: {found.recognised} ({'+'.join(found.kinds)}) from {found.path}")
    print(f"wrote {len(files) - 1} images and {files[-1]}")
    return 0
