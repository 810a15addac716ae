"""``cat-adapter report``: a side-by-side table (paper Table 1 layout) and plot of several evaluations."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.evaluation.report import ReportOptions
    from cat_adapter.options import add_arguments

    p = sub.add_parser(
        "report", help="Tabulate and plot several evaluation folders, one row per label.",
        description="Runs with the same label are pooled: the table gives the mean of their scores and a 95% "
        "interval across runs (t_{0.975,n-1} * sd / sqrt(n)).")
    add_arguments(p, ReportOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cat_adapter.evaluation.report import ReportOptions, report
    from cat_adapter.options import from_args

    o = from_args(ReportOptions, args)
    out = report(o.evals, output=o.output, overwrite=o.overwrite)
    print((Path(out) / "table.md").read_text().split("\n\n")[0])
    print(f"wrote {Path(out) / 'table.md'}, table.csv and scores.png")
    return 0
