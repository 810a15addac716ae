"""The preservation family side by side on the shapes world (the preservation-monitor issue, point 4).

Reads a finished compare folder of ``benchmarks/plans/preservation_family.yaml`` (9 variants x 5 concepts x 3 seeds,
identical settings) and writes, per variant, the mean ± 95% interval over (concept, seed) of base fidelity, class
diversity, the concept rates (trigger, class, control), leakage, identity, KPS, drift, the monitor's final class
drift and step time, and every variant's paired difference against CAT on the same (concept, seed); plus one figure
(identity against base fidelity, one point per variant with its intervals).

    python benchmarks/preservation_family.py runs/preservation_family   # -> benchmarks/results/preservation_family.*
(the numbers in docs/benchmarks.md came from runs/preservation_family_v2: the first 8 variants' jobs copied from the
first run of the plan, then dco_same_lr added to the plan and run in the same folder)
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95

KEYS = ("base_fidelity", "class_diversity", "concept_rate_trigger", "concept_rate_class", "concept_rate_control",
        "leakage", "identity_score", "kps", "drift_plain", "class_drift_final", "step_s")
ORDER = ("lora", "cat", "cat_class", "cat_empty", "lora_prior", "cat_pool", "cat_auto", "dco_same_lr", "dco")
LABELS = {"lora": "LoRA", "cat": "CAT, y = trigger removed (paper)", "cat_class": "CAT, y = class word (DOP)",
          "cat_empty": "CAT, y = empty (BPP)", "lora_prior": "LoRA + prior preservation",
          "cat_pool": "CAT + automatic pool", "cat_auto": "constrained CAT (target 3e-4)",
          "dco_same_lr": "DCO (lr 1e-3, as the others)", "dco": "DCO at lr 2e-6 (scaled by 2 / beta)"}


def load_jobs(folder: Path) -> dict[tuple[str, str, int], dict]:
    jobs = {}
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("seed") is None:
            continue
        m = json.loads((done.parent / d["metrics"]).read_text())
        row = {k: m.get(k) for k in KEYS}
        row["step_s"] = d.get("step_s")
        monitor = done.parent / "train" / "validation.csv"
        if monitor.is_file():
            with open(monitor, newline="") as f:
                rows = list(csv.DictReader(f))
            row["class_drift_final"] = float(rows[-1]["class_drift"]) if rows else None
        jobs[(d["concept"], d["variant"], int(d["seed"]))] = row
    return jobs


def fmt(mean, half, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "preservation_family")
    a = p.parse_args()
    jobs = load_jobs(a.folder)
    pairs = sorted({(c, s) for c, _, s in jobs})
    variants = [v for v in ORDER if any(k[1] == v for k in jobs)]
    rows = {v: {k: mean_ci95([jobs[(c, v, s)][k] for c, s in pairs if (c, v, s) in jobs
                              and jobs[(c, v, s)][k] is not None]) for k in KEYS} for v in variants}
    paired = {v: {k: mean_ci95([jobs[(c, v, s)][k] - jobs[(c, "cat", s)][k] for c, s in pairs
                                if (c, v, s) in jobs and (c, "cat", s) in jobs and jobs[(c, v, s)][k] is not None
                                and jobs[(c, "cat", s)][k] is not None]) for k in KEYS}
              for v in variants if v != "cat"}
    digits = {"drift_plain": 5, "class_drift_final": 5, "step_s": 3, "concept_rate_trigger": 2,
              "concept_rate_class": 2, "concept_rate_control": 2}
    cols = ("base_fidelity", "class_diversity", "concept_rate_trigger", "concept_rate_class", "concept_rate_control",
            "leakage", "identity_score", "kps", "drift_plain", "class_drift_final", "step_s")
    head = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines = head + [f"| {LABELS.get(v, v)} | " + " | ".join(fmt(*rows[v][k], digits.get(k, 3)) for k in cols) + " |"
                    for v in variants]
    lines += ["", "Paired against CAT (y = trigger removed) on the same (concept, seed): variant - CAT.", ""] + head
    lines += [f"| {LABELS.get(v, v)} | " + " | ".join(fmt(*paired[v][k], digits.get(k, 3)) for k in cols) + " |"
              for v in paired]
    text = "\n".join(lines)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps({"folder": str(a.folder), "pairs": [list(x) for x in pairs],
                                                         "variants": rows, "paired_vs_cat": paired}, indent=1))
    a.output.with_suffix(".md").write_text(f"Mean ± 95% interval over {len(pairs)} (concept, seed) pairs "
                                           f"({a.folder}); drift_plain: the evaluation's drift on the trigger-removed and "
                                           f"control prompts (the same prompts for every variant); class_drift_final: "
                                           f"the preservation monitor's last row, on each run's own y (so not "
                                           f"comparable between variants with another y); step_s: seconds per "
                                           f"training step.\n\n{text}\n")
    figure(rows, variants, a.output.with_suffix(".png"))
    print(text)


def figure(rows: dict, variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (x, y, xl, yl) in zip(axes, (("base_fidelity", "concept_rate_trigger", "base fidelity (higher keeps the "
                                          "base)", "concept rate on the trigger prompt (learned)"),
                                         ("drift_plain", "identity_score", "drift on trigger-free and control "
                                          "prompts (lower keeps the base)", "identity score (CLIP)"))):
        for v in variants:
            (mx, hx), (my, hy) = rows[v][x], rows[v][y]
            if mx is None or my is None:
                continue
            ax.errorbar(mx, my, xerr=hx or 0, yerr=hy or 0, fmt="o", capsize=3, label=LABELS.get(v, v))
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.grid(alpha=0.3)
        if x == "drift_plain":
            ax.set_xscale("log")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("The preservation family on the shapes world (5 concepts x 3 seeds, mean ± 95% interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
