"""``cat-adapter compare``: run a plan of concepts x method variants x seeds, then its report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from cat_adapter.compare.run import CompareOptions
    from cat_adapter.options import add_arguments

    p = sub.add_parser(
        "compare",
        help="Run concepts x method variants x seeds as resumable jobs and report them (Table 1, Fig. 5, Fig. 7/8).",
        description="Each (concept, variant, seed) is a job folder under OUTPUT/jobs (train, evaluate, done.json "
                    "last), plus one base-model evaluation per concept. A rerun skips done jobs and resumes "
                    "unfinished ones; --shard I/N runs every N-th job so several processes, GPUs or machines share a "
                    "plan (a lock per job keeps them apart). The report (OUTPUT/report) is rebuilt from the job "
                    "folders after every call. Plan format: docs/compare.md.")
    add_arguments(p, CompareOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cat_adapter.compare.plan import load_plan, parse_shard
    from cat_adapter.compare.report import write_report
    from cat_adapter.compare.run import MARKER, CompareOptions, run_plan
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.options import from_args

    o = from_args(CompareOptions, args)
    out = Path(o.output)
    which = parse_shard(o.shard)
    if o.report_only:
        if not (out / MARKER).is_file():
            raise CatAdapterError(f"--output {out}: no {MARKER}; nothing to report (run the plan first)")
        print(f"wrote {write_report(out)}")
        return 0
    if not o.plan:
        raise CatAdapterError("--plan is required (unless --report-only)")
    plan = load_plan(o.plan) if not o.dreambench else dreambench_plan(o.plan, o.dreambench, out)
    result = run_plan(plan, out, which=which, cpu=o.cpu, progress=o.progress)
    print(f"compare: {result['ran']} job(s) run, {result['done_before']} already done, {result['locked']} left to "
          f"another process, of {result['jobs']}{' in shard ' + o.shard if o.shard else ''}; report in "
          f"{result['report']}")
    return 0


def dreambench_plan(plan_file: str, dataset: str, out):
    """The plan of ``plan_file`` with its concepts from a DreamBench dataset folder (``compare --dreambench``)."""
    from pathlib import Path

    from cat_adapter.compare.dreambench import dreambench_concepts, read_dreambench
    from cat_adapter.compare.plan import plan_from_dict
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.io import read_yaml

    source = f"--plan {plan_file}"
    raw = read_yaml(plan_file, source)
    if not isinstance(raw, dict):
        raise CatAdapterError(f"{source}: expected a mapping")
    if "concepts" in raw:
        raise CatAdapterError(f"{source}: has concepts; with --dreambench the concepts are the dataset's subjects, "
                              "leave the key out")
    read_dreambench(dataset)   # every check before anything is written
    raw["concepts"] = dreambench_concepts(dataset, Path(out), trigger=str(raw.pop("trigger", "sks")))
    return plan_from_dict(raw, source=source, root=Path(plan_file).resolve().parent)
