"""``cat-adapter pick OUT``: the --save-every snapshot the preservation monitor ranks best."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.options import add_arguments
    from cat_adapter.training.monitor import PickOptions

    p = sub.add_parser(
        "pick", help="Pick the training snapshot with the best trigger fit whose class drift stays under a bound.",
        description="Ranks a run's --save-every snapshots (OUT/step-N, and the final weights) by the preservation "
        "monitor's validation.csv: the lowest trigger_fit among those whose class_drift is at most the bound "
        "(--max-class-drift, or half way between the snapshots' lowest and highest class_drift). Writes OUT/pick.json "
        "and prints the chosen folder, which sample and evaluate take as --adapter.")
    add_arguments(p, PickOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.options import from_args
    from cat_adapter.training.monitor import PickOptions, pick

    record = pick(from_args(PickOptions, args))
    print(f"bound: class_drift <= {record['bound']:.4g} ({record['bound_from']})")
    for c in record["candidates"]:
        mark = "*" if c["path"] == record["chosen"]["path"] else (" " if c["eligible"] else "x")
        print(f" {mark} step {c['step']:>6}  class_drift {c['class_drift']:.4g}  trigger_fit {c['trigger_fit']:.4g}  "
              f"{c['path']}")
    print(record["chosen"]["path"])
    return 0
