"""Cheaper CAT steps on the toy world: how much of full CAT's effect --cat-every and --cat-fraction keep.

Reads a finished compare folder of ``benchmarks/plans/cheap_cat.yaml`` and pairs every variant with LoRA and full
CAT of the same (concept, seed). Retained effect = (drift_lora - drift_variant) / (drift_lora - drift_cat), where
drift_plain is the evaluation's mean squared difference between the adapted and base predictions on trigger-free
prompts; 1 keeps all of full CAT's reduction, 0 none. Mean ± 95% interval over the pairs, with base fidelity, KPS,
identity score and the mean training step time beside it (from log.jsonl; runs shared the machine two at a time:
compare them with benchmarks/cat_cost.py's side-by-side figures, not across machines).

    python benchmarks/cheap_cat.py runs/cheap_cat        # -> benchmarks/results/cheap_cat.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95


def load_jobs(folder: Path) -> dict[tuple[str, str, int], dict]:
    jobs = {}
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("variant") == "base" or d.get("seed") is None:
            continue
        m = json.loads((done.parent / d["metrics"]).read_text())
        log = [json.loads(ln) for ln in (done.parent / "train" / "log.jsonl").read_text().splitlines() if ln.strip()]
        d["step_s"] = sum(r["seconds"] for r in log) / len(log)   # the mean: a median hides --cat-every's CAT steps
        jobs[(d["concept"], d["variant"], int(d["seed"]))] = {**d, **{k: m.get(k) for k in (
            "drift_plain", "base_fidelity", "kps", "identity_score", "prompt_score", "concept_rate_trigger")}}
    return jobs


def fmt(mean, half, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "cheap_cat")
    a = p.parse_args()
    jobs = load_jobs(a.folder)
    pairs = sorted({(c, s) for c, _, s in jobs})
    variants = sorted({v for _, v, _ in jobs if v not in ("lora",)}, key=lambda v: (v != "cat", v))
    rows = {}
    for v in ["lora"] + variants:
        retained, d_fid, d_kps, d_id = [], [], [], []
        for c, s in pairs:
            lo, cat, x = jobs.get((c, "lora", s)), jobs.get((c, "cat", s)), jobs.get((c, v, s))
            if not (lo and cat and x):
                continue
            gap = lo["drift_plain"] - cat["drift_plain"]
            retained.append((lo["drift_plain"] - x["drift_plain"]) / gap if gap > 0 else None)
            d_fid.append(x["base_fidelity"] - cat["base_fidelity"])
            d_kps.append(x["kps"] - cat["kps"])
            d_id.append(x["identity_score"] - cat["identity_score"])
        mine = [jobs[(c, v, s)] for c, s in pairs if (c, v, s) in jobs]
        rows[v] = {"pairs": len(retained), "retained": mean_ci95(retained),
                   "drift_plain": mean_ci95([j["drift_plain"] for j in mine]),
                   "base_fidelity": mean_ci95([j["base_fidelity"] for j in mine]),
                   "kps": mean_ci95([j["kps"] for j in mine]), "identity_score": mean_ci95([j["identity_score"] for j in mine]),
                   "d_base_fidelity_vs_cat": mean_ci95(d_fid), "d_kps_vs_cat": mean_ci95(d_kps),
                   "d_identity_vs_cat": mean_ci95(d_id),
                   "step_s": mean_ci95([j["step_s"] for j in mine])}
    lines = ["| variant | retained drift reduction | drift_plain | base fidelity | KPS | identity | "
             "Δ identity vs CAT | mean step s (shared machine) |", "|---|---|---|---|---|---|---|---|"]
    for v, r in rows.items():
        lines.append(f"| {v} | {fmt(*r['retained'], 2)} | {fmt(*r['drift_plain'], 4)} | {fmt(*r['base_fidelity'])} | "
                     f"{fmt(*r['kps'])} | {fmt(*r['identity_score'])} | {fmt(*r['d_identity_vs_cat'])} | "
                     f"{fmt(*r['step_s'], 3)} |")
    table = "\n".join(lines)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps({"folder": str(a.folder), "pairs": [list(x) for x in pairs],
                                                         "variants": rows}, indent=1))
    a.output.with_suffix(".md").write_text(f"Mean ± 95% interval over {len(pairs)} (concept, seed) pairs; "
                                           f"retained = (drift_lora - drift_variant) / (drift_lora - drift_cat).\n\n"
                                           + table + "\n")
    print(table)
    print(f"wrote {a.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
