"""``cat-adapter evaluate``: paired images of an adapter (or the base model), then the paper's scores and ours."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.data.prompts import PRESERVE_MODES
    from cat_adapter.evaluation.clip import DEFAULT_CLIP
    from cat_adapter.evaluation.metrics import DEFAULT_EPSILON

    p = sub.add_parser(
        "evaluate", help="Generate paired images and compute Prompt/Identity/KPS scores (paper Eqs. 4-11) and ours.",
        description="For every prompt with the trigger (the concept's captions, and --prompts) and every seed, "
        "generate with the adapter from y_T and from y (same initial noise) and with the base model from y; "
        "embed with CLIP and write metrics.json, pairs.csv (every cosine), manifest.csv, images/ and grid.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Base model: hub id, diffusers folder, single-file .safetensors, or toy (the built-in shapes world).")
    p.add_argument("--adapter", "--lora", dest="adapter", required=True,
                   help="Adapter: a cat-adapter output folder (any method), a diffusers LoRA folder or .safetensors, "
                   "a kohya LoRA file, a learned_embeds.safetensors; or none for the base model. --lora is an alias.")
    p.add_argument("--data", default=None, help="Concept folder (images with optional .txt captions). Required, except "
                   "for a multi-concept adapter evaluated without --concept: then every concept is evaluated from the "
                   "folders in the training run's concepts.yaml, with a confusion report.")
    p.add_argument("--concept", default=None, help="Evaluate this concept (by name) of a multi-concept adapter.")
    p.add_argument("--output", required=True, help="Evaluation folder to write.")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model: hub id, local folder (CLIPModel + its processor), or toy (the shapes-world CLIP).")
    p.add_argument("--trigger", default=None, help="Trigger word (default: from the adapter's config.yaml).")
    p.add_argument("--class-noun", default=None, help="Class noun (default: from the adapter's config.yaml).")
    p.add_argument("--preserve-prompt", default=None, choices=PRESERVE_MODES,
                   help="How y is made from y_T (default: the adapter's config.yaml; remove for --lora none).")
    p.add_argument("--caption-template", default=None, help="Caption of images without .txt (default: the adapter's).")
    p.add_argument("--prompts", default=None, help="Held-out prompt templates with {trigger}, one per line (group heldout).")
    p.add_argument("--control-prompts", default=None,
                   help="Trigger-free prompts never trained on (other classes/attributes), one per line: Leakage.")
    p.add_argument("--label", default=None, help="Name of this run in reports (default: the adapter folder's name, or base).")
    p.add_argument("--images-per-prompt", type=int, default=4, help="Seeds per prompt: seed, seed+1, ...")
    p.add_argument("--seed", type=int, default=0, help="First seed.")
    p.add_argument("--sample-steps", type=int, default=30, help="Sampling steps.")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    p.add_argument("--batch-size", type=int, default=8, help="Images per generation batch.")
    p.add_argument("--lora-scale", type=float, default=1.0, help="Multiplier of the LoRA update.")
    p.add_argument("--drift-samples", type=int, default=8,
                   help="z_t draws per trigger-free prompt for drift_plain (mean squared change of the noise "
                   "prediction against the base model); 0 skips it.")
    p.add_argument("--resolution", type=int, default=None, help="Image size (default: the model's).")
    p.add_argument("--hm-epsilon", type=float, default=DEFAULT_EPSILON,
                   help="Cosines <= this are clamped to it before the harmonic mean (and counted).")
    p.add_argument("--clip-batch-size", type=int, default=32, help="Images or texts per CLIP batch.")
    p.add_argument("--single-file-config", default=None, help="Config folder for a single-file --model (offline).")
    p.add_argument("--allow-pickle", action="store_true", help="Allow non-safetensors weights (weights_only=True).")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing evaluation folder.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cat_adapter.evaluation.evaluate import EvalOptions, evaluate

    names = EvalOptions.__dataclass_fields__
    out = evaluate(EvalOptions(**{k: v for k, v in vars(args).items() if k in names}))
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
