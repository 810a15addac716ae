"""``cat-adapter demo``: CAT vs plain LoRA on a tiny model this command builds (offline, CPU, < 1 min).

The tiny model has random weights, so its images show the pipeline, not quality. What the demo
does show is the mechanism of the paper in noise-prediction space: after training, how far each
adapter moved the model's prediction for the trigger prompt ("a photo of sks circle ...") and for
the trigger-free prompt ("a photo of circle ..."). Plain LoRA moves both; CAT moves the first and
keeps the second near the base model. The built-in shapes world (a trained toy model) replaces
the random model when it lands.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Build a tiny model and concept, train LoRA and CAT on it, compare them (offline, CPU).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", default="runs/demo", help="Folder for the model, concept, adapter and grids.")
    p.add_argument("--steps", type=int, default=150, help="Training steps of each adapter.")
    p.add_argument("--cat-alpha", type=float, default=1.0, help="CAT strength alpha.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the model, the concept and the training run.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    from cat_adapter.config import build_config
    from cat_adapter.diagnostics import prediction_drift
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.io import write_json_atomic
    from cat_adapter.models import load_lora, load_pipeline
    from cat_adapter.tiny import build_tiny_pipeline, write_shape_concept
    from cat_adapter.training.loop import train

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CatAdapterError(f"--output {out}: is a file; give a folder path")
    if out.exists() and any(out.iterdir()):
        if not (out / "model" / "model_index.json").exists():
            raise CatAdapterError(f"--output {out}: exists and is not a demo folder; choose another --output")
        print(f"replacing the previous demo in {out}")
        shutil.rmtree(out)
    print(f"building a tiny random-weight Stable Diffusion pipeline in {out / 'model'}")
    build_tiny_pipeline(out / "model", seed=args.seed, sample_size=16, vae_blocks=2)
    write_shape_concept(out / "data", n=4, size=32, seed=args.seed)
    common = dict(model=str(out / "model"), data=str(out / "data"), trigger="sks", class_noun="circle",
                  steps=args.steps, lr=1e-3, resolution=32, seed=args.seed, validation_prompt="a photo of sks circle",
                  validation_every=0, validation_steps=10)
    adapters = {}
    for name, extra in (("lora", dict(method="lora")),
                        ("cat", dict(method="cat", cat_alpha=args.cat_alpha, checkpoint_every=max(1, args.steps // 2)))):
        print(f"training {name} for {args.steps} steps")
        adapters[name] = train(build_config(overrides={**common, **extra, "output": str(out / name)}))
    prompts = ["a photo of sks circle on a light background", "a photo of circle on a light background"]
    rows = []
    for name, folder in adapters.items():
        pipe = load_pipeline(str(out / "model"))
        load_lora(pipe, folder)
        drift = prediction_drift(pipe, prompts, samples=32, seed=args.seed)
        rows.append({"method": name, "drift_trigger": drift[prompts[0]], "drift_plain": drift[prompts[1]]})
    write_json_atomic(out / "drift.json", {"prompts": prompts, "rows": rows})
    print("\nhow far each adapter moved the U-Net's noise prediction from the base model (mean squared difference):")
    print("| method | with trigger: 'a photo of sks circle ...' | without: 'a photo of circle ...' | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['drift_trigger']:.2e} | {r['drift_plain']:.2e} | {r['drift_trigger'] / max(r['drift_plain'], 1e-30):.1f}x |")
    for name, folder in adapters.items():
        print(f"{name}: {folder / 'pytorch_lora_weights.safetensors'} (loads with pipe.load_lora_weights), "
              f"log {folder / 'log.jsonl'}, grid {folder / 'validation.png'}")
    print(f"wrote {out / 'drift.json'}. The model has random weights: the images show the pipeline, not quality.")
    return 0
