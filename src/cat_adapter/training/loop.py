"""The method-agnostic training loop (accelerate): data -> method.forward_backward -> optimizer step.

The loop knows the ``Method`` protocol (methods/base.py) and nothing method-specific: which weights
train, which loss terms run and what is exported all come from the method the registry builds.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

import cat_adapter
from cat_adapter.config import (MIXED_PRECISION, TrainConfig, bucket_sides, check_bucket_sides, check_same_run,
                               portable, save_config)
from cat_adapter.data.buckets import bucket_sizes
from cat_adapter.data.cache import StreamSampler, bucket_record, build_cache
from cat_adapter.data.concept import ConceptItem
from cat_adapter.data.concepts import ConceptSpec, concept_specs, load_concepts, per_token_plain
from cat_adapter.data.disk_cache import DiskCache
from cat_adapter.data.prompts import has_trigger
from cat_adapter.errors import CatAdapterError
from cat_adapter.io import check_free_space, check_output_folder, output_lock, write_json_atomic, write_text_atomic
from cat_adapter.methods import registry
from cat_adapter.methods.base import Method, build_method
from cat_adapter.models import ModelSpec, freeze, load_model
from cat_adapter.training.checkpoint import (checkpoint_step, list_checkpoints, load_checkpoint, restore_rng, rng_state,
                                             save_checkpoint)
from cat_adapter.training import memory, optimizers, trackers
from cat_adapter.training.guard import (disk_errno, disk_error, main_launch_process, preflight, resume_note,  # noqa: F401
                                        startup_summary, undo_fresh_folder, warn_small_images, written_bytes)
from cat_adapter.training.monitor import Monitor
from cat_adapter.training.validation import validation_grid

log = logging.getLogger(__name__)
MIXED = {k: getattr(torch, v) for k, v in MIXED_PRECISION.items()}   # --mixed-precision -> the frozen model's dtype
# Schedules whose learning rate at a step does not depend on --steps (so --resume may change --steps).
STEPS_FREE_SCHEDULES = ("constant", "constant_with_warmup")
DONE = "done.json"
ESTIMATE_AFTER = 5   # steps after which the remaining time is estimated


@dataclass
class Session:
    """What one training run holds between set-up and the loop."""

    cfg: TrainConfig
    accelerator: Any            # accelerate.Accelerator
    model: Any                  # the model family object (models/)
    method: Method
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any           # torch LR scheduler
    sampler: StreamSampler
    weight_dtype: torch.dtype
    start: int = 0
    last_checkpoint: Path | None = None
    model_mb: float | None = None    # memory in use once the frozen model is loaded (the profile's baseline)
    generation_s: float = 0.0        # seconds the terms' prepare hooks took (DreamBooth's class images)
    validation_s: float = 0.0        # seconds spent on validation grids
    ema: Any = None                  # diffusers' EMAModel over the method's parameters (--ema-decay)
    tracking: bool = False           # --report-to: trackers were started
    concepts: list = None            # the run's ConceptSpecs (--concepts, or the one of --data)
    cache_stats: dict | None = None  # --cache-dir: entries read (hits) and written (misses)
    monitor: Monitor | None = None   # the preservation monitor (--validation-every; main process)
    monitor_s: float = 0.0           # seconds it took
    reached: int = 0                 # the last step trained (for the messages of an interrupted run)
    loop_t0: float = 0.0             # when the first step of this process started (the time estimate)
    progress: bool = True            # a progress bar is shown (else the time estimate is printed)


def train_loop(cfg: TrainConfig, *, progress: bool = True, accelerator=None,
               init_state: dict[str, torch.Tensor] | None = None) -> Path:
    """One run of the training loop; returns the output folder. Raises CatAdapterError on bad input. Every
    method's entry point is ``cat_adapter.runners.train`` (a method with a runner of its own is run by it).

    ``accelerator``: one the caller made and keeps (a harness that trains many times in one process, with one
    precision setting). Without it each call makes its own and resets accelerate's process-wide state at the
    end (accelerate keeps one precision setting per process), so a later call may use another precision.
    ``init_state``: the method's trained state to start from (``Method.state_dict`` keys, loaded strictly)
    instead of its initialisation."""
    if registry.get_spec(cfg.method.method).runner is not None:
        raise CatAdapterError(f"--method {cfg.method.method} is run by its own runner: call cat_adapter.runners.train")
    preflight(cfg)
    # the output folder is this run's for its whole life (one lock per launch: the main process takes it)
    with output_lock(cfg.run.output, "cat-adapter train") if main_launch_process() else nullcontext():
        return _train_loop(cfg, progress=progress, accelerator=accelerator, init_state=init_state)


def _train_loop(cfg: TrainConfig, *, progress: bool, accelerator, init_state) -> Path:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    out, run = Path(cfg.run.output), cfg.run
    mode = check_output_folder(out, markers=("config.yaml", "log.jsonl"), kind="a cat-adapter output folder",
                               overwrite=run.overwrite, resume=run.resume)
    if run.resume and mode == "fresh":
        raise CatAdapterError(f"--resume: {out} {'is empty' if out.exists() else 'does not exist'}, so there is no run "
                              "to continue; check the path, or leave --resume out to start a run there")
    items, inputs, specs = check_inputs(cfg)
    checkpoints = list_checkpoints(out) if mode == "resume" else []
    if mode == "resume" and check_resume(cfg, out, checkpoints) == "finished":
        print(f"{out}: the run is finished ({cfg.optim.steps} steps); nothing to resume. Give --steps MORE to train "
              "on from its last checkpoint")
        return out
    trackers.check(run.report_to)
    optimizers.check(cfg.optim.optimizer)
    owned = accelerator is None
    if owned:
        accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=run.cpu,
                                  gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
                                  **trackers.accelerator_kwargs(run.report_to, out))
    elif accelerator.gradient_accumulation_steps != cfg.optim.gradient_accumulation_steps:
        raise CatAdapterError("--gradient-accumulation-steps differs from the given accelerator's")
    check_distributed_type(accelerator)
    from cat_adapter.models.quantize import check_mode

    check_mode(cfg.model.quantize_base, device_type=accelerator.device.type)
    try:
        t0 = time.perf_counter()
        existed = out.exists()
        try:
            s = setup(cfg, items, inputs, accelerator, specs=specs, init_state=init_state,
                      prepare_folder=lambda: prepare_output(cfg, items, specs, mode, checkpoints, accelerator))
        except CatAdapterError:
            if mode == "fresh" and accelerator.is_main_process and out.is_dir():   # a refusal after set-up began
                undo_fresh_folder(out, existed)                                  # (free space) leaves nothing
            raise
        s.tracking = trackers.start(accelerator, cfg)
        if checkpoints:
            resume(s, checkpoints[-1])
        if s.monitor is not None:   # the rows before this start (a resumed run's), then step 0's on a fresh one
            s.monitor.load(out / "validation.csv", s.start)
            if s.start == 0:
                monitor(s, 0)
        try:
            run_loop(s, progress=progress)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                finish(s, t0)
        except Exception as exc:
            if disk_errno(exc) is None:
                raise
            raise CatAdapterError(disk_error(s, exc)) from None   # a full or read-only disk mid-run: one line
        accelerator.wait_for_everyone()
        if owned:
            accelerator.end_training()
    finally:
        if owned:  # private, but the only way accelerate offers to change precision within one process
            AcceleratorState._reset_state()
    return out


def check_distributed_type(accelerator) -> None:
    """DDP (and one process) only: under FSDP or DeepSpeed ZeRO-3 the denoiser's weights are sharded, and CAT's frozen
    pass, the checkpoints and the exported LoRA read the unwrapped module's weights, which would be shards."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise CatAdapterError(f"accelerate's distributed_type {kind} is not supported yet: cat-adapter trains with "
                              "DDP (accelerate launch --multi_gpu); a Flux-dev LoRA fits one 80 GB GPU in bf16 with "
                              "--gradient-checkpointing, so DDP replicates it")


def check_inputs(cfg: TrainConfig) -> tuple[list[ConceptItem], dict, list[ConceptSpec]]:
    """Cheap checks on every input before any model is loaded; returns every concept's items (in concept order),
    the terms' inputs and the concepts (read once: the run records what it read)."""
    d = cfg.data
    specs = concept_specs(d)
    spec = registry.get_spec(cfg.method.method)
    if len(specs) > 1 and not spec.multi_concept:
        several = " and ".join(n for n in registry.method_names() if registry.get_spec(n).multi_concept)
        raise CatAdapterError(f"--data {d.data}: {len(specs)} concept folders ({', '.join(c.name for c in specs)}); "
                              f"several concepts in one adapter train with --method {several}")
    items = [it for group in load_concepts(specs, missing_trigger=d.caption_missing_trigger,
                                           preserve_prompt=d.preserve_prompt) for it in group]
    inputs: dict = {}
    for term in term_classes(cfg):
        inputs.update(term.check_inputs(cfg))
    if cfg.run.validation_prompt and not any(has_trigger(cfg.run.validation_prompt, c.trigger) for c in specs):
        raise CatAdapterError(f"--validation-prompt {cfg.run.validation_prompt!r} lacks the trigger "
                              f"{' or '.join(repr(c.trigger) for c in specs)}; the grid compares it with its "
                              "trigger-free form")
    return items, inputs, specs


def term_classes(cfg: TrainConfig) -> list:
    return [registry.term_class(n) for n in registry.active_terms(registry.get_spec(cfg.method.method), cfg)]


def check_resume(cfg: TrainConfig, out: Path, checkpoints: list[Path]) -> str:
    """``continue``, or ``finished`` (a finished run asked for its own steps again); one line when it cannot go on."""
    saved = check_same_run(cfg, out)
    o = cfg.optim
    done_steps = json.loads((out / DONE).read_text()).get("steps") if (out / DONE).is_file() else None
    if done_steps is not None and o.steps == done_steps:
        return "finished"
    if done_steps is not None and not checkpoints:
        if o.steps < done_steps:
            raise CatAdapterError(f"--resume: {out} finished at step {done_steps}; --steps {o.steps} would go back "
                                  f"(give more steps to train on, or {done_steps})")
        raise CatAdapterError(f"--resume --steps {o.steps}: {out} finished at step {done_steps} without a "
                              "checkpoint to continue from (--checkpoint-every writes them); train it again with "
                              "--overwrite and --checkpoint-every")
    if checkpoints and saved.optim.steps != o.steps and o.lr_scheduler not in STEPS_FREE_SCHEDULES:
        raise CatAdapterError(f"--resume with --steps {o.steps} (the run had {saved.optim.steps}): --lr-scheduler "
                              f"{o.lr_scheduler} depends on --steps, so the resumed learning rates would not be those "
                              f"of a straight run; keep --steps {saved.optim.steps} or use a constant schedule")
    if checkpoints and checkpoint_step(checkpoints[-1]) > o.steps:
        raise CatAdapterError(f"--steps {o.steps} is below the step of the newest checkpoint in {out} "
                              f"({checkpoint_step(checkpoints[-1])}); give at least that many steps")
    return "continue"


def prepare_output(cfg: TrainConfig, items: list[ConceptItem], specs: list[ConceptSpec], mode: str,
                   checkpoints: list[Path], accelerator) -> None:
    """Remove, create and fill the output folder: the main process only; the others wait for it."""
    out = Path(cfg.run.output)
    if accelerator.is_main_process:
        if mode == "overwrite" or (mode == "resume" and not checkpoints):
            if mode == "resume":
                log.warning("--resume: no checkpoint in %s, starting from step 0", out)
            kept = {f for n in registry.term_names() for f in registry.term_class(n).kept_folders}
            for entry in out.iterdir():  # all but the terms' own caches (DreamBooth's class images check a manifest)
                if entry.name in kept and entry.is_dir():
                    continue
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / DONE).unlink(missing_ok=True)
        # The resolved config, re-runnable from any folder: absolute paths, no resume/overwrite switches.
        save_config(portable(cfg), out / "config.yaml", package_version=cat_adapter.__version__,
                    num_processes=accelerator.num_processes)
        if not checkpoints:
            write_json_atomic(out / "prompts.json", [{"image": it.image_path.name, "concept": specs[it.concept].name,
                                                      "caption": it.caption, "plain": it.plain,
                                                      "caption_source": it.caption_source} for it in items])
            if cfg.data.concepts or len(specs) > 1:  # the concepts as this run read them (absolute folders)
                write_text_atomic(out / "concepts.yaml", yaml.safe_dump({"concepts": [c.to_dict() for c in specs]},
                                                                        sort_keys=False))
            write_text_atomic(out / "log.jsonl", "")
    accelerator.wait_for_everyone()


def setup(cfg: TrainConfig, items: list[ConceptItem], inputs: dict, accelerator, *, prepare_folder=None,
          init_state: dict[str, torch.Tensor] | None = None, specs: list[ConceptSpec] | None = None) -> Session:
    """Frozen model, output folder, class images, caches, method (adds its parts), optimizer, LR schedule, stream."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    d, o, run = cfg.data, cfg.optim, cfg.run
    specs = specs if specs is not None else concept_specs(d)
    set_seed(run.seed)  # LoRA init draws from the global generator: identical on every rank
    weight_dtype = MIXED[run.mixed_precision]
    model = load_model(model_spec(cfg), dtype=weight_dtype)
    model.to(accelerator.device)
    freeze(*model.frozen_components())
    memory.reset_peak()  # the profile's peak is measured above the loaded model
    model_mb = memory.current_mb()
    cfg = with_resolution(cfg, model, accelerator)   # OUT/config.yaml keeps what was asked (prepare_folder's cfg)
    d = cfg.data
    warn_small_images(items, d.resolution, buckets=d.buckets)
    accelerator.print(startup_summary(cfg, items, specs, model, accelerator))
    buckets = training_buckets(cfg, model)  # checked before anything is written
    check_model_options(cfg, model)
    if prepare_folder is not None:
        prepare_folder()
    inputs = dict(inputs)
    t_gen = time.perf_counter()
    for term in term_classes(cfg):  # data a term needs from the base model (DreamBooth's class images)
        inputs.update(term.prepare(cfg, model, accelerator))
    generation_s = time.perf_counter() - t_gen
    method = build_method(cfg, model, need_base_copy=bool(run.validation_prompt))
    if init_state is not None:
        method.load_state_dict(init_state)
    disk = DiskCache(run.cache_dir, model.identity) if run.cache_dir else None
    cache = build_cache(model, items, resolution=d.resolution, random_flip=d.random_flip, device=accelerator.device,
                        buckets=buckets, caption_dropout=d.caption_dropout > 0, disk=disk,
                        **inputs)
    if d.buckets and accelerator.is_main_process:
        write_buckets(Path(run.output), cache, items, inputs)
        counts = ", ".join(f"{w}x{h}: {len(cache.instance.members[(w, h)])}" for w, h in cache.instance.buckets)
        accelerator.print(f"images per bucket: {counts} (OUT/buckets.json; a bucket smaller than the batch repeats "
                          "its own images)")
    if run.offload_frozen and accelerator.device.type != "cpu":
        moved = model.offload(model.idle_components())
        if moved:
            accelerator.print(f"offloaded to the CPU until validation: {', '.join(moved)} (--no-offload-frozen keeps them)")
    if run.gradient_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
    method.train()
    ema = None
    if o.ema_decay is not None:  # from the starting weights (init_state included), on their device
        from diffusers.training_utils import EMAModel

        ema = EMAModel(method.parameters(), decay=o.ema_decay)
    check_free_space(run.output, written_bytes(cfg, method), "weights, snapshots and checkpoints")
    optimizer = optimizers.build(o, method.param_groups(o))
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=o.steps * accelerator.num_processes)
    modules = method.modules()
    prepared = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
    method.set_wrapped(dict(zip(modules, prepared[:len(modules)])))
    optimizer, lr_scheduler = prepared[len(modules):]
    objective = model.objective.configured(o)   # this run's copy (--noise-offset, --weighting-scheme), not the
    method.objective = objective                 # (possibly shared) model's; the loss terms' per-row weights
    stream = {k: v for t in term_classes(cfg) for k, v in t.stream_options(cfg).items()}   # what the terms read
    repeats = [c.repeats for c in specs] if all(c.repeats is not None for c in specs) else None   # kohya's layout
    sampler = StreamSampler(cache, batch_size=o.batch_size, objective=objective, seed=run.seed, repeats=repeats,
                            caption_dropout=d.caption_dropout, balance=d.concept_balance,
                            num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                            **stream)
    monitor = None
    if run.validation_every and accelerator.is_main_process:   # its own probe stream: the run's is untouched
        monitor = Monitor(method, cache, seed=run.seed, device=accelerator.device, autocast=accelerator.autocast,
                          pool_size=sampler.pool_size)
        if run.validation_prompt and (run.clip or run.dino):   # the grids' image metrics
            monitor.embedder = image_embedder(run, accelerator.device)
            monitor.references = [it.image_path for it in items][:8]
    seed_model_randomness(run.seed, accelerator.process_index)
    return Session(cfg, accelerator, model, method, optimizer, lr_scheduler, sampler, weight_dtype, concepts=specs,
                   model_mb=model_mb, generation_s=generation_s, ema=ema,
                   cache_stats={"hits": disk.hits, "misses": disk.misses} if disk else None, monitor=monitor)


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """Where the run's base model comes from and how it is loaded (quantized or not)."""
    m = cfg.model
    return ModelSpec(m.model, m.revision, m.variant, m.single_file_config, m.allow_pickle,
                     quantize=m.quantize_base, quantize_text_encoders=m.quantize_text_encoders)


def with_resolution(cfg: TrainConfig, model, accelerator=None) -> TrainConfig:
    """``cfg`` with ``--resolution`` set: as given, else the model's own size (printed either way)."""
    d = cfg.data
    given = d.resolution is not None
    if not given:
        d = replace(d, resolution=int(model.default_resolution))
        cfg = replace(cfg, data=d)
    if accelerator is not None:
        accelerator.print(f"resolution {d.resolution} ({'--resolution' if given else 'the model' + chr(39) + 's own size'}"
                          f"{', buckets of that area' if d.buckets else ''})")
    return cfg


def check_model_options(cfg: TrainConfig, model) -> None:
    """Options the loaded model cannot serve: one-line errors before anything is written (each part asks the
    family what it supports; the objective checks its options); then the family's own options (Flux: --guidance,
    --max-sequence-length) are set on the model."""
    for name in registry.get_spec(cfg.method.method).parts:
        registry.part_class(name).check_model(cfg, model)
    model.objective.check_options(cfg.optim, family=model.family)
    model.configure(guidance=cfg.model.guidance, max_sequence_length=cfg.model.max_sequence_length)


def training_buckets(cfg: TrainConfig, model) -> list[tuple[int, int]] | None:
    """The aspect-ratio buckets of ``--buckets`` (data/buckets.py), or None for the one ``--resolution`` square."""
    d = cfg.data
    if not d.buckets:
        return None
    multiple = model.size_multiple
    step = d.bucket_step or multiple
    if step % multiple:
        raise CatAdapterError(f"--bucket-step {step}: must be a multiple of {multiple} for this model (its VAE factor "
                              "times its U-Net's downsampling)")
    check_bucket_sides(d)
    lo, hi = bucket_sides(d)
    if hi < step:
        raise CatAdapterError(f"--bucket-max-side {hi}: below --bucket-step {step}; no bucket fits")
    sizes = bucket_sizes(d.resolution, step, max(lo, step), hi)
    log.info("--buckets: %d bucket sizes, step %d, area <= %d^2", len(sizes), step, d.resolution)
    return sizes


def write_buckets(out: Path, cache, items: list[ConceptItem], inputs: dict) -> None:
    """``OUT/buckets.json``: each training image's bucket; ``OUT/class_buckets.json`` for the class images."""
    write_json_atomic(out / "buckets.json", bucket_record(cache.instance, [it.image_path for it in items]))
    if cache.prior is not None:
        write_json_atomic(out / "class_buckets.json",
                          bucket_record(cache.prior, [p for p, _ in inputs["class_images"]]))


def seed_model_randomness(seed: int, rank: int) -> None:
    """The model's own randomness (dropout) differs by rank; rank 0 continues the run's seeded generator, so a
    one-process run draws what it always drew. Other ranks get a seed derived from (seed, rank): no rank of
    one run replays a rank of another run's seed."""
    if rank:
        import numpy as np

        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0]))


def resume(s: Session, path: Path) -> None:
    """Trained state, optimizer, LR schedule, data stream, GradScaler and this rank's RNG; the log is cut to it."""
    acc = s.accelerator
    ckpt = load_checkpoint(path, rank=acc.process_index)
    if ckpt["world_size"] != acc.num_processes:
        raise CatAdapterError(f"--resume: {path} was written by {ckpt['world_size']} processes, this run has "
                              f"{acc.num_processes}; the data stream and LR schedule count per process, so resume "
                              f"with {ckpt['world_size']} processes")
    s.method.load_state_dict(ckpt["trained"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    s.sampler.load_state_dict(ckpt["stream"])
    s.method.load_term_state(ckpt["terms"])
    if s.ema is not None:
        if ckpt["ema"] is None:
            raise CatAdapterError(f"--resume: {path} holds no EMA state (--ema-decay); resume without it")
        s.ema.load_state_dict(ckpt["ema"])
        s.ema.to(device=acc.device)  # the shadow weights were read to the CPU
    if ckpt["grad_scaler"] and acc.scaler is not None:
        acc.scaler.load_state_dict(ckpt["grad_scaler"])
    restore_rng(ckpt["rng"])
    s.start, s.last_checkpoint = ckpt["step"], path
    s.reached = s.start
    if acc.is_main_process:
        log_path = Path(s.cfg.run.output) / "log.jsonl"
        kept = [ln for ln in (log_path.read_text().splitlines() if log_path.is_file() else [])
                if ln.strip() and json.loads(ln)["step"] <= s.start]
        write_text_atomic(log_path, "".join(ln + "\n" for ln in kept))
    acc.wait_for_everyone()
    acc.print(f"resumed from {path} (step {s.start})")


def monitor(s: Session, step: int) -> dict:
    """The monitor's row at ``step``, written to validation.csv / validation.png; its figures for the log."""
    t0 = time.perf_counter()
    row = s.monitor.measure(step)
    s.monitor.write(Path(s.cfg.run.output))
    s.monitor_s += time.perf_counter() - t0
    return {k: v for k, v in row.items() if k != "step" and v is not None}


def image_embedder(run, device):
    """The monitor's image embedder: --dino's ViT, else --clip's CLIP."""
    if run.dino:
        from cat_adapter.evaluation.embedders import load_dino

        return load_dino(run.dino, device=device)
    from cat_adapter.evaluation.clip import ClipEmbedder
    from cat_adapter.plugins import resolve_alias

    return ClipEmbedder(resolve_alias(run.clip, "clip", "--clip"), device=device)


def validate(s: Session, path: Path, step: int) -> None:
    run, d = s.cfg.run, s.cfg.data
    if not run.validation_prompt or not s.accelerator.is_main_process:
        return
    t0 = time.perf_counter()
    with s.model.onloaded():   # the VAE and text encoders offloaded after caching come back for the grid
        rows = validation_grid(s.method, prompt_trigger=run.validation_prompt,
                               prompt_plain=per_token_plain(run.validation_prompt, s.concepts, d.preserve_prompt),
                               num_images=run.validation_images, steps=run.validation_steps,
                               guidance_scale=run.validation_guidance_scale, resolution=d.resolution, path=path,
                               autocast=s.accelerator.autocast())
    s.validation_s += time.perf_counter() - t0
    m = s.monitor
    if m is not None and getattr(m, "embedder", None) is not None:
        from PIL import Image

        figures = m.add_images(step, rows, m.embedder, [Image.open(p).convert("RGB") for p in m.references])
        m.write(Path(run.output))
        if s.tracking:
            trackers.log_step(s.accelerator, figures, step)
    if s.tracking:
        trackers.log_image(s.accelerator, path, step)


def train_step(s: Session) -> dict[str, float | None]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the averaged loss terms.

    A non-finite loss on any process stops every process before the optimizer touches the weights (the
    flag is summed across processes, so no rank steps on while another has stopped).
    """
    o, acc = s.cfg.optim, s.accelerator
    n = o.gradient_accumulation_steps
    terms: dict[str, float | None] = {"loss": 0.0}
    for _ in range(n):
        # float32 whatever --mixed-precision: latents, noise, timesteps, z_t and the targets stay float32 (autocast
        # casts the denoiser's inputs); the losses are float32 MSEs (diffusion.mse)
        batch = s.sampler.next().to(acc.device)
        with acc.accumulate(*s.method.wrapped.values()), acc.autocast():
            out = s.method.forward_backward(batch, acc.backward)
        terms["loss"] += out.total.item() / n
        for k, v in out.terms.items():
            terms[k] = None if v is None else terms.get(k, 0.0) + v / n
    bad = torch.tensor([0.0 if math.isfinite(terms["loss"]) else 1.0], device=acc.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    if bad.item() > 0:
        terms["loss"] = terms["loss"] if not math.isfinite(terms["loss"]) else float("nan")
        return terms  # the caller stops before the optimizer touches the weights
    if acc.sync_gradients and o.max_grad_norm > 0:
        acc.clip_grad_norm_(s.method.parameters(), o.max_grad_norm)
    terms["lr"] = s.lr_scheduler.get_last_lr()[0]
    s.optimizer.step()
    s.lr_scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.method.after_step()
    if s.ema is not None:
        s.ema.step(s.method.parameters())
    for term in s.method.terms:  # constrained CAT's dual update, with the term every process measured
        value = terms.get(f"loss_{term.name}")
        if hasattr(term, "observe") and value is not None:
            if acc.num_processes > 1:
                value = acc.reduce(torch.tensor([value], device=acc.device), reduction="mean").item()
            term.observe(value)
    return terms


def checkpoint(s: Session, done: int) -> None:
    """Gather every rank's RNG state; the main process writes the checkpoint."""
    from accelerate.utils import gather_object

    acc = s.accelerator
    rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
    if acc.is_main_process:
        s.last_checkpoint = save_checkpoint(
            Path(s.cfg.run.output), done, trained=s.method.state_dict(), optimizer=s.optimizer,
            lr_scheduler=s.lr_scheduler, stream_state=s.sampler.state_dict(), rng_states=rngs,
            scaler_state=acc.scaler.state_dict() if acc.scaler is not None else None, limit=s.cfg.run.checkpoints_limit,
            ema_state=s.ema.state_dict() if s.ema is not None else None, term_state=s.method.term_state(),
            export=lambda folder: write_adapter(s, folder, s.method.export(folder, dtype=getattr(torch, s.cfg.run.save_dtype))))
    acc.wait_for_everyone()


def run_loop(s: Session, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    main = s.accelerator.is_main_process
    steps, out = s.cfg.optim.steps, Path(s.cfg.run.output)
    bar = tqdm(range(s.start, steps), initial=s.start, total=steps, desc=s.cfg.method.method,
               disable=not (progress and main), dynamic_ncols=True)
    s.loop_t0, s.progress = time.perf_counter(), progress
    try:
        with (out / "log.jsonl").open("a") if main else _Null() as log_file:
            _steps(s, bar, log_file)
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM (the CLI turns it into one): say how to go on
        exc.note = resume_note(s)
        raise


def _steps(s: Session, bar, log_file) -> None:
    run, steps, out = s.cfg.run, s.cfg.optim.steps, Path(s.cfg.run.output)
    main = s.accelerator.is_main_process
    for step in bar:
        t0 = time.perf_counter()
        before = s.method.term_logs()   # what this step trains with (CAT's alpha)
        s.method.step = step
        terms = train_step(s)
        done = s.reached = step + 1
        if done == s.start + ESTIMATE_AFTER and main and done < steps:   # the bar shows it; a log line says it too
            log.info("about %.0f s for the remaining %d steps (%.3f s per step so far)",
                     (time.perf_counter() - s.loop_t0) / ESTIMATE_AFTER * (steps - done), steps - done,
                     (time.perf_counter() - s.loop_t0) / ESTIMATE_AFTER)
            if not s.progress:
                left = (time.perf_counter() - s.loop_t0) / ESTIMATE_AFTER * (steps - done)
                print(f"about {f'{left:.0f} s' if left < 90 else f'{left / 60:.1f} min'} for the remaining "
                      f"{steps - done} steps", flush=True)
        if not math.isfinite(terms["loss"]):
            raise CatAdapterError(
                f"non-finite loss ({terms['loss']}) at step {done}; stopped before updating the weights. Last good "
                f"checkpoint: {s.last_checkpoint or 'none'}. Lower --lr, or use --mixed-precision no/bf16")
        record = {"step": done, **terms, **s.method.part_logs(), **before,
                  "seconds": round(time.perf_counter() - t0, 4), "memory_mb": memory.rounded(memory.current_mb())}
        if s.monitor is not None and (done == steps or done % run.validation_every == 0
                                      or (run.save_every and done % run.save_every == 0)):   # pick reads snapshots
            record.update(monitor(s, done))
        log_file.write(json.dumps(record) + "\n")
        if s.tracking:
            trackers.log_step(s.accelerator, record, done)
        log_file.flush()
        # 4 significant digits: CAT's preservation term is 1e-7..1e-4, which a fixed 0.0000 would hide
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items() if k.startswith("loss") and v is not None})
        if run.checkpoint_every and (done % run.checkpoint_every == 0 or done == steps):
            # the last step too, so that --resume --steps MORE can continue a finished run
            checkpoint(s, done)
        if done == steps or not main:
            continue  # the final weights and grid are written by finish()
        if run.save_every and done % run.save_every == 0:
            exported = s.method.export(out / f"step-{done}", dtype=getattr(torch, run.save_dtype))
            write_adapter(s, out / f"step-{done}", exported)
            validate(s, out / f"step-{done}" / "validation.png", done)
        elif run.validation_every and done % run.validation_every == 0:
            validate(s, out / "validation" / f"step-{done:06d}.png", done)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass


def write_adapter(s: Session, folder: Path, exported: list) -> Path:
    from cat_adapter.adapters import write_adapter_json

    d = s.cfg.data
    return write_adapter_json(folder, method=s.method.name, model=s.model, exported=exported,
                              concepts=[c.record(d.preserve_prompt) for c in s.concepts])


def finish(s: Session, t0: float) -> None:
    """Final weights + adapter.json, the validation grid, then ``done.json`` (seconds, peak memory) last."""
    out, run = Path(s.cfg.run.output), s.cfg.run
    exported = s.method.export(out, dtype=getattr(torch, run.save_dtype), export_format=run.export_format)
    write_adapter(s, out, exported)
    if s.ema is not None:  # the averaged weights as a second, complete adapter
        params = s.method.parameters()
        s.ema.store(params)
        s.ema.copy_to(params)
        try:
            write_adapter(s, out / "ema", s.method.export(out / "ema", dtype=getattr(torch, run.save_dtype),
                                                          export_format=run.export_format))
        finally:
            s.ema.restore(params)
    validate(s, out / "validation" / f"step-{s.cfg.optim.steps:06d}.png", s.cfg.optim.steps)
    for term in s.method.terms:  # a term's own figures (constrained CAT's alpha.png)
        if hasattr(term, "report"):
            term.report(out)
    files = sorted({f for e in exported for f in e.files.values()})
    peak = memory.peak_mb()
    step_s = [json.loads(ln)["seconds"] for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    write_json_atomic(out / DONE, {
        "seconds": round(time.perf_counter() - t0, 2), "peak_memory_mb": memory.rounded(peak),
        "peak_memory_above_model_mb": memory.rounded(None if peak is None or s.model_mb is None else peak - s.model_mb),
        "step_seconds_median": round(statistics.median(step_s), 4) if step_s else None,
        "generation_seconds": round(s.generation_s, 2), "validation_seconds": round(s.validation_s, 2),
        "monitor_seconds": round(s.monitor_s, 2),
        "steps_seconds": round(sum(step_s), 2), "files": files, "adapter": "adapter.json",
        "ema_adapter": "ema/adapter.json" if s.ema is not None else None, "cache": s.cache_stats,
        "steps": s.cfg.optim.steps, "resolution": s.cfg.data.resolution})
