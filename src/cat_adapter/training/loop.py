"""The method-agnostic training loop (accelerate): data -> method.forward_backward -> optimizer step."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

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
from cat_adapter.training.checkpoint import list_checkpoints, load_checkpoint, restore_rng, save_checkpoint
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


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train an adapter as ``cfg`` says; returns the output folder. Raises CatAdapterError on bad input."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    m, d, meth, r, run = cfg.model, cfg.data, cfg.method, cfg.optim, cfg.run
    out = Path(run.output)
    mode = check_output(cfg)
    # Cheap checks on every input before any model is loaded.
    items = load_concept(d.data, trigger=d.trigger, class_noun=d.class_noun, caption_template=d.caption_template,
                         missing_trigger=d.caption_missing_trigger, preserve_prompt=d.preserve_prompt)
    pool = load_pool(cfg)
    checkpoints = list_checkpoints(out) if mode == "resume" else []
    if mode == "resume" and (out / "config.yaml").is_file():
        import yaml

        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()), f"{out}/config.yaml")
        diffs = resume_mismatch(saved, cfg)
        if diffs:
            raise CatAdapterError(f"--resume: options differ from the run in {out}: {'; '.join(diffs)}")

    accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=run.cpu,
                              gradient_accumulation_steps=r.gradient_accumulation_steps)
    set_seed(run.seed)  # LoRA init draws from the global generator
    weight_dtype = MIXED[run.mixed_precision]
    pipe = load_pipeline(m.model, dtype=weight_dtype, revision=m.revision, variant=m.variant,
                         single_file_config=m.single_file_config, allow_pickle=m.allow_pickle)
    pipe.to(accelerator.device)
    freeze(pipe.unet, pipe.vae, pipe.text_encoder)

    if mode == "overwrite" or (mode == "resume" and not checkpoints):
        if mode == "resume":
            log.warning("--resume: no checkpoint in %s, starting from step 0", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    cache = build_cache(pipe, items, resolution=d.resolution, random_flip=d.random_flip,
                        device=accelerator.device, pool_prompts=pool)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    method = get_method(meth.method)(pipe.unet, noise_scheduler, meth)
    if meth.lora_alpha is None:
        meth.lora_alpha = float(meth.rank)  # resolved value goes into config.yaml
    if run.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=r.lr, betas=(r.adam_beta1, r.adam_beta2),
                                  weight_decay=r.weight_decay, eps=r.adam_epsilon)
    lr_scheduler = get_scheduler(r.lr_scheduler, optimizer, num_warmup_steps=r.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=r.steps * accelerator.num_processes)
    method.forward_model, optimizer, lr_scheduler = accelerator.prepare(pipe.unet, optimizer, lr_scheduler)
    sampler = BatchSampler(cache, batch_size=r.batch_size, pool_size=d.preserve_pool_size,
                           num_train_timesteps=noise_scheduler.config.num_train_timesteps,
                           seed=run.seed + accelerator.process_index)

    start = 0
    log_path = out / "log.jsonl"
    if checkpoints:
        ckpt = load_checkpoint(checkpoints[-1])
        method.load(ckpt["adapter"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        restore_rng(ckpt)
        start = ckpt["step"]
        kept = [ln for ln in (log_path.read_text().splitlines() if log_path.is_file() else [])
                if ln.strip() and json.loads(ln)["step"] <= start]
        write_text_atomic(log_path, "".join(ln + "\n" for ln in kept))
        accelerator.print(f"resumed from {checkpoints[-1]} (step {start})")
    else:
        save_config(cfg, out / "config.yaml", package_version=cat_adapter.__version__)
        write_json_atomic(out / "prompts.json", [{"image": it.image_path.name, "caption": it.caption,
                                                  "plain": it.plain, "caption_source": it.caption_source} for it in items])
        log_path.write_text("")

    val_plain = plain_prompt(run.validation_prompt, d.trigger, d.preserve_prompt, d.class_noun) if run.validation_prompt else None

    def validate(path: Path) -> None:
        if run.validation_prompt and accelerator.is_main_process:
            validation_grid(pipe, method.trainable_parameters(), prompt_trigger=run.validation_prompt,
                            prompt_plain=val_plain, num_images=run.validation_images, steps=run.validation_steps,
                            guidance_scale=run.validation_guidance_scale, resolution=d.resolution, path=path,
                            autocast=accelerator.autocast())

    bar = tqdm(range(start, r.steps), initial=start, total=r.steps, disable=not progress or not accelerator.is_main_process,
               desc=f"{meth.method}", dynamic_ncols=True)
    last_good = checkpoints[-1] if checkpoints else None
    with log_path.open("a") as log_file:
        for step in bar:
            t0 = time.perf_counter()
            terms: dict[str, float] = {}
            total = 0.0
            for _ in range(r.gradient_accumulation_steps):
                batch = sampler.next().to(accelerator.device, weight_dtype)
                with accelerator.accumulate(method.forward_model), accelerator.autocast():
                    out_step = method.forward_backward(batch, accelerator.backward)
                total += out_step.total.item() / r.gradient_accumulation_steps
                for k, v in out_step.terms.items():
                    terms[k] = None if v is None else terms.get(k, 0.0) + v / r.gradient_accumulation_steps
            if not math.isfinite(total):
                raise CatAdapterError(
                    f"non-finite loss ({total}) at step {step + 1}; stopped before updating the weights. Last good "
                    f"checkpoint: {last_good or 'none'}. Lower --lr, or use --mixed-precision no/bf16")
            if accelerator.sync_gradients and r.max_grad_norm > 0:
                accelerator.clip_grad_norm_(method.trainable_parameters(), r.max_grad_norm)
            lr = lr_scheduler.get_last_lr()[0]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            record = {"step": done, "loss": total, **terms, "lr": lr, "seconds": round(time.perf_counter() - t0, 4)}
            if accelerator.is_main_process:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.startswith("loss") and v is not None})
            if run.checkpoint_every and done % run.checkpoint_every == 0 and done < r.steps and accelerator.is_main_process:
                last_good = save_checkpoint(out, done, adapter=peft_state_dict(pipe.unet), optimizer=optimizer,
                                            lr_scheduler=lr_scheduler, sampler_state=sampler.state_dict(),
                                            limit=run.checkpoints_limit)
            if run.save_every and done % run.save_every == 0 and done < r.steps and accelerator.is_main_process:
                snap = out / f"step-{done}"
                method.save(snap, dtype=DTYPES[run.save_dtype])
                validate(snap / "validation.png")
            elif run.validation_every and done % run.validation_every == 0 and done < r.steps:
                validate(out / "validation" / f"step-{done:06d}.png")

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        method.save(out, dtype=DTYPES[run.save_dtype], kohya=run.export_format == "kohya")
        validate(out / "validation.png")
    accelerator.end_training()
    return out
