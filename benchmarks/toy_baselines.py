"""Which settings make DreamBooth and Textual Inversion learn a shapes-world concept (the demo's toy settings).

The demo's concept ("a sks circle": blue, yellow stripes, black outline), the demo's training settings
(250 steps, batch 2, seed 0) and its evaluation (3 seeds per prompt, 20 sampling steps, guidance 4, toy CLIP,
the pixel-read concept_rate). Each (method, settings) of the grid is one training run and one evaluation;
the table gives concept_rate for the trigger prompts and for the class prompt, and base_fidelity.

    python benchmarks/toy_baselines.py                          # the default grid (about 10 min on 2 cores)
    python benchmarks/toy_baselines.py --grid ti:lr=0.05,num_vectors=4 dreambooth:lr=5e-4
Writes benchmarks/results/toy_baselines.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_GRID = ["lora:lr=1e-3", "dreambooth:lr=2e-4", "dreambooth:lr=5e-4", "dreambooth:lr=1e-3",
                "ti:lr=2e-2", "ti:lr=5e-2", "ti:lr=5e-2,num_vectors=4", "ti:lr=1e-1,num_vectors=4"]


def parse(entry: str) -> tuple[str, dict]:
    method, _, rest = entry.partition(":")
    kw: dict = {}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        kw[k] = int(v) if v.isdigit() else float(v)
    return method, kw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", nargs="+", default=DEFAULT_GRID, help="method:key=value,... entries")
    p.add_argument("--work", default="runs/toy_baselines", help="folder for the runs")
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "toy_baselines"))
    p.add_argument("--steps", type=int, default=250)
    a = p.parse_args()

    from cat_adapter.config import build_config
    from cat_adapter.evaluation.evaluate import EvalOptions, evaluate
    from cat_adapter.toy.concept import concept_look, validate_spec, write_concept
    from cat_adapter.evaluation.concept_rates import add_concept_rates
    from cat_adapter.toy.demo import DEFAULT_SPEC
    from cat_adapter.toy.concept import heldout_prompts
    from cat_adapter.toy.plugin import ShapesWorld
    from cat_adapter.toy.tuned import BASELINES
    from cat_adapter.runners import train

    work = Path(a.work)
    spec = validate_spec(dict(DEFAULT_SPEC), "built-in spec")
    look = concept_look(spec)
    concept = work / "concept"
    if not concept.is_dir():
        write_concept(spec, concept)
    heldout = work / "heldout.txt"
    heldout.write_text("\n".join(heldout_prompts(spec)) + "\n")
    common = dict(model="toy", data=str(concept), trigger=spec["trigger"], class_noun=spec["class_noun"],
                  caption_template="a {trigger} {class_noun}", resolution=spec["resolution"], steps=a.steps,
                  batch_size=2, seed=0, validation_every=0, overwrite=True)
    evaluation = dict(model="toy", data=str(concept), clip="toy", prompts=str(heldout), images_per_prompt=3,
                      sample_steps=20, guidance_scale=4.0, batch_size=16, overwrite=True)
    rows = []
    for entry in a.grid:
        method, kw = parse(entry)
        base = {"method": method, **BASELINES.get(method, {})}
        if method == "dreambooth":
            base["class_data"] = str(work / "class_images")
        settings = {**base, **kw}
        name = entry.replace(":", "_").replace(",", "_").replace("=", "")
        t0 = time.time()
        out = train(build_config(overrides={**common, **settings, "output": str(work / "train" / name)}), progress=False)
        seconds = time.time() - t0
        ev = evaluate(EvalOptions(adapter=str(out), output=str(work / "eval" / name), label=name, **evaluation))
        rates = add_concept_rates(ev, look, ShapesWorld())
        m = json.loads((ev / "metrics.json").read_text())
        row = {"entry": entry, "settings": settings, "train_seconds": round(seconds, 1), **rates,
               "base_fidelity": m.get("base_fidelity"), "identity_score": m.get("identity_score")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"steps": a.steps, "look": look, "rows": rows}, indent=1))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| run | concept_rate trigger | concept_rate class | base_fidelity | identity | train s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['entry']} | {fmt(r['concept_rate_trigger'])} | {fmt(r['concept_rate_class'])} | "
              f"{fmt(r['base_fidelity'])} | {fmt(r['identity_score'])} | {r['train_seconds']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
