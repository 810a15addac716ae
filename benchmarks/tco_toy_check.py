"""Does The Chosen One make a shapes-world character consistent? (issue 10's toy world check)

The prompt "a circle" leaves the look open: the base toy model draws circles of many fills, patterns and
outlines. For each model, the pixel reader (``toy.analyze``) reads the look (fill, pattern, outline) of
``--images`` images; the model's *modal-look share* is the share of them that show that model's most common
look. An image the reader cannot read counts as a miss. The base model is read on the prompt; each TCO
adapter (one per training seed) on the prompt with its trigger ("a sks circle").
Pass: every seed's share >= 2 x the base share and >= 0.4.

    python benchmarks/tco_toy_check.py                                   # trains 3 seeds (~6 min on 2 cores)
    python benchmarks/tco_toy_check.py --adapters runs/table1_uniform/jobs/sks_circle__tco__seed*/train
Writes benchmarks/results/tco_toy_check.{json,md,png}. Images are drawn with seeds 100000 + i, which no
TCO iteration used for its own generations.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

LOOK = ("fill", "pattern", "outline")
EVAL_SEED = 100_000
TCO_KEYS = ("tco_images", "tco_cluster_size", "tco_min_cluster", "tco_max_iterations", "tco_convergence",
            "tco_guidance_scale")


def modal_share(images) -> tuple[float, dict | None, int]:
    """(share of images showing the most common readable look, that look, unreadable count)."""
    from cat_adapter.toy.analyze import analyze

    looks = [analyze(img) for img in images]
    readable = [tuple(a[k] for k in LOOK) for a in looks if all(a[k] is not None for k in LOOK)]
    if not readable:
        return 0.0, None, len(images)
    look, count = Counter(readable).most_common(1)[0]
    return count / len(images), dict(zip(LOOK, look)), len(images) - len(readable)


def train_seeds(work: Path, seeds: list[int], a) -> list[Path]:
    from cat_adapter.config import build_config
    from cat_adapter.runners import train

    outs = []
    for seed in seeds:
        out = work / f"seed{seed}"
        if not (out / "done.json").is_file():
            train(build_config(overrides=dict(
                model="toy", method="tco", trigger=a.trigger, class_noun=a.class_noun, tco_prompt=a.prompt,
                resolution=32, steps=a.steps, lr=a.lr, rank=4, batch_size=2, seed=seed, validation_every=0,
                **{k: getattr(a, k) for k in TCO_KEYS if getattr(a, k) is not None},
                output=str(out), resume=(out / "config.yaml").is_file())), progress=False)
        outs.append(out)
    return outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", nargs="*", help="finished TCO output folders (default: train --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", default="runs/tco_toy_check", help="where --seeds are trained")
    p.add_argument("--prompt", default="a circle")
    p.add_argument("--class-noun", default="circle")
    p.add_argument("--trigger", default="sks")
    p.add_argument("--steps", type=int, default=250, help="training steps per iteration (the Table 1 plan's)")
    p.add_argument("--lr", type=float, default=1e-3)
    for key in TCO_KEYS:
        p.add_argument("--" + key.replace("_", "-"), type=float if key in ("tco_convergence", "tco_guidance_scale") else int,
                       help="passed to training (default: the toy default)")
    p.add_argument("--images", type=int, default=64, help="images read per model (the issue asks >= 32)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "tco_toy_check"))
    a = p.parse_args()

    from cat_adapter.adapters import load_adapter
    from cat_adapter.models import ModelSpec, load_model
    from cat_adapter.sampling import generate, make_grid, save_image
    from cat_adapter.methods.tco.prompts import tco_prompts

    adapters = [Path(x) for x in a.adapters] if a.adapters else train_seeds(Path(a.work), a.seeds, a)
    seeds = [EVAL_SEED + i for i in range(a.images)]
    gen = dict(steps=a.sample_steps, guidance_scale=a.guidance_scale, batch_size=16)

    model = load_model(ModelSpec("toy"))
    base_images = generate(model, [a.prompt] * len(seeds), seeds, **gen)
    base_share, base_look, base_bad = modal_share(base_images)
    rows, grid = [], [base_images[:16]]
    labels = [f"base: {a.prompt}"]
    for folder in adapters:
        found = load_adapter(folder)
        trained = load_model(ModelSpec("toy"))
        found.apply(trained)
        trigger = found.concepts[0]["trigger"] if found.concepts else a.trigger
        prompt = tco_prompts(a.prompt, trigger, a.class_noun)[1]
        images = generate(trained, [prompt] * len(seeds), seeds, lora_scale=found.lora_scale, **gen)
        share, look, bad = modal_share(images)
        tco = json.loads((folder / "tco.json").read_text()) if (folder / "tco.json").is_file() else {}
        rows.append(dict(adapter=str(folder), prompt=prompt, share=share, look=look, unreadable=bad,
                         iterations=len(tco.get("iterations", [])), converged=tco.get("converged"),
                         passed=share >= 2 * base_share and share >= 0.4))
        grid.append(images[:16])
        labels.append(f"{folder.parent.name}/{folder.name}: {prompt}")
        print(f"{folder}: share {share:.3f} look {look} unreadable {bad}")
    print(f"base '{a.prompt}': share {base_share:.3f} look {base_look} unreadable {base_bad}")

    result = dict(prompt=a.prompt, images=a.images, sample_steps=a.sample_steps, guidance_scale=a.guidance_scale,
                  base=dict(share=base_share, look=base_look, unreadable=base_bad), adapters=rows,
                  passed=bool(rows) and all(r["passed"] for r in rows))
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"| model | prompt | modal-look share | modal look | unreadable | iterations | pass |",
             "|---|---|---|---|---|---|---|",
             f"| base | {a.prompt} | {base_share:.3f} | {base_look} | {base_bad}/{a.images} | - | - |"]
    for r in rows:
        lines.append(f"| {r['adapter']} | {r['prompt']} | {r['share']:.3f} | {r['look']} | "
                     f"{r['unreadable']}/{a.images} | {r['iterations']} | {'yes' if r['passed'] else 'no'} |")
    lines.append(f"\nPass needs share >= 2 x base ({2 * base_share:.3f}) and >= 0.4 for every seed: "
                 f"{'PASS' if result['passed'] else 'FAIL'}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    save_image(make_grid(grid, row_labels=labels), out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
