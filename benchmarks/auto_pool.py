"""--preserve-pool auto on the toy world: leakage against LoRA and the hand-written pool, identity against CAT.

Reads a finished compare folder of ``benchmarks/plans/auto_pool.yaml``. Per concept (mean over seeds) and over all
(concept, seed) pairs (mean ± 95% interval of the paired differences). Targets: leakage below LoRA's on every
concept; identity within 0.02 of CAT's (no pool).

    python benchmarks/auto_pool.py runs/auto_pool        # -> benchmarks/results/auto_pool.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95

VARIANTS = ("lora", "cat", "cat_pool", "cat_autopool")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "auto_pool")
    a = p.parse_args()
    runs: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for done in sorted((a.folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("seed") is not None and d["variant"] in VARIANTS:
            runs[(d["concept"], d["seed"])][d["variant"]] = json.loads((done.parent / d["metrics"]).read_text())
    pairs = sorted(k for k, v in runs.items() if all(x in v for x in VARIANTS))
    concepts = sorted({c for c, _ in pairs})

    def diff(key: str, a_: str, b_: str, sel) -> list[float]:
        return [runs[k][a_][key] - runs[k][b_][key] for k in sel]

    per = {}
    lines = ["| concept | leakage: LoRA | CAT | CAT + hand pool | CAT + auto pool | auto < LoRA | identity: CAT | "
             "auto (Δ) |", "|---|---|---|---|---|---|---|---|"]
    for c in concepts:
        sel = [k for k in pairs if k[0] == c]
        leak = {v: statistics.fmean(runs[k][v]["leakage"] for k in sel) for v in VARIANTS}
        ident = {v: statistics.fmean(runs[k][v]["identity_score"] for k in sel) for v in VARIANTS}
        per[c] = {"leakage": leak, "identity_score": ident, "seeds": len(sel)}
        lines.append(f"| {c} | {leak['lora']:.3f} | {leak['cat']:.3f} | {leak['cat_pool']:.3f} | "
                     f"{leak['cat_autopool']:.3f} | {'yes' if leak['cat_autopool'] < leak['lora'] else 'NO'} | "
                     f"{ident['cat']:.3f} | {ident['cat_autopool']:.3f} ({ident['cat_autopool'] - ident['cat']:+.3f}) |")
    paired = {f"{key} {x} - {y}": mean_ci95(diff(key, x, y, pairs))
              for key, x, y in (("leakage", "cat_autopool", "lora"), ("leakage", "cat_autopool", "cat_pool"),
                                ("leakage", "cat_autopool", "cat"), ("identity_score", "cat_autopool", "cat"),
                                ("identity_score", "cat_autopool", "cat_pool"), ("kps", "cat_autopool", "cat"),
                                ("base_fidelity", "cat_autopool", "cat"), ("prompt_score", "cat_autopool", "cat"))}
    lines += ["", f"Paired over {len(pairs)} (concept, seed) pairs, mean ± 95% interval:", "",
              "| difference | value |", "|---|---|"]
    lines += [f"| {k} | {m:+.3f} ± {h:.3f} |" for k, (m, h) in paired.items()]
    result = {"folder": str(a.folder), "pairs": [list(k) for k in pairs], "per_concept": per,
              "paired": {k: list(v) for k, v in paired.items()},
              "leakage_below_lora_every_concept": all(per[c]["leakage"]["cat_autopool"] < per[c]["leakage"]["lora"]
                                                      for c in concepts),
              "identity_within_0_02_of_cat_every_concept": all(
                  per[c]["identity_score"]["cat_autopool"] >= per[c]["identity_score"]["cat"] - 0.02 for c in concepts)}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"leakage below LoRA on every concept: {result['leakage_below_lora_every_concept']}; identity at most 0.02 "
          f"below CAT's on every concept: {result['identity_within_0_02_of_cat_every_concept']}")
    print(f"wrote {a.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
