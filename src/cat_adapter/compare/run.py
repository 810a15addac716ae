"""Run a compare plan: one folder per job (train, evaluate, ``done.json`` last), resumable and shardable.

``DIR/plan.json``       the checked plan (a rerun with another plan into the same folder is refused)
``DIR/concepts/NAME/``  spec concepts written by the model's world, with their held-out, control and pool prompts
``DIR/jobs/ID/``        train/ (the training output), eval/ (the evaluation), done.json (written last)
``DIR/locks/ID.lock``   created exclusively while a process runs the job (shards, parallel calls)
``DIR/report/``         tables and plots, regenerated from the job folders alone (``report.py``)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from dataclasses import dataclass

import cat_adapter
from cat_adapter.compare.plan import Concept, Job, Plan, fingerprint, jobs, shard, train_options
from cat_adapter.errors import CatAdapterError
from cat_adapter.io import acquire, release, write_json_atomic, write_text_atomic
from cat_adapter.methods import registry

from cat_adapter.options import opt

log = logging.getLogger(__name__)
MARKER = "plan.json"
DONE = "done.json"


@dataclass
class CompareOptions:
    """What ``cat-adapter compare`` takes."""
    plan: str | None = opt(None, "Plan YAML (concepts, variants, seeds, shared, evaluation; docs/compare.md). Not "
                           "needed with --report-only.", path="in")
    output: str = opt(path="out", help="Folder of the jobs and the report.")
    shard: str | None = opt(None, "I/N: run jobs I, I+N, I+2N, ... of the sorted job ids (1-based).")
    report_only: bool = opt(False, "Only rebuild OUTPUT/report from the finished jobs.")
    dreambench: str | None = opt(None, "A local copy of google/dreambooth's dataset/ folder (30 subject folders and "
                                 "prompts_and_classes.txt): the plan's concepts are its subjects, each evaluated on the "
                                 "25 prompts of its kind (object or live); the plan then has no concepts key "
                                 "(benchmarks/plans/dreambench.yaml).", path="in")
    cpu: bool = opt(False, "Run on the CPU even if a GPU is present.")
    progress: bool = opt(False, "Show training progress bars.")


# ------------------------------------------------------------------------------------------ set-up
def prepare_folder(plan: Plan, out: Path) -> None:
    """``out`` is new, empty, or holds this same plan; ``plan.json`` is written (identically by every shard)."""
    if out.exists() and not out.is_dir():
        raise CatAdapterError(f"--output {out}: is a file; give a folder")
    marker = out / MARKER
    # another shard writing the marker leaves only its temporary file (".plan.json.*.tmp"): not foreign content
    pending = (lambda e: (e.name.startswith(f".{MARKER}.") and e.name.endswith(".tmp"))
               or e.name == "dreambench")   # --dreambench's prompt files, written before the plan is read
    if out.is_dir() and any(not pending(e) for e in out.iterdir()):
        if not marker.is_file():
            raise CatAdapterError(f"--output {out}: not a compare folder (no {MARKER}); choose a new or empty folder")
        saved = json.loads(marker.read_text())
        if saved.get("fingerprint") != fingerprint(plan):
            raise CatAdapterError(f"--output {out}: holds the jobs of another plan ({saved.get('source')}); give a new "
                                  "folder, or the plan those jobs came from")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"source": plan.source, "fingerprint": fingerprint(plan), "plan": plan.to_dict(),
                               "package_version": cat_adapter.__version__})


def _publish_dir(tmp: Path, target: Path) -> None:
    """Rename a finished folder into place; if another process published it first, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise


def concept_inputs(plan: Plan, concept: Concept, out: Path) -> dict:
    """The concept folder and prompt files of a concept; spec concepts are written once by the model's world."""
    if concept.kind != "spec":
        return {"data": concept.data, "prompts": concept.prompts, "control_prompts": concept.control_prompts,
                "look": None, "world": None}
    from cat_adapter.plugins import world_for

    world = world_for(plan.shared["model"])
    folder = out / "concepts" / concept.name
    if not (folder / "data").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".data.", dir=folder))
        shutil.rmtree(tmp)
        world.write_concept(concept.spec, tmp)
        _publish_dir(tmp, folder / "data")
    prompts = world.concept_prompts(concept.spec)
    for name, lines in (("heldout.txt", prompts["heldout"]), ("control.txt", prompts["control"]),
                        ("pool.txt", prompts["pool"])):
        if not (folder / name).is_file():
            write_text_atomic(folder / name, "\n".join(lines) + "\n")
    return {"data": folder / "data", "prompts": concept.prompts or folder / "heldout.txt",
            "control_prompts": concept.control_prompts or folder / "control.txt", "pool": folder / "pool.txt",
            "look": world.concept_look(concept.spec), "world": world}


# ------------------------------------------------------------------------------------------ jobs
def run_plan(plan: Plan, out: Path, *, which: tuple[int, int] | None = None, cpu: bool = False,
             progress: bool = False) -> dict:
    """Run this shard's unfinished jobs (done jobs are skipped, locked ones left to their owner), then the report."""
    from cat_adapter.compare.report import write_report
    from cat_adapter.shared import shared_objects

    prepare_folder(plan, out)
    mine = shard(jobs(plan), which)
    counts = {"done_before": 0, "ran": 0, "locked": 0}
    with shared_objects():  # base models and embedders are read once per process
        for job in mine:
            folder = out / "jobs" / job.id
            if (folder / DONE).is_file():
                counts["done_before"] += 1
                continue
            lock = out / "locks" / f"{job.id}.lock"
            if not acquire(lock):
                counts["locked"] += 1
                print(f"compare: {job.id} is being run by another process; skipped", flush=True)
                continue
            try:
                if (folder / DONE).is_file():  # finished by another process between the check and the lock
                    counts["done_before"] += 1
                    continue
                print(f"compare: {job.id}", flush=True)
                run_job(plan, job, out, cpu=cpu, progress=progress)
                counts["ran"] += 1
            finally:
                release(lock)
    report = write_report(out)
    return {**counts, "jobs": len(mine), "report": str(report)}


def _eval_options(plan: Plan, concept: Concept, inputs: dict, *, data: Path, adapter: str | None, output: Path,
                  label: str, cpu: bool):
    from cat_adapter.evaluation.evaluate import EvalOptions

    e = dict(plan.evaluation)
    resolution = e.pop("resolution", None) or plan.shared.get("resolution")
    kwargs = dict(model=str(plan.shared["model"]), adapter=adapter, data=str(data), output=str(output), label=label,
                  trigger=concept.trigger, class_noun=concept.class_noun, resolution=resolution, cpu=cpu,
                  caption_template=concept.caption_template)
    prompts = e.pop("prompts", None) or inputs.get("prompts")
    controls = e.pop("control_prompts", None) or inputs.get("control_prompts")
    kwargs.update(prompts=str(prompts) if prompts else None, control_prompts=str(controls) if controls else None)
    kwargs.update(e)
    if "single_file_config" in plan.shared:
        kwargs["single_file_config"] = plan.shared["single_file_config"]
    return EvalOptions(**kwargs)


def run_job(plan: Plan, job: Job, out: Path, *, cpu: bool = False, progress: bool = False) -> dict:
    """Train (resuming a killed run), evaluate, add the concept's scorer columns, then ``done.json`` last."""
    from cat_adapter.evaluation.evaluate import evaluate

    concept = plan.concept(job.concept)
    if concept.kind == "group":
        return run_group_job(plan, job, out, cpu=cpu, progress=progress)
    inputs = concept_inputs(plan, concept, out)
    folder = out / "jobs" / job.id
    folder.mkdir(parents=True, exist_ok=True)
    record: dict = {"job": job.id, "concept": job.concept, "variant": job.variant or "base", "seed": job.seed,
                    "concept_kind": concept.kind}
    train_dir, eval_dir = folder / "train", folder / "eval"
    data = inputs["data"]
    if not job.is_base:
        variant = plan.variant(job.variant)
        opts = train_options(plan, concept, variant, job.seed, train_dir, data=data, pool=inputs.get("pool"))
        hold_out_controls(opts, [inputs.get("control_prompts")], folder)
        _train_job(opts, folder, out, cpu=cpu, progress=progress)
        record.update(method=variant.method, options=variant.options, sweep=variant.sweep,
                      **_train_profile(train_dir, folder))
        spec = registry.get_spec(variant.method)
        if concept.kind == "prompt" and spec.identity_reference:  # a method that made its own images (TCO)
            data = registry.identity_reference(spec)(train_dir)
            record["identity_reference"] = spec.identity_reference.split(":")[1]   # "first_cluster": report.py
    if not (eval_dir / "metrics.json").is_file():
        evaluate(_eval_options(plan, concept, inputs, data=data, adapter=None if job.is_base else str(train_dir),
                               output=eval_dir, label=record["variant"], cpu=cpu))
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    if inputs.get("look") is not None and "concept_rate_trigger" not in metrics:
        from cat_adapter.evaluation.concept_rates import add_concept_rates

        add_concept_rates(eval_dir, inputs["look"], inputs["world"])
    inference = metrics.get("inference") or {}
    record.update(infer_s_per_image=inference.get("seconds_per_image"),
                  infer_peak_mem_mb=inference.get("peak_memory_above_model_mb"), metrics="eval/metrics.json",
                  package_version=cat_adapter.__version__)
    write_json_atomic(folder / DONE, record)
    return record


def hold_out_controls(opts: dict, control_files: list, folder: Path) -> None:
    """Under ``preserve_pool: auto`` the evaluation's control prompts are left out of the pool (``FOLDER/pool_exclude.txt``
    as ``--preserve-pool-exclude``, with any file the variant names): leakage on a prompt the preservation term trained
    on would measure memorised preservation, not generalisation."""
    if opts.get("preserve_pool") != "auto":
        return
    from cat_adapter.data.concept import load_prompt_file

    files = [f for f in control_files if f] + ([opts["preserve_pool_exclude"]] if opts.get("preserve_pool_exclude") else [])
    if not files:
        return
    held = list(dict.fromkeys(p for f in files for p in load_prompt_file(f, "control_prompts")))
    path = folder / "pool_exclude.txt"
    write_text_atomic(path, "\n".join(held) + "\n")
    opts["preserve_pool_exclude"] = str(path.resolve())


def _train_job(opts: dict, folder: Path, out: Path, *, cpu: bool, progress: bool) -> None:
    """Train one job into ``folder/train`` unless done, resuming a killed run; its time in ``train_time.json``."""
    from cat_adapter.config import build_config
    from cat_adapter.runners import train

    train_dir = folder / "train"
    if cpu:
        opts["cpu"] = True
    opts.setdefault("cache_dir", str(out / "cache"))  # latents and prompt embeddings shared by the plan's jobs
    resumable = (train_dir / "config.yaml").is_file()
    opts.update(resume=resumable, overwrite=False)
    if not (train_dir / DONE).is_file():
        t0 = time.perf_counter()
        train(build_config(overrides=opts), progress=progress)
        write_json_atomic(folder / "train_time.json", {"seconds": round(time.perf_counter() - t0, 2),
                                                       "resumed": resumable})


def run_group_job(plan: Plan, job: Job, out: Path, *, cpu: bool = False, progress: bool = False) -> dict:
    """One adapter for a group's member concepts (``--concepts``), then every member evaluated with its own prompt
    files plus the confusion report (``evaluate_concepts``); ``eval/metrics.json`` holds the members' means."""
    from dataclasses import replace

    import yaml

    from cat_adapter.adapters import load_adapter
    from cat_adapter.evaluation.evaluate import evaluate_concepts

    group, variant = plan.concept(job.concept), plan.variant(job.variant)
    members = [plan.concept(m) for m in group.members]
    inputs = {m.name: concept_inputs(plan, m, out) for m in members}
    folder = out / "jobs" / job.id
    folder.mkdir(parents=True, exist_ok=True)
    train_dir, eval_dir = folder / "train", folder / "eval"
    concept_pool = variant.options.get("preserve_pool") == "concept"
    template = plan.shared.get("caption_template")
    entries = []
    for m in members:
        # absolute: the file lies in the job folder, and a concepts file's relative paths are relative to it
        entry = {"name": m.name, "data": str(Path(inputs[m.name]["data"]).resolve()), "trigger": m.trigger,
                 "class_noun": m.class_noun}
        if m.caption_template or template:
            entry["caption_template"] = m.caption_template or template
        pool = inputs[m.name].get("pool") or m.preserve_pool
        if concept_pool and pool:
            entry["preserve_pool"] = str(Path(pool).resolve())
        entries.append(entry)
    write_text_atomic(folder / "concepts.yaml", yaml.safe_dump({"concepts": entries}, sort_keys=False))
    opts = train_options(plan, group, variant, job.seed, train_dir, concepts_file=folder / "concepts.yaml")
    hold_out_controls(opts, [inputs[m.name].get("control_prompts") for m in members], folder)
    _train_job(opts, folder, out, cpu=cpu, progress=progress)
    record: dict = {"job": job.id, "concept": job.concept, "variant": job.variant, "seed": job.seed,
                    "concept_kind": "group", "members": group.members, "method": variant.method,
                    "options": variant.options, "sweep": variant.sweep, **_train_profile(train_dir, folder)}
    if not (eval_dir / "metrics.json").is_file():
        def options_for(name: str, output: Path):
            m = plan.concept(name)
            return replace(_eval_options(plan, m, inputs[name], data=inputs[name]["data"], adapter=str(train_dir),
                                         output=output, label=f"{job.variant}:{name}", cpu=cpu), concept=name)

        base = _eval_options(plan, members[0], inputs[members[0].name], data=inputs[members[0].name]["data"],
                             adapter=str(train_dir), output=eval_dir, label=job.variant, cpu=cpu)
        evaluate_concepts(base, load_adapter(train_dir), eval_dir, options_for=options_for)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    infer = [json.loads((eval_dir / n / "metrics.json").read_text()).get("inference") or {} for n in metrics["concepts"]]
    per_image = [i["seconds_per_image"] for i in infer if i.get("seconds_per_image") is not None]
    record.update(infer_s_per_image=sum(per_image) / len(per_image) if per_image else None,
                  infer_peak_mem_mb=max((i.get("peak_memory_above_model_mb") or 0) for i in infer) if infer else None,
                  metrics="eval/metrics.json", package_version=cat_adapter.__version__)
    write_json_atomic(folder / DONE, record)
    return record


def _train_profile(train_dir: Path, folder: Path) -> dict:
    done = json.loads((train_dir / DONE).read_text())
    timing = json.loads((folder / "train_time.json").read_text()) if (folder / "train_time.json").is_file() else {}
    return {"train_s": timing.get("seconds", done.get("seconds")), "train_resumed": timing.get("resumed", False),
            "step_s": done.get("step_seconds_median"), "peak_mem_mb": done.get("peak_memory_above_model_mb"),
            "generation_s": done.get("generation_seconds"), "steps": done.get("steps")}
