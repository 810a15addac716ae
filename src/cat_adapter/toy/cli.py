"""``cat-adapter toy``: the built-in shapes world (concept folders from a spec, samples of the world)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="The built-in shapes world: make concept folders and look at the world.")
    toy = p.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)
    c = toy.add_parser("concept", help="Write a concept folder (images + .txt captions with the trigger) from a JSON spec.",
                       description='Spec example: {"name": "sks_circle", "class_noun": "circle", "trigger": "sks", '
                       '"appearance": {"fill": "orange", "pattern": "stripes", "outline": "black"}, '
                       '"num_images": 6, "seed": 0}')
    c.add_argument("--spec", required=True, help="JSON spec file.")
    c.add_argument("--output", required=True, help="New folder for the concept.")
    c.set_defaults(func=run_concept)
    w = toy.add_parser("samples", help="Write a grid of base-world images with their captions.")
    w.add_argument("--num", type=int, default=24, help="Number of samples.")
    w.add_argument("--seed", type=int, default=0, help="Seed of the first sample.")
    w.add_argument("--output", required=True, help="Folder for grid.png and captions.txt.")
    w.set_defaults(func=run_samples)
    b = toy.add_parser("build", help="Retrain the toy tokenizer, CLIP, VAE and U-Net from scratch (hours on a CPU).",
                       description="Trains the shapes world's models from scratch with the fixed recipe "
                       "(cat_adapter/toy/build/) and writes OUTPUT/pipeline, OUTPUT/clip and OUTPUT/build.json "
                       "(command, recipe, versions, commit, sha256 of every weight file). Checkpoints every 250 "
                       "steps; --resume continues an interrupted build. Uses a GPU when one is present.")
    b.add_argument("--output", required=True, help="Folder for the build (new, or an interrupted build with --resume).")
    b.add_argument("--resume", action="store_true", help="Continue an interrupted build in --output.")
    b.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    b.add_argument("--redo", nargs="+", default=(), metavar="STAGE",
                   help="With --resume: discard these stages (and the stages that read them) and run them again, "
                   "e.g. after changing their recipe.")
    b.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; use 1 if other jobs share the cores).")
    b.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help="Run only these stages (tokenizer clip judge vae unet) and do not assemble; independent "
                   "stages (judge beside vae/unet) can then run in parallel processes on the same --output with "
                   "--resume. A final run without --stages assembles.")
    b.set_defaults(func=run_build)
    i = toy.add_parser("info", help="Print JSON about the shipped toy models and the world (paths, palette, "
                       "recommended sampling settings).")
    i.set_defaults(func=run_info)


def run_concept(args: argparse.Namespace) -> int:
    from cat_adapter.toy.concept import load_spec, write_concept

    spec = load_spec(args.spec)
    out = write_concept(spec, args.output)
    print(f"wrote {spec['num_images']} images of '{spec['trigger']} {spec['class_noun']}' to {out}")
    return 0


def run_samples(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cat_adapter.errors import CatAdapterError
    from cat_adapter.io import write_text_atomic
    from cat_adapter.sampling import make_grid, save_image
    from cat_adapter.toy.world import sample_pair

    if args.num < 1:
        raise CatAdapterError("--num must be >= 1")
    pairs = [sample_pair(args.seed + i) for i in range(args.num)]
    out = Path(args.output)
    rows = [[p[0] for p in pairs[i:i + 8]] for i in range(0, len(pairs), 8)]
    save_image(make_grid(rows, min_cell=64), out / "grid.png")
    write_text_atomic(out / "captions.txt", "".join(f"{args.seed + i}\t{p[1]}\n" for i, p in enumerate(pairs)))
    print(f"wrote {out / 'grid.png'} and {out / 'captions.txt'}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    import torch

    from cat_adapter.errors import CatAdapterError
    from cat_adapter.toy.build import build

    if args.threads is not None:
        if args.threads < 1:
            raise CatAdapterError(f"--threads must be >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    if args.device is not None:
        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, ValueError) as exc:
            raise CatAdapterError(f"--device {args.device}: not usable here ({str(exc).splitlines()[0]})") from None
    from cat_adapter.toy.build import STAGES

    stages = tuple(args.stages or STAGES)
    for option, names in (("--stages", stages), ("--redo", args.redo)):
        unknown = [x for x in names if x not in STAGES]
        if unknown:
            raise CatAdapterError(f"{option}: unknown stage {unknown[0]!r}; valid: {', '.join(STAGES)}")
    for x in args.redo:
        if x not in stages:
            raise CatAdapterError(f"--redo {x}: not among --stages ({' '.join(stages)}); add it there")
    build(args.output, resume=args.resume, device=args.device, stages=stages, redo=tuple(args.redo),
          log=lambda m: print(m, flush=True))
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json

    from cat_adapter.toy.assets import info

    print(json.dumps(info(), indent=1))
    return 0
