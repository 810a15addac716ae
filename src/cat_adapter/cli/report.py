"""``cat-adapter report``: a side-by-side table (paper Table 1 layout) and plot of several evaluations."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="Tabulate and plot several evaluation folders, one row per label.",
        description="Runs with the same label are pooled: the table gives the mean of their scores and a 95% "
        "interval across runs (t_{0.975,n-1} * sd / sqrt(n)).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("evals", nargs="+", metavar="EVAL", help="Evaluation folders (each with metrics.json).")
    p.add_argument("--output", required=True, help="Folder for table.md, table.csv and scores.png.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing report folder.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cat_adapter.evaluation.report import report

    out = report(args.evals, output=args.output, overwrite=args.overwrite)
    print((Path(out) / "table.md").read_text().split("\n\n")[0])
    print(f"wrote {Path(out) / 'table.md'}, table.csv and scores.png")
    return 0
