"""``cat-adapter demo``: base vs LoRA vs CAT on the built-in shapes world, with the paper's scores."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.toy.demo import DemoSettings

    d = DemoSettings()
    p = sub.add_parser(
        "demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Train LoRA, CAT and CAT+pool on a shapes-world concept with the shipped toy model, evaluate, report.",
        description="Offline, CPU: writes a concept from a spec, trains plain LoRA, CAT and CAT with a preservation "
                    "pool with identical settings, evaluates base and adapters with the evaluation suite (toy CLIP) "
                    "plus a pixel-read concept_rate, as a compare plan (OUT/plan.yaml) run into OUT/compare; the "
                    "report is OUT/compare/report/ (table1.md, paired.md, profile.md, grid_trigger.png, "
                    "grid_class.png: base/LoRA/CAT images for the trigger and class prompts).")
    p.add_argument("--output", default="runs/demo", help="Folder for everything the demo writes (a previous demo "
                   "there is replaced; any other non-empty folder is refused).")
    p.add_argument("--concept-spec", default=None, help="JSON concept spec (see 'cat-adapter toy concept --help'); "
                   "default: a blue circle with yellow stripes and a black outline, trigger sks.")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds,
                   help="Training seeds; several are pooled in the report with 95%% intervals.")
    p.add_argument("--steps", type=int, default=d.steps, help="Training steps of every method.")
    p.add_argument("--lr", type=float, default=d.lr, help="Learning rate of every method.")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank of every method.")
    p.add_argument("--cat-alpha", type=float, default=d.cat_alpha, help="CAT strength alpha (cat and cat_pool).")
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt,
                   help="Evaluation seeds per prompt.")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps,
                   help="Sampling steps of evaluation images (the toy model's recommendation is 30, toy info).")
    p.add_argument("--methods", nargs="+", default=list(d.methods), metavar="METHOD",
                   help="Methods to train and compare: lora cat cat_pool (the default set, about 4 minutes on 2 "
                   "cores), dreambooth, ti (toy settings: docs/methods.md).")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.toy.concept import load_spec, validate_spec
    from cat_adapter.toy.demo import DEFAULT_SPEC, DemoSettings, run_demo

    settings = DemoSettings(steps=args.steps, lr=args.lr, rank=args.rank, cat_alpha=args.cat_alpha, seeds=args.seeds,
                            images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps,
                            methods=list(args.methods)).validate()
    spec = load_spec(args.concept_spec) if args.concept_spec else validate_spec(dict(DEFAULT_SPEC), "built-in spec")
    if spec["resolution"] != 32:
        raise CatAdapterError(f"--concept-spec: resolution must be 32 for the toy model (got {spec['resolution']})")
    run_demo(args.output, spec, settings, cpu=args.cpu)
    return 0
