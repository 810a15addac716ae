"""``cat-adapter memory``: the peak GPU memory of a training run, estimated from the model's configs (no weights)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.memory import MemoryOptions
    from cat_adapter.options import add_arguments

    p = sub.add_parser(
        "memory", help="Estimate a training run's peak GPU memory from the model's configs (no weights are read).",
        description="Builds the model from its configs on PyTorch's meta device (no memory, no download of weights), "
        "runs one LoRA, CAT fast and CAT lean step on it while counting what autograd keeps, and prints the peak per "
        "method beside the GPU sizes that hold it. How it counts and how it was fitted: docs/training.md "
        "(Memory) and docs/benchmarks.md.")
    add_arguments(p, MemoryOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cat_adapter.memory import MemoryOptions, as_json, estimate, table
    from cat_adapter.options import from_args

    o = from_args(MemoryOptions, args)
    est = estimate(o)
    print(as_json(est) if o.json else table(est))
    return 0
