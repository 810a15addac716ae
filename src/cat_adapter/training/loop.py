"""The method-agnostic training loop (accelerate): data -> method.forward_backward -> optimizer step."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

import cat_adapter
from cat_adapter.config import TrainConfig, config_from_dict, resume_mismatch, save_config
from cat_adapter.data.cache import BatchSampler, build_cache
from cat_adapter.data.concept import load_concept, load_prompt_file
from cat_adapter.data.prompts import has_trigger, plain_prompt
from cat_adapter.errors import CatAdapterError
from cat_adapter.io import write_json_atomic, write_text_atomic
from cat_adapter.methods.base import get_method
from cat_adapter.methods.lora.adapter import peft_state_dict
from cat_adapter.models import freeze, load_pipeline
from cat_adapter.training.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint
from cat_adapter.training.validation import validation_grid

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIXED = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_output(cfg: TrainConfig) -> str:
    """'fresh', 'resume' or 'overwrite', after checking --output; nothing is written here."""
    out, run = Path(cfg.run.output), cfg.run
    if out.exists() and not out.is_dir():
        raise CatAdapterError(f"--output {out}: is a file; give a folder path")
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if run.resume:
        return "resume"
    if run.overwrite:
        if not ((out / "config.yaml").is_file() or (out / "log.jsonl").is_file()):
            raise CatAdapterError(f"--output {out}: not a cat-adapter output folder (no config.yaml); "
                                  "refusing to delete it with --overwrite, choose another folder")
        return "overwrite"
    raise CatAdapterError(f"--output {out}: folder exists; pass --resume to continue it or --overwrite to start again")


def load_pool(cfg: TrainConfig) -> list[str] | None:
    d = cfg.data
    if not d.preserve_pool:
        return None
    prompts = load_prompt_file(d.preserve_pool, "--preserve-pool")
    for i, p in enumerate(prompts):
        if has_trigger(p, d.trigger):
            raise CatAdapterError(f"--preserve-pool {d.preserve_pool}: prompt {i + 1} {p!r} contains the trigger "
                                  f"'{d.trigger}'; the pool must be trigger-free")
    return prompts


@dataclass
class Session:
    """What one training run holds between set-up and the loop."""

    cfg: TrainConfig
    accelerator: Any
    pipe: Any
    method: Any
    optimizer: Any
    lr_scheduler: Any
    sampler: BatchSampler
    weight_dtype: torch.dtype
    start: int = 0
    last_checkpoint: Path | None = None


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train an adapter as ``cfg`` says; returns the output folder. Raises CatAdapterError on bad input."""
    from accelerate.state import AcceleratorState

    mode = check_output(cfg)
    d = cfg.data
    # Cheap checks on every input before any model is loaded.
    items = load_concept(d.data, trigger=d.trigger, class_noun=d.class_noun, caption_template=d.caption_template,
                         missing_trigger=d.caption_missing_trigger, preserve_prompt=d.preserve_prompt)
    pool = load_pool(cfg)
    if cfg.run.validation_prompt and not has_trigger(cfg.run.validation_prompt, d.trigger):
        raise CatAdapterError(f"--validation-prompt {cfg.run.validation_prompt!r} lacks the trigger '{d.trigger}'; "
                              "the grid compares it with its trigger-free form")
    if pool and cfg.method.method != "cat":
        log.warning("--preserve-pool is used by --method cat only; ignored for --method %s", cfg.method.method)
    out = Path(cfg.run.output)
    checkpoints = list_checkpoints(out) if mode == "resume" else []
    if mode == "resume" and (out / "config.yaml").is_file():
        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()), f"{out}/config.yaml")
        diffs = resume_mismatch(saved, portable(cfg))
        if diffs:
            raise CatAdapterError(f"--resume: options differ from the run in {out}: {'; '.join(diffs)}")
    if checkpoints and checkpoint_step(checkpoints[-1]) > cfg.optim.steps:
        raise CatAdapterError(f"--steps {cfg.optim.steps} is below the step of the newest checkpoint in {out} "
                              f"({checkpoint_step(checkpoints[-1])}); give at least that many steps")
    try:
        s = setup(cfg, items, pool)
        if mode == "overwrite" or (mode == "resume" and not checkpoints):
            if mode == "resume":
                log.warning("--resume: no checkpoint in %s, starting from step 0", out)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        # The resolved config, re-runnable from any folder: absolute paths, no resume/overwrite switches.
        save_config(portable(cfg), out / "config.yaml", package_version=cat_adapter.__version__)
        if checkpoints:
            resume(s, checkpoints[-1])
        else:
            write_json_atomic(out / "prompts.json", [{"image": it.image_path.name, "caption": it.caption, "plain": it.plain,
                                                      "caption_source": it.caption_source} for it in items])
            (out / "log.jsonl").write_text("")
        run_loop(s, progress=progress)
        s.accelerator.wait_for_everyone()
        if s.accelerator.is_main_process:
            s.method.save(out, dtype=DTYPES[cfg.run.save_dtype], kohya=cfg.run.export_format == "kohya")
            validate(s, out / "validation.png")
        s.accelerator.end_training()
    finally:
        AcceleratorState._reset_state()  # so a later train() in this process may use other precision settings
    return out


def portable(cfg: TrainConfig) -> TrainConfig:
    """A copy with local paths made absolute and the run switches (--resume/--overwrite) off."""
    def absolute(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p and p != "toy" and Path(p).exists() else p

    m, d, r = cfg.model, cfg.data, cfg.run
    return replace(cfg, model=replace(m, model=absolute(m.model), single_file_config=absolute(m.single_file_config)),
                   data=replace(d, data=absolute(d.data), preserve_pool=absolute(d.preserve_pool)),
                   run=replace(r, resume=False, overwrite=False))


def setup(cfg: TrainConfig, items: list, pool: list[str] | None) -> Session:
    """Accelerator, frozen pipeline, caches, method (adds LoRA), optimizer, LR schedule, sampler."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    m, d, o, run = cfg.model, cfg.data, cfg.optim, cfg.run
    accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=run.cpu,
                              gradient_accumulation_steps=o.gradient_accumulation_steps)
    set_seed(run.seed)  # LoRA init draws from the global generator
    weight_dtype = MIXED[run.mixed_precision]
    pipe = load_pipeline(m.model, dtype=weight_dtype, revision=m.revision, variant=m.variant,
                         single_file_config=m.single_file_config, allow_pickle=m.allow_pickle)
    pipe.to(accelerator.device)
    freeze(pipe.unet, pipe.vae, pipe.text_encoder)
    cache = build_cache(pipe, items, resolution=d.resolution, random_flip=d.random_flip,
                        device=accelerator.device, pool_prompts=pool)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    method = get_method(cfg.method.method)(pipe.unet, noise_scheduler, cfg.method)
    if run.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2),
                                  weight_decay=o.weight_decay, eps=o.adam_epsilon)
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=o.steps * accelerator.num_processes)
    method.forward_model, optimizer, lr_scheduler = accelerator.prepare(pipe.unet, optimizer, lr_scheduler)
    sampler = BatchSampler(cache, batch_size=o.batch_size, pool_size=d.preserve_pool_size,
                           num_train_timesteps=noise_scheduler.config.num_train_timesteps,
                           seed=run.seed + accelerator.process_index)
    return Session(cfg, accelerator, pipe, method, optimizer, lr_scheduler, sampler, weight_dtype)


def resume(s: Session, path: Path) -> None:
    """Adapter, optimizer, LR schedule, data stream and RNG states from a checkpoint; the log is cut to it."""
    ckpt = load_checkpoint(path)
    s.method.load(ckpt["adapter"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    s.sampler.load_state_dict(ckpt["sampler"])
    restore_rng(ckpt)
    s.start, s.last_checkpoint = ckpt["step"], path
    log_path = Path(s.cfg.run.output) / "log.jsonl"
    kept = [ln for ln in (log_path.read_text().splitlines() if log_path.is_file() else [])
            if ln.strip() and json.loads(ln)["step"] <= s.start]
    write_text_atomic(log_path, "".join(ln + "\n" for ln in kept))
    s.accelerator.print(f"resumed from {path} (step {s.start})")


def validate(s: Session, path: Path) -> None:
    run, d = s.cfg.run, s.cfg.data
    if not run.validation_prompt or not s.accelerator.is_main_process:
        return
    validation_grid(s.pipe, s.method.trainable_parameters(), prompt_trigger=run.validation_prompt,
                    prompt_plain=plain_prompt(run.validation_prompt, d.trigger, d.preserve_prompt, d.class_noun),
                    num_images=run.validation_images, steps=run.validation_steps,
                    guidance_scale=run.validation_guidance_scale, resolution=d.resolution, path=path,
                    autocast=s.accelerator.autocast())


def train_step(s: Session) -> dict[str, float | None]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the averaged loss terms."""
    o, acc = s.cfg.optim, s.accelerator
    n = o.gradient_accumulation_steps
    terms: dict[str, float | None] = {"loss": 0.0}
    for _ in range(n):
        batch = s.sampler.next().to(acc.device, s.weight_dtype)
        with acc.accumulate(s.method.forward_model), acc.autocast():
            out = s.method.forward_backward(batch, acc.backward)
        terms["loss"] += out.total.item() / n
        for k, v in out.terms.items():
            terms[k] = None if v is None else terms.get(k, 0.0) + v / n
    if not math.isfinite(terms["loss"]):
        return terms  # the caller stops before the optimizer touches the weights
    if acc.sync_gradients and o.max_grad_norm > 0:
        acc.clip_grad_norm_(s.method.trainable_parameters(), o.max_grad_norm)
    terms["lr"] = s.lr_scheduler.get_last_lr()[0]
    s.optimizer.step()
    s.lr_scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return terms


def run_loop(s: Session, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    run, steps, out = s.cfg.run, s.cfg.optim.steps, Path(s.cfg.run.output)
    main = s.accelerator.is_main_process
    bar = tqdm(range(s.start, steps), initial=s.start, total=steps, desc=s.cfg.method.method,
               disable=not (progress and main), dynamic_ncols=True)
    with (out / "log.jsonl").open("a") as log_file:
        for step in bar:
            t0 = time.perf_counter()
            terms = train_step(s)
            done = step + 1
            if not math.isfinite(terms["loss"]):
                raise CatAdapterError(
                    f"non-finite loss ({terms['loss']}) at step {done}; stopped before updating the weights. Last good "
                    f"checkpoint: {s.last_checkpoint or 'none'}. Lower --lr, or use --mixed-precision no/bf16")
            record = {"step": done, **terms, "seconds": round(time.perf_counter() - t0, 4)}
            if main:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items() if k.startswith("loss") and v is not None})
            if not main:
                continue
            if run.checkpoint_every and (done % run.checkpoint_every == 0 or done == steps):
                # the last step too, so that --resume --steps MORE can continue a finished run
                s.last_checkpoint = save_checkpoint(out, done, adapter=peft_state_dict(s.pipe.unet), optimizer=s.optimizer,
                                                    lr_scheduler=s.lr_scheduler, sampler_state=s.sampler.state_dict(),
                                                    limit=run.checkpoints_limit)
            if done == steps:
                continue  # the final weights and grid are written by train()
            if run.save_every and done % run.save_every == 0:
                s.method.save(out / f"step-{done}", dtype=DTYPES[run.save_dtype])
                validate(s, out / f"step-{done}" / "validation.png")
            elif run.validation_every and done % run.validation_every == 0:
                validate(s, out / "validation" / f"step-{done:06d}.png")
