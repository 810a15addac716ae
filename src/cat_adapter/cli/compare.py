"""``cat-adapter compare``: run a plan of concepts x method variants x seeds, then its report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Run concepts x method variants x seeds as resumable jobs and report them (Table 1, Fig. 5, Fig. 7/8).",
        description="Each (concept, variant, seed) is a job folder under OUTPUT/jobs (train, evaluate, done.json "
                    "last), plus one base-model evaluation per concept. A rerun skips done jobs and resumes "
                    "unfinished ones; --shard I/N runs every N-th job so several processes, GPUs or machines share a "
                    "plan (a lock per job keeps them apart). The report (OUTPUT/report) is rebuilt from the job "
                    "folders after every call. Plan format: see the README or cat_adapter/compare/plan.py.")
    p.add_argument("--plan", default=None, help="Plan YAML (concepts, variants, seeds, shared, evaluation). Not needed "
                   "with --report-only.")
    p.add_argument("--output", required=True, help="Folder of the jobs and the report.")
    p.add_argument("--shard", default=None, metavar="I/N", help="Run jobs I, I+N, I+2N, ... of the sorted job ids "
                   "(1-based).")
    p.add_argument("--report-only", action="store_true", help="Only rebuild OUTPUT/report from the finished jobs.")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    p.add_argument("--progress", action="store_true", help="Show training progress bars.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cat_adapter.compare.plan import load_plan, parse_shard
    from cat_adapter.compare.report import write_report
    from cat_adapter.compare.run import MARKER, run_plan
    from cat_adapter.errors import CatAdapterError

    out = Path(args.output)
    which = parse_shard(args.shard)
    if args.report_only:
        if not (out / MARKER).is_file():
            raise CatAdapterError(f"--output {out}: no {MARKER}; nothing to report (run the plan first)")
        print(f"wrote {write_report(out)}")
        return 0
    if not args.plan:
        raise CatAdapterError("--plan is required (unless --report-only)")
    plan = load_plan(args.plan)
    result = run_plan(plan, out, which=which, cpu=args.cpu, progress=args.progress)
    print(f"compare: {result['ran']} job(s) run, {result['done_before']} already done, {result['locked']} left to "
          f"another process, of {result['jobs']}{' in shard ' + args.shard if args.shard else ''}; report in "
          f"{result['report']}")
    return 0
