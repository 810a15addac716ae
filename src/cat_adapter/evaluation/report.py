"""Several evaluation folders -> the paper's Table 1 layout (table.md, table.csv) and a plot (scores.png).

Runs with the same label (several seeds or concepts of one method) are pooled: the table shows
the mean of the runs' own scores and, in ``*_ci95``, the half-width of its 95% interval across
runs, t_{0.975, n-1} * sd / sqrt(n).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.metrics import mean_ci95
from cat_adapter.evaluation.score import check_output
from cat_adapter.io import atomic_dir, write_text_atomic
from cat_adapter.options import opt

BASE_COLUMNS = ("prompt_score", "identity_score", "kps", "base_fidelity", "class_diversity", "base_class_diversity")
HELDOUT_COLUMNS = ("kps_heldout", "base_fidelity_heldout")
# Added by ``cat-adapter demo`` on the shapes world (read from pixels, not CLIP); shown where present.
DREAMBENCH_COLUMNS = ("dino_identity", "clip_i", "clip_t")
CONCEPT_COLUMNS = ("concept_rate_trigger", "concept_rate_class", "concept_rate_control")


def load_run(folder: str | Path) -> dict:
    """The metrics.json of an evaluation folder; errors name the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatAdapterError(f"report: {folder}: no such evaluation folder")
    f = folder / "metrics.json"
    if not f.is_file():
        raise CatAdapterError(f"report: {folder}: no metrics.json (run cat-adapter evaluate or score first)")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CatAdapterError(f"report: {f}: not valid JSON") from None
    if not isinstance(data, dict) or "kps" not in data:
        raise CatAdapterError(f"report: {f}: not a cat-adapter metrics.json (no kps)")
    data.setdefault("label", folder.resolve().name)
    return data


def value(metrics: dict, column: str) -> float | None:
    """A table column of one run: a pooled score, or ``<score>_heldout`` from the heldout group."""
    if column.endswith("_heldout"):
        return metrics.get("groups", {}).get("heldout", {}).get(column[: -len("_heldout")])
    return metrics.get(column)


def table_columns(runs: list[dict]) -> list[str]:
    cols = list(BASE_COLUMNS)
    if any(r.get("leakage") is not None for r in runs):
        cols.append("leakage")
    cols += [c for c in HELDOUT_COLUMNS + CONCEPT_COLUMNS + DREAMBENCH_COLUMNS
             if any(value(r, c) is not None for r in runs)]
    return cols


def table_rows(runs: list[dict], cols: list[str] | None = None) -> tuple[list[str], list[dict], bool]:
    """One row per label (first-seen order): mean across its runs, and ``<col>_ci95`` when pooled."""
    cols = cols if cols is not None else table_columns(runs)
    labels: dict[str, list[dict]] = {}
    for r in runs:
        labels.setdefault(str(r["label"]), []).append(r)
    pooled = any(len(v) > 1 for v in labels.values())
    rows = []
    for label, group in labels.items():
        row: dict = {"label": label, "runs": len(group)}
        for c in cols:
            values = [value(r, c) for r in group]
            mean, half = mean_ci95(values)
            row[c] = mean
            row[f"{c}_n"] = sum(v is not None for v in values)  # runs that measured this column
            if pooled:
                row[f"{c}_ci95"] = half
        rows.append(row)
    return cols, rows, pooled


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def csv_text(key: str, cols: list[str], rows: list[dict], pooled: bool) -> str:
    """One row per label: means, ``<col>_ci95`` when pooled, ``<col>_n`` where some runs lack the column, runs."""
    partial = [c for c in cols if any(r[f"{c}_n"] != r["runs"] for r in rows)]
    header = ([key] + cols + ([f"{c}_ci95" for c in cols] if pooled else []) + [f"{c}_n" for c in partial] + ["runs"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r["label"]] + ["" if r.get(h) is None else repr(r[h]) for h in header[1:-1]] + [r["runs"]])
    return buf.getvalue()


def markdown_table(key: str, cols: list[str], rows: list[dict], pooled: bool) -> list[str]:
    lines = [f"| {key} | " + " | ".join(cols) + " | runs |", "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        cells = [_fmt(r[c]) + (f" ± {_fmt(r[c + '_ci95'])}" if pooled and r.get(c + "_ci95") is not None else "")
                 + (f" (n={r[c + '_n']})" if 0 < r[c + "_n"] != r["runs"] else "") for c in cols]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['runs']} |")
    return lines


def table_notes(cols: list[str], rows: list[dict], pooled: bool) -> list[str]:
    partial = [c for c in cols if any(r[f"{c}_n"] != r["runs"] for r in rows)]
    lines = ["prompt_score: Eq. 5 (H of cos(text y, image I^{y_T})); identity_score: Eq. 7; kps: Eq. 9 "
              "(1 - H of cos(I^y, I^{y_T})); base_fidelity, class_diversity, leakage: ours (docs/evaluation.md)."]
    if any(c in CONCEPT_COLUMNS for c in cols):
        lines.append("concept_rate_*: share of images whose fill, pattern and outline match the concept's look, read "
                     "from pixels (shapes world only), for trigger prompts, class prompts (trigger removed) and "
                     "control prompts.")
    if partial:
        lines.append("(n=k): only k of the label's runs measured that column; the mean is over those.")
    if pooled:
        lines.append("± is the half-width of the 95% interval of the mean across a label's runs: "
                     "t_{0.975,n-1} * sd / sqrt(n) over the runs' own scores.")
    return lines


def write_tables(out: Path, cols: list[str], rows: list[dict], pooled: bool) -> None:
    write_text_atomic(out / "table.csv", csv_text("label", cols, rows, pooled))
    lines = markdown_table("label", cols, rows, pooled) + [""] + table_notes(cols, rows, pooled)
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")


def plot_scores(path: Path, cols: list[str], rows: list[dict], pooled: bool) -> None:
    """Grouped bars: one group per score, one bar per label, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cols) + 0.15 * len(cols) * len(rows) + 1.5), 4.0))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(cols))]
        ys = [r[c] if r[c] is not None else float("nan") for c in cols]  # NaN: no bar where not measured
        err = [r.get(f"{c}_ci95") or 0.0 for c in cols] if r["runs"] > 1 else None
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"{r['label']} (n={r['runs']})")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_ylabel("score")
    ax.set_title("CAT evaluation scores per label" + (" (mean ± 95% CI across runs)" if pooled else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class ReportOptions:
    """What ``cat-adapter report`` takes."""
    evals: list[str] = opt(positional=True, path="in", help="Evaluation folders (each with metrics.json).")
    output: str = opt(path="out", help="Folder for table.md, table.csv and scores.png.")
    overwrite: bool = opt(False, "Replace an existing report folder.")


def report(eval_dirs: list[str | Path], *, output: str | Path, overwrite: bool = False) -> Path:
    """Write ``table.md``, ``table.csv`` and ``scores.png`` for the given evaluation folders."""
    if not eval_dirs:
        raise CatAdapterError("report: give at least one evaluation folder")
    resolved = [Path(d).resolve() for d in eval_dirs]
    if len(set(resolved)) != len(resolved):
        raise CatAdapterError("report: an evaluation folder is given twice; it would be counted twice")
    runs = [load_run(d) for d in eval_dirs]
    out = check_output(output, overwrite=overwrite, markers=("table.md", "table.csv"), kind="a report folder")
    if any(out.resolve() == d for d in resolved):
        raise CatAdapterError(f"--output {out}: is one of the evaluation folders; choose another folder")
    cols, rows, pooled = table_rows(runs)
    with atomic_dir(out) as tmp:
        write_tables(tmp, cols, rows, pooled)
        plot_scores(tmp / "scores.png", cols, rows, pooled)
    return out
