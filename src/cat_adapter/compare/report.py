"""The compare report, regenerated from the job folders alone (``DIR/jobs/*/done.json`` and their evaluations).

- ``table1.md`` / ``table1.csv``: the paper's Table 1 layout (PS, IS, KPS) plus our columns, one row per variant
  (and ``base``), mean ± 95% interval over concepts x seeds; per-concept tables below it (``table1_by_concept.csv``).
- ``paired.md`` / ``paired.csv``: differences against the reference variant per (concept, seed), with intervals.
- ``profile.md`` / ``profile.csv`` / ``profile.png``: training and inference time and peak memory (Fig. 5).
- for variants expanded from a ``cat_alpha`` list: ``alpha_sweep.png`` (PS and KPS against alpha, Fig. 8) and
  ``alpha_grid_class.png`` / ``alpha_grid_trigger.png`` (rows alpha, columns seeds, Fig. 7).
- ``grid_trigger.png`` / ``grid_class.png`` per concept: base and every variant from the same seeds.
- ``groups.md`` for multi-concept groups: each variant's confusion matrix (mean over seeds) and per-member scores;
  a group's rows in table1 are the means over its members.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95
from cat_adapter.evaluation.report import csv_text, markdown_table, table_notes, table_rows
from cat_adapter.io import atomic_dir, write_text_atomic

PAPER_COLUMNS = ("prompt_score", "identity_score", "kps")
OUR_COLUMNS = ("identity_score_first_cluster", "base_fidelity", "class_diversity", "leakage", "drift_plain",
               "concept_rate_trigger", "concept_rate_class", "concept_rate_control")
DREAMBENCH_COLUMNS = ("dino_identity", "clip_i", "clip_t")   # DreamBench's metrics (dino_identity with --dino)
PROFILE_COLUMNS = ("train_s", "step_s", "peak_mem_mb", "infer_s_per_image", "infer_peak_mem_mb", "generation_s")
PAIRED_COLUMNS = ("prompt_score", "identity_score", "kps", "base_fidelity", "leakage", "concept_rate_trigger",
                  "concept_rate_class")


def load_jobs(out: Path) -> tuple[dict, list[dict]]:
    """The saved plan and every finished job's record with its metrics (flat: one value per column)."""
    plan = json.loads((out / "plan.json").read_text())["plan"]
    runs = []
    for done in sorted((out / "jobs").glob("*/done.json")):
        rec = json.loads(done.read_text())
        metrics = json.loads((done.parent / rec["metrics"]).read_text())
        row = {**rec, "folder": done.parent}
        for c in PAPER_COLUMNS + OUR_COLUMNS + DREAMBENCH_COLUMNS:
            row[c] = metrics.get(c)
        if rec.get("identity_reference") == "first_cluster":  # a prompt-only concept: no reference images
            row["identity_score_first_cluster"], row["identity_score"] = row["identity_score"], None
        if rec.get("concept_kind") == "group":  # its own rows: the means over the group's members
            row["variant"] = group_label(rec["variant"], rec["concept"])
        runs.append(row)
    return plan, runs


def group_label(variant: str, group: str) -> str:
    """A multi-concept group's row label: one adapter for the group's concepts, means over its members."""
    return f"{variant} [{group}]"


def _order(plan: dict, runs: list[dict]) -> list[str]:
    names = ["base"] + [v["name"] for v in plan["variants"]]
    groups = [c["name"] for c in plan["concepts"] if c.get("kind") == "group"]
    names += [group_label(v["name"], g) for g in groups for v in plan["variants"]]
    return [n for n in names if any(r["variant"] == n for r in runs)]


def _columns(runs: list[dict], candidates) -> list[str]:
    return [c for c in candidates if any(r.get(c) is not None for r in runs)]


def _rows(runs: list[dict], order: list[str], cols: list[str]) -> tuple[list[dict], bool]:
    labelled = [{**r, "label": r["variant"]} for n in order for r in runs if r["variant"] == n]
    _, rows, pooled = table_rows(labelled, cols)
    return rows, pooled


def write_report(out: Path) -> Path:
    out = Path(out)
    plan, runs = load_jobs(out)
    with atomic_dir(out / "report") as tmp:
        if runs:
            order = _order(plan, runs)
            _table1(tmp, plan, runs, order)
            _paired(tmp, plan, runs, order)
            _profile(tmp, runs, order)
            _sweep(tmp, plan, runs)
            _grids(tmp, plan, [r for r in runs if r.get("concept_kind") != "group"], order)
            _groups(tmp, [r for r in runs if r.get("concept_kind") == "group"], order)
        else:
            write_text_atomic(tmp / "table1.md", "No job has finished yet.\n")
    return out / "report"


def _table1(tmp: Path, plan: dict, runs: list[dict], order: list[str]) -> None:
    cols = _columns(runs, PAPER_COLUMNS + OUR_COLUMNS + DREAMBENCH_COLUMNS)
    rows, pooled = _rows(runs, order, cols)
    write_text_atomic(tmp / "table1.csv", csv_text("variant", cols, rows, pooled))
    concepts = list(dict.fromkeys(r["concept"] for r in runs))
    md = [f"# Table 1: {len(concepts)} concept(s) x seeds {plan['seeds']}", "",
          "Mean over concepts x training seeds (base: over concepts), ± the 95% interval half-width.", ""]
    md += markdown_table("variant", cols, rows, pooled) + [""] + table_notes(cols, rows, pooled)
    if any(r.get("identity_score_first_cluster") is not None for r in runs):
        md.append("identity_score_first_cluster: tco on a prompt-only concept, scored against the images of its first "
                  "iteration's chosen cluster (it has no reference images).")
    by_concept = io.StringIO()
    header_written = False
    for name in concepts:
        sub = [r for r in runs if r["concept"] == name]
        rows_c, pooled_c = _rows(sub, [n for n in order if any(r["variant"] == n for r in sub)], cols)
        md += ["", f"## {name}", ""] + markdown_table("variant", cols, rows_c, pooled_c)
        text = csv_text("variant", cols, rows_c, True)
        lines = text.splitlines()
        if not header_written:
            by_concept.write("concept," + lines[0] + "\n")
            header_written = True
        for line in lines[1:]:
            by_concept.write(f"{name},{line}\n")
    write_text_atomic(tmp / "table1.md", "\n".join(md) + "\n")
    write_text_atomic(tmp / "table1_by_concept.csv", by_concept.getvalue())


def _paired(tmp: Path, plan: dict, runs: list[dict], order: list[str]) -> None:
    ref = plan.get("reference", "lora")

    def ref_of(r: dict) -> str:  # a group's rows pair with the reference variant's adapter for the same group
        return group_label(ref, r["concept"]) if r.get("concept_kind") == "group" else ref

    refs = {(r["concept"], r["seed"]): r for r in runs if r["variant"] == ref_of(r)}
    if not refs:
        write_text_atomic(tmp / "paired.md", f"No finished job of the reference variant {ref!r}: no paired differences.\n")
        return
    cols = _columns(runs, PAIRED_COLUMNS)
    out_rows = []
    for name in order:
        if name == "base" or any(r["variant"] == name and name == ref_of(r) for r in runs):
            continue
        row: dict = {"variant": name}
        for c in cols:
            diffs = [r[c] - refs[(r["concept"], r["seed"])][c] for r in runs
                     if r["variant"] == name and (r["concept"], r["seed"]) in refs
                     and r.get(c) is not None and refs[(r["concept"], r["seed"])].get(c) is not None]
            mean, half = mean_ci95(diffs)
            row[c], row[f"{c}_ci95"], row[f"{c}_n"] = mean, half, len(diffs)
        out_rows.append(row)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["variant"] + [x for c in cols for x in (c, f"{c}_ci95", f"{c}_n")]
    w.writerow(header)
    for row in out_rows:
        w.writerow(["" if row.get(h) is None else row[h] for h in header])
    write_text_atomic(tmp / "paired.csv", buf.getvalue())
    md = [f"# Paired differences: variant - {ref}, per (concept, seed)", "",
          "Each difference pairs two runs on the same concept and training seed; the mean ± 95% interval is over "
          "those pairs (n), so the spread between concepts does not hide the effect.", "",
          "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in out_rows:
        cells = ["" if row[c] is None else f"{row[c]:+.4f}" + (f" ± {row[c + '_ci95']:.4f}" if row[c + "_ci95"] is not None
                                                               else "") + f" (n={row[c + '_n']})" for c in cols]
        md.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    write_text_atomic(tmp / "paired.md", "\n".join(md) + "\n")


def _profile(tmp: Path, runs: list[dict], order: list[str]) -> None:
    rows = []
    for name in order:
        sub = [r for r in runs if r["variant"] == name]
        row: dict = {"variant": name, "jobs": len(sub)}
        for c in PROFILE_COLUMNS:
            row[c], row[f"{c}_ci95"] = mean_ci95([r.get(c) for r in sub])
        rows.append(row)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("variant",) + PROFILE_COLUMNS + ("jobs",))
    for row in rows:
        w.writerow([row["variant"]] + ["" if row[c] is None else round(row[c], 4) for c in PROFILE_COLUMNS] + [row["jobs"]])
    write_text_atomic(tmp / "profile.csv", buf.getvalue())
    md = ["# Resource profile (Fig. 5)", "",
          "train_s: wall time of training (class-image / TCO generation included, as the paper counts it); step_s: "
          "median seconds per optimizer step; peak_mem_mb: peak memory above the loaded model during training (CUDA: "
          "max_memory_allocated; CPU: peak RSS, high-water mark reset per job); infer_*: per evaluation image and "
          "peak above the loaded models while generating; generation_s: class images (dreambooth) or TCO's images.",
          "", "| variant | " + " | ".join(PROFILE_COLUMNS) + " | jobs |", "|---" * (len(PROFILE_COLUMNS) + 2) + "|"]
    for row in rows:
        md.append(f"| {row['variant']} | " + " | ".join("" if row[c] is None else f"{row[c]:.4g}" for c in PROFILE_COLUMNS)
                  + f" | {row['jobs']} |")
    write_text_atomic(tmp / "profile.md", "\n".join(md) + "\n")
    _plot_profile(tmp / "profile.png", [r for r in rows if r["variant"] != "base"])


def _plot_profile(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (x, y, title) in zip(axes, (("train_s", "peak_mem_mb", "training"),
                                        ("infer_s_per_image", "infer_peak_mem_mb", "inference"))):
        for r in rows:
            if r[x] is None or r[y] is None:
                continue
            ax.errorbar(r[x], r[y], xerr=r.get(f"{x}_ci95") or 0, yerr=r.get(f"{y}_ci95") or 0, fmt="o", capsize=3)
            ax.annotate(r["variant"], (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("seconds" + (" per image" if x.startswith("infer") else ""))
        ax.set_ylabel("peak memory above the model (MB)")
        ax.set_title(title)
    fig.suptitle("time against peak memory per variant (Fig. 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sweep(tmp: Path, plan: dict, runs: list[dict]) -> None:
    """Fig. 8 (PS and KPS against alpha) and Fig. 7 (image grids) for variants expanded from a cat_alpha list."""
    swept = [r for r in runs if (r.get("sweep") or {}).get("key") == "cat_alpha"
             and not isinstance(r["sweep"]["value"], str)]   # a constrained 'auto' has no place on the alpha axis
    if not swept:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["sweep"]["group"] for r in swept))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in zip(axes, ("prompt_score", "kps"), ("Prompt Score", "KPS")):
        for g in groups:
            alphas = sorted({float(r["sweep"]["value"]) for r in swept if r["sweep"]["group"] == g})
            stats = [mean_ci95([r.get(metric) for r in swept if r["sweep"]["group"] == g
                                and float(r["sweep"]["value"]) == a]) for a in alphas]
            ax.errorbar(alphas, [m for m, _ in stats], yerr=[h or 0 for _, h in stats], marker="o", capsize=3, label=g)
        ax.set_xlabel("CAT alpha")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("CAT factor sweep (Fig. 8): mean ± 95% interval over concepts x seeds")
    fig.tight_layout()
    fig.savefig(tmp / "alpha_sweep.png", dpi=100)
    plt.close(fig)
    concept = swept[0]["concept"]
    group = swept[0]["sweep"]["group"]
    sel = [r for r in swept if r["concept"] == concept and r["sweep"]["group"] == group]
    alphas = sorted({float(r["sweep"]["value"]) for r in sel})
    seeds = sorted({r["seed"] for r in sel})
    for kind in ("class", "trigger"):
        rows, labels = [], []
        for a in alphas:
            row = []
            for s in seeds:
                r = next((x for x in sel if float(x["sweep"]["value"]) == a and x["seed"] == s), None)
                img = _first_image(r["folder"] / "eval", kind) if r else None
                if img is not None:
                    row.append(img)
            if row:
                rows.append(row)
                labels.append(f"alpha {a:g}")
        if rows:
            _save_grid(tmp / f"alpha_grid_{kind}.png", rows, labels, [f"seed {s}" for s in seeds])


def _first_row(eval_dir: Path):
    """The evaluation's first held-out trigger prompt at its first seed (else its first caption)."""
    from cat_adapter.evaluation.manifest import read_manifest

    rows = [r for r in read_manifest(eval_dir / "manifest.csv") if r.group != "control"]
    held = [r for r in rows if r.group == "heldout"] or rows
    return min(held, key=lambda r: (r.seed, str(r.prompt_trigger))) if held else None


def _first_image(eval_dir: Path, kind: str):
    from PIL import Image

    row = _first_row(eval_dir)
    if row is None:
        return None
    path = row.image_trigger if kind == "trigger" else row.image_plain
    return Image.open(path).convert("RGB") if path is not None else None


def _save_grid(path: Path, rows, labels, cols) -> None:
    from cat_adapter.sampling import make_grid, save_image

    save_image(make_grid(rows, row_labels=labels, col_labels=cols, min_cell=96), path)


def _grids(tmp: Path, plan: dict, runs: list[dict], order: list[str]) -> None:
    """Per concept: base and each variant (first training seed) on one trigger prompt and its class prompt, columns
    the evaluation seeds (``grid_trigger.png`` / ``grid_class.png``; a concept prefix when there are several)."""
    from PIL import Image

    from cat_adapter.evaluation.manifest import read_manifest

    concepts = list(dict.fromkeys(r["concept"] for r in runs))
    for name in concepts:
        sub = {n: sorted((r for r in runs if r["concept"] == name and r["variant"] == n),
                         key=lambda r: (r["seed"] is not None, r["seed"] or 0)) for n in order}
        anchor = next((rs[0] for n, rs in sub.items() if rs and n != "base"), None)
        first = _first_row(anchor["folder"] / "eval") if anchor else None
        if first is None:
            continue
        prefix = "" if len(concepts) == 1 else f"{name}_"
        for kind in ("trigger", "class"):
            rows, labels = [], []
            for n, rs in sub.items():
                if not rs:
                    continue
                sel = sorted((r for r in read_manifest(rs[0]["folder"] / "eval" / "manifest.csv")
                              if r.prompt_trigger == first.prompt_trigger), key=lambda r: r.seed)
                paths = [(r.image_trigger if kind == "trigger" else r.image_plain) for r in sel]
                images = [Image.open(p).convert("RGB") for p in paths if p is not None]
                if images:
                    rows.append(images)
                    text = first.prompt_trigger if kind == "trigger" else first.prompt_plain
                    labels.append(f"{n}: '{text}'")
            if rows:
                _save_grid(tmp / f"{prefix}grid_{kind}.png", rows, labels,
                           [f"seed {k}" for k in range(max(len(r) for r in rows))])


def _groups(tmp: Path, runs: list[dict], order: list[str]) -> None:
    """``groups.md``: per group and variant, the confusion matrix (mean over seeds) and each member's scores."""
    if not runs:
        return
    import numpy as np

    lines = ["# Multi-concept groups", "",
             "Confusion: row = trigger prompts of concept i, column = concept j; concept_rate reads j's look from the "
             "pixels of i's trigger images (identity_score: CLIP cosine to j's references). Mean over seeds.", ""]
    for group in dict.fromkeys(r["concept"] for r in runs):
        for variant in order:
            sel = [r for r in runs if r["concept"] == group and r["variant"] == variant]
            if not sel:
                continue
            metrics = [json.loads((r["folder"] / r["metrics"]).read_text()) for r in sel]
            names, kind = metrics[0]["concepts"], metrics[0]["confusion"]["kind"]
            mats = np.array([[[np.nan if v is None else v for v in row] for row in m["confusion"]["matrix"]]
                             for m in metrics], dtype=float)
            mean = np.nanmean(mats, axis=0) if not np.all(np.isnan(mats)) else mats[0]
            lines += [f"## {variant} ({kind}, {len(sel)} seed{'s' * (len(sel) > 1)})", "",
                      "| trigger of | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join("n/a" if np.isnan(v) else f"{v:.3f}" for v in row) + " |"
                      for a, row in zip(names, mean)]
            keys = ("identity_score", "kps", "base_fidelity", "concept_rate_trigger", "concept_rate_class")
            lines += ["", "| member | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for n in names:
                vals = [[m["per_concept"][n].get(k) for m in metrics] for k in keys]
                cells = ["-" if any(v is None for v in vs) else f"{float(np.mean(vs)):.3f}" for vs in vals]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    write_text_atomic(tmp / "groups.md", "\n".join(lines) + "\n")
