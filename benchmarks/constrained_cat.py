"""Constrained CAT (--cat-alpha auto) on the toy world: does the term settle at its target, and what does it cost?

--targets DIR: a finished compare folder of ``benchmarks/plans/constrained_targets.yaml``. For every constrained
job, the mean preservation term over the last 20% of its steps (from train/log.jsonl) against its target, and the
final alpha; beside them the alpha-0 jobs' term (the constraint binds when every target is below it).
Acceptance: each mean within a factor of 1.5 of its target.

--sweep DIR: a finished compare folder of ``benchmarks/plans/alpha_sweep.yaml``, whose cat_auto variant targets the
fixed alpha-1 runs' last-20% term. Paired by seed: identity score and concept rate of cat_auto minus alpha 1.
Acceptance: identity at most 0.02 below, concept rate at most 0.05 below.

    python benchmarks/constrained_cat.py --targets runs/constrained_targets --sweep runs/alpha_sweep2
    # -> benchmarks/results/constrained_cat.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95


def tail_term(train: Path, share: float = 0.2) -> tuple[float, float]:
    """(mean preservation term over the last ``share`` of steps, final alpha) of a run's log.jsonl."""
    log = [json.loads(ln) for ln in (train / "log.jsonl").read_text().splitlines() if ln.strip()]
    tail = [r["loss_preservation"] for r in log[int(len(log) * (1 - share)):] if r.get("loss_preservation") is not None]
    return statistics.fmean(tail), log[-1].get("cat_alpha")


def finished(folder: Path):
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("seed") is not None:
            yield d, done.parent


def targets(folder: Path) -> tuple[list[dict], list[str]]:
    rows = []
    for d, job in finished(folder):
        term, alpha = tail_term(job / "train")
        target = d["options"].get("preservation_target")
        rows.append({"job": d["job"], "seed": d["seed"], "target": target, "term": term,
                     "ratio": term / target if target else None, "alpha": alpha,
                     "within_1_5x": None if not target else 1 / 1.5 <= term / target <= 1.5})
    rows.sort(key=lambda r: (-(r["target"] or 1.0), r["seed"]))
    lines = ["| run | seed | target | last-20% term | term / target | final alpha |", "|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:.0e}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {'alpha 0' if r['target'] is None else 'auto'} | {r['seed']} | {target} | {r['term']:.2e} | "
                     f"{ratio} | {r['alpha']:.2f} |")
    return rows, lines


def sweep(folder: Path) -> tuple[dict, list[str]]:
    runs = {}
    for d, job in finished(folder):
        m = json.loads((job / d["metrics"]).read_text())
        term, alpha = tail_term(job / "train")
        runs[(d["variant"], d["seed"])] = {"identity_score": m["identity_score"], "kps": m["kps"],
                                           "concept_rate_trigger": m.get("concept_rate_trigger"),
                                           "base_fidelity": m["base_fidelity"], "term": term, "alpha": alpha}
    seeds = sorted({s for v, s in runs if v == "cat_auto" and ("cat-cat_alpha=1.0", s) in runs})
    out = {"seeds": seeds}
    lines = ["| seed | alpha-1 term | auto term | auto final alpha | Δ identity (auto - alpha 1) | Δ concept rate | Δ KPS |",
             "|---|---|---|---|---|---|---|"]
    for key in ("identity_score", "concept_rate_trigger", "kps", "base_fidelity"):
        out[f"d_{key}"] = [runs[("cat_auto", s)][key] - runs[("cat-cat_alpha=1.0", s)][key] for s in seeds]
        out[f"d_{key}_mean_ci95"] = mean_ci95(out[f"d_{key}"])
    for i, s in enumerate(seeds):
        fixed, auto = runs[("cat-cat_alpha=1.0", s)], runs[("cat_auto", s)]
        lines.append(f"| {s} | {fixed['term']:.2e} | {auto['term']:.2e} | {auto['alpha']:.2f} | "
                     f"{out['d_identity_score'][i]:+.3f} | {out['d_concept_rate_trigger'][i]:+.3f} | {out['d_kps'][i]:+.3f} |")
    out["runs"] = {f"{v}/seed{s}": r for (v, s), r in runs.items()}
    out["identity_ok"] = all(x >= -0.02 for x in out["d_identity_score"])
    out["concept_rate_ok"] = all(x >= -0.05 for x in out["d_concept_rate_trigger"])
    return out, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=Path)
    p.add_argument("--sweep", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "constrained_cat")
    a = p.parse_args()
    result, md = {}, []
    if a.targets:
        rows, lines = targets(a.targets)
        result["targets"] = rows
        md += ["## Targets (last 20% of 250 steps)", "", *lines, ""]
    if a.sweep:
        out, lines = sweep(a.sweep)
        result["sweep"] = out
        md += ["## Against fixed alpha 1 (target = its last-20% term)", "", *lines, "",
               f"identity within 0.02 on every seed: {out['identity_ok']}; concept rate within 0.05: "
               f"{out['concept_rate_ok']}", ""]
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.output.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {a.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
