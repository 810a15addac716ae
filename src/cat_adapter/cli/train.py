"""``cat-adapter train``: parse options (defaults <- --config file <- flags), then ``training.train``."""

from __future__ import annotations

import argparse

from cat_adapter.config import add_config_arguments, build_config, load_config_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="Train an adapter (CAT, LoRA, DreamBooth, Textual Inversion) on a concept folder.",
                       description="Train a personalization adapter: --method cat (LoRA with the CAT loss, paper "
                       "Eq. 3), lora, dreambooth (full fine-tune with prior preservation) or ti (textual inversion). "
                       "Defaults are per method (docs/methods.md); every option in docs/cli.md. Every option can also "
                       "come from --config FILE.yaml; flags override the file.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of options (flat, or in the sections of OUT/config.yaml).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.runners import train

    given = {k: v for k, v in vars(args).items() if k not in ("config", "no_progress", "func", "command", "verbose")}
    cfg = build_config(load_config_file(args.config) if args.config else {}, given,
                       file_source=f"--config {args.config}" if args.config else None)
    out = train(cfg, progress=not args.no_progress)
    import json
    import os

    if os.environ.get("RANK", "0") == "0":  # under accelerate launch, the main process speaks for all
        done = json.loads((out / "done.json").read_text())
        print(f"saved {', '.join(str(out / f) for f in done['files'])} and {out / 'adapter.json'}")
    return 0
