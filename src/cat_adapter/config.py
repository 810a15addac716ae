"""Typed, validated training configuration.

Layers, lowest first: dataclass defaults, the method's defaults, ``--config file.yaml``, command-line flags.
Every field has a help text (it is the documentation of the flag of the same name), unknown
keys are errors that name the key, and values are checked before any model is loaded.

A config file may be flat (``cat_alpha: 1.0``; kebab-case keys are accepted too) or grouped in
the sections that ``OUT/config.yaml`` is written with (``preservation: {cat_alpha: 1.0}``); the method
sections (``lora``, ``preservation``, ``prior``, ``tokens``) come from the method registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from cat_adapter.data.prompts import PRESERVE_MODES, trigger_class_clash
from cat_adapter.errors import CatAdapterError
from cat_adapter.methods import registry
from cat_adapter.options import add_field, check, coerce, flag, opt, path_fields

CAPTION_TEMPLATE = "a photo of {trigger} {class_noun}"
# --mixed-precision -> the frozen model's dtype; --save-dtype's choices (torch dtype names)
MIXED_PRECISION = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
SAVE_DTYPES = ("float32", "float16", "bfloat16")
# --optimizer (training/optimizers.py builds them); Prodigy estimates the step size, so its lr is a multiplier (1.0)
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")
OPTIMIZER_DEFAULT_LR = {"prodigy": 1.0}


# --------------------------------------------------------------------------------------------
# Sections: what is trained (model, data, method, optim) apart from how it runs (run).
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    model: str = opt(path="in", help="Base model: a hub id (runwayml/stable-diffusion-v1-5), a local diffusers "
                     "StableDiffusionPipeline, StableDiffusionXLPipeline or FluxPipeline folder, a single-file "
                     ".safetensors checkpoint (SD or SDXL), or toy (the built-in shapes-world model).")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) of --model.")
    variant: str | None = opt(None, "Weight variant of --model to load, e.g. fp16.")
    single_file_config: str | None = opt(
        None, path="in", help="For a single-file --model: a diffusers folder or hub id holding the component configs "
        "(needed offline).")
    allow_pickle: bool = opt(False, "Allow loading non-safetensors weight files (.bin/.ckpt), with "
                             "torch.load(weights_only=True). Off by default: pickles can run code.")
    guidance: float | None = opt(None, "Flux with a guidance embedding (dev-like): the guidance value the transformer "
                                 "is given in training (default 3.5, as diffusers' Flux scripts). An error on other "
                                 "models.")
    quantize_base: str = opt("none", "Quantize the frozen denoiser's linear layers while loading: int8 (torchao "
                             "weight-only; CPU and GPU), fp8 (torchao; CUDA, compute capability 8.9+), nf4 (bitsandbytes; "
                             "CUDA). LoRA trains in float32 on top; CAT's frozen pass is the same quantized base; the "
                             "saved LoRA is a plain one. Not with a full fine-tune (--method dreambooth).",
                             choices=("none", "int8", "fp8", "nf4"))
    quantize_text_encoders: bool = opt(False, "With --quantize-base: also quantize the family's large text encoders "
                                       "(SDXL's second CLIP, the T5 of Flux and SD3) in the same mode.")
    max_sequence_length: int | None = opt(None, "Flux and SD3: T5 prompt length in tokens (default: as their "
                                          "pipelines, Flux 512, SD3 256, at most the T5 tokenizer's model_max_length). "
                                          "An error on other models.")


@dataclass
class DataConfig:
    data: str | None = opt(path="in", help="Concept folder: images (png/jpg/jpeg/webp; 3-20 is typical) with optional same-name .txt "
                           "captions. Not read by --method tco, which trains on images it generates.")
    concepts: str | None = opt(None, path="in", help="Several concepts in one adapter: a YAML file with a 'concepts:' list of {name, "
                               "data, trigger, class_noun[, caption_template, preserve_pool]} (data relative to the file). "
                               "Replaces --data/--trigger/--class-noun/--caption-template. --method lora and cat.")
    concept_balance: str = opt("uniform", "With several concepts: draw each concept equally often (uniform), or each "
                               "image equally often (by-images, so a concept with more images trains more).",
                               choices=("uniform", "by-images"))
    trigger: str = opt("sks", "Trigger word that names the concept in captions (y_T).")
    class_noun: str | None = opt(None, "Class of the concept, e.g. teapot. Needed by the caption template "
                                 "and by --preserve-prompt class.")
    caption_template: str = opt(CAPTION_TEMPLATE,
                                "Caption for images without a .txt file; {trigger} and {class_noun} are filled in.")
    caption_missing_trigger: str = opt("error", "What to do with a caption that lacks the trigger: "
                                       "error, or prepend the trigger.", choices=("error", "prepend"))
    resolution: int | None = opt(None, "Training resolution: images are resized (shorter side) and centre-cropped "
                                 "to a square of this size. Must be a multiple of 8. With --buckets, the bucket area "
                                 "is at most this squared. Default: the model's own size (its denoiser's sample size "
                                 "x the VAE factor: 32 for the toy model, 512 for SD 1.5, 1024 for SDXL and FLUX.1), "
                                 "printed at the start of a run.")
    buckets: bool = opt(False, "Aspect-ratio buckets: each image is scaled to cover the bucket (area <= "
                        "--resolution squared, sides multiples of --bucket-step) nearest its aspect ratio and "
                        "centre-cropped; a batch holds one bucket. OUT/buckets.json records each image's bucket.")
    bucket_step: int | None = opt(None, "With --buckets: bucket sides are multiples of this (default: the model's "
                                  "size multiple, VAE factor x U-Net downsampling; 64 for Stable Diffusion).")
    bucket_min_side: int | None = opt(None, "With --buckets: the shortest bucket side (default: half --resolution).")
    bucket_max_side: int | None = opt(None, "With --buckets: the longest bucket side (default: twice --resolution).")
    caption_dropout: float = opt(0.0, "Replace an instance caption by the empty prompt with this probability "
                                 "(drawn from the seeded data stream), so the unconditional prediction also learns the "
                                 "concept. CAT's preservation term keeps that row's trigger-free prompt y. Not with "
                                 "--preserve-prompt empty under CAT (both terms would then pull the empty prompt).")
    random_flip: bool = opt(False, "Randomly flip images horizontally (latents of both flips are cached).")
    preserve_prompt: str = opt(
        "remove", "How the trigger-free prompt y of Eq. 3 is made from each caption y_T: remove the trigger "
        "(paper, Eq. 3), empty prompt (Fig. 2's 'unconditioned'), or class (trigger -> class noun).",
        choices=PRESERVE_MODES)


@dataclass
class MethodConfig:
    method: str = opt("cat", "Training method: " + "; ".join(f"{n}: {registry.get_spec(n).description}"
                                                          for n in registry.method_names()),
                      choices=tuple(registry.method_names()))


@dataclass
class OptimConfig:
    steps: int = opt(600, "Optimizer steps.")
    optimizer: str = opt("adamw", "Optimizer: adamw (torch); adamw8bit (bitsandbytes, CUDA), prodigy (prodigyopt; "
                         "--lr defaults to 1.0 with it) and adafactor (transformers, at the given lr: "
                         "relative_step off) are optional extras: pip install 'cat-adapter[bitsandbytes]' / '[prodigy]'.",
                         choices=OPTIMIZERS)
    lr: float = opt(1e-4, "Learning rate (for prodigy a multiplier of its estimated step size, default 1.0).")
    batch_size: int = opt(1, "Images per micro-batch.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    weight_decay: float = opt(0.01, "Weight decay (decoupled for AdamW, 8-bit AdamW and Prodigy).")
    adam_beta1: float = opt(0.9, "Beta1 of AdamW, 8-bit AdamW and Prodigy.")
    adam_beta2: float = opt(0.999, "Beta2 of AdamW, 8-bit AdamW and Prodigy.")
    adam_epsilon: float = opt(1e-8, "Epsilon of AdamW, 8-bit AdamW and Prodigy.")
    lr_scheduler: str = opt("constant", "Learning-rate schedule.", choices=(
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"))
    lr_warmup_steps: int = opt(0, "Warm-up steps of the learning-rate schedule.")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this value (0 disables clipping).")
    ema_decay: float | None = opt(None, "Keep an exponential moving average of the trained weights (diffusers' "
                                  "EMAModel: decay min(this, (1 + n) / (10 + n)) at its n-th update) and also save it "
                                  "as OUT/ema/, a complete adapter. Off when unset; 0.999-0.9999 is usual for long runs.")
    snr_gamma: float | None = opt(None, "Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their value): each row "
                                  "of the identity and prior terms is weighted min(SNR_t, gamma) / SNR_t (epsilon "
                                  "prediction) or / (SNR_t + 1) (v prediction). CAT's preservation term is not "
                                  "weighted. Off when unset.")
    weighting_scheme: str = opt("none", "Flow-matching models (Flux): how timesteps are drawn and the loss weighted, "
                                "with diffusers' names and meaning: none (uniform t), logit_normal (t = sigmoid of "
                                "N(--logit-mean, --logit-std)), mode (skewed by --mode-scale); sigma_sqrt and cosmap "
                                "draw t uniformly and weight each row's loss (1/sigma^2; 2/(pi(1-2 sigma+2 sigma^2))). "
                                "CAT's preservation term is not weighted. Not for DDPM models (see --snr-gamma).",
                                choices=("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"))
    logit_mean: float = opt(0.0, "Mean of --weighting-scheme logit_normal.")
    logit_std: float = opt(1.0, "Standard deviation of --weighting-scheme logit_normal.")
    mode_scale: float = opt(1.29, "Scale of --weighting-scheme mode.")
    noise_offset: float = opt(0.0, "Offset noise (Guttenberg 2023; 0.05-0.1 is usual): adds noise_offset x N(0, 1) "
                              "per image and channel to the training noise, drawn from the seeded data stream. "
                              "CAT's preservation rows share the instance rows' noised latents, offset included.")


@dataclass
class RunConfig:
    output: str = opt(path="out", help="Output folder for weights, config, log, checkpoints and grids.")
    seed: int = opt(0, "Seed of everything random in the run (data order, flips, noise, timesteps, init).")
    mixed_precision: str = opt("no", "Mixed precision of the frozen model (LoRA weights stay float32).",
                               choices=tuple(MIXED_PRECISION))
    gradient_checkpointing: bool = opt(False, "Recompute U-Net activations in backward to save memory.")
    offload_frozen: bool = opt(True, "Once latents and prompt embeddings are cached, move the VAE and the text encoders "
                               "the steps do not read off the accelerator for the rest of the run (validation brings "
                               "them back for its grid), so the peak is the denoiser, the adapter, the optimizer and "
                               "the activations. No effect on a CPU run.")
    cpu: bool = opt(False, "Run on the CPU even if a GPU is present.")
    save_every: int = opt(0, "Also write a loadable LoRA snapshot OUT/step-N/ every N steps (0: off).")
    save_dtype: str = opt("float32", "Precision of the saved LoRA weights.", choices=SAVE_DTYPES)
    export_format: str = opt("diffusers", "Also write OUT/pytorch_lora_weights_kohya.safetensors when kohya.",
                             choices=("diffusers", "kohya"))
    checkpoint_every: int = opt(0, "Write a resumable checkpoint every N steps (0: off).")
    checkpoints_limit: int | None = opt(None, "Keep only the newest N checkpoints.")
    resume: bool = opt(False, "Continue from the newest checkpoint in --output.")
    overwrite: bool = opt(False, "Delete an existing --output folder and start afresh.")
    validation_prompt: str | None = opt(None, "Prompt with the trigger; a grid of base vs adapted images "
                                        "for it and its trigger-free form is written every --validation-every steps.")
    cache_dir: str | None = opt(None, path="out", help="Keep VAE latents and prompt embeddings in this folder between runs, keyed by "
                                "the base model's identity, each image's bytes, the resolution, flips, dtype and "
                                "prompt (a stale entry is never used). compare gives its jobs DIR/cache unless the plan "
                                "sets one.")
    report_to: str = opt("none", "Also log every step (loss terms, lr, alpha, seconds, memory) and the validation "
                         "grids to an experiment tracker, through accelerate: event files in OUT/logs/ (tensorboard), or "
                         "a W&B run (wandb). Optional extras: pip install 'cat-adapter[tensorboard]' / '[wandb]'. "
                         "OUT/log.jsonl is written either way.", choices=("none", "tensorboard", "wandb"))
    validation_every: int = opt(100, "Steps between the preservation monitor's measurements (OUT/validation.csv, "
                                "OUT/validation.png) and, with --validation-prompt, validation grids; 0: off.")
    clip: str | None = opt(None, "With --validation-prompt: a CLIP model (hub id, folder, or toy) for the monitor's "
                           "image metrics on each validation grid: identity (trigger images vs the concept's images) "
                           "and base fidelity (class images vs the base model's).", path="in")
    dino: str | None = opt(None, "Like --clip, with a DINO ViT (facebook/dino-vits16) for the identity; base "
                           "fidelity then uses it too.", path="in")
    validation_images: int = opt(2, "Images (seeds 0..N-1) per validation prompt.")
    validation_steps: int = opt(25, "Sampling steps of validation images.")
    validation_guidance_scale: float | None = opt(None, "Classifier-free guidance scale of validation images "
                                                  "(default: the model's pipeline's own: 7.5 for SD, 5 for SDXL, 3.5 "
                                                  "for Flux).")


def _validate(self, given: set[str] | None = None) -> "TrainConfig":
    """Check values that can be checked without touching files; raise naming the option.

    ``given``: the option names set explicitly (file or flags). One the method does not read is an error.
    """
    spec = registry.get_spec(self.method.method)
    if not spec.needs_data and self.data.data is not None:
        raise CatAdapterError(f"--data is not read by --method {spec.name}: it trains on images it generates itself "
                              "(leave --data out; a concept's reference images are for evaluate)")
    for section in sections(self):
        for f in dataclasses.fields(section):
            if f.name == "data" and (not spec.needs_data or self.data.concepts):
                continue
            if f.metadata.get("required") and getattr(section, f.name) in (None, ""):
                raise CatAdapterError(f"missing required option {flag(f.name)}")
            value = getattr(section, f.name)
            if isinstance(value, float):
                check(math.isfinite(value), flag(f.name), f"must be a finite number (got {value})")
    d, o, r = self.data, self.optim, self.run
    if d.concepts:
        several = [n for n in registry.method_names() if registry.get_spec(n).multi_concept]
        check(spec.multi_concept, "--concepts",
              f"is offered for --method {' and '.join(several)} (--method {spec.name} trains one concept: its class "
              "images, tokens or loop are per concept); train one adapter per concept")
        for name in ("data", "trigger", "class_noun", "caption_template"):
            check(name not in (given or ()), flag(name), "cannot be combined with --concepts (the concepts file gives "
                  "each concept's folder, trigger, class noun and caption template)")
    check(0 <= o.adam_beta1 < 1 and 0 <= o.adam_beta2 < 1, "--adam-beta1/--adam-beta2", "must be in [0, 1)")
    check(o.adam_epsilon > 0, "--adam-epsilon", f"must be > 0 (got {o.adam_epsilon})")
    check(o.weight_decay >= 0, "--weight-decay", f"must be >= 0 (got {o.weight_decay})")
    check(0 <= r.seed < 2**32, "--seed", f"must be in [0, 2**32) (got {r.seed})")
    check(r.validation_steps >= 1, "--validation-steps", "must be >= 1")
    check(o.steps > 0, "--steps", f"must be a positive number of steps (got {o.steps})")
    if o.optimizer in OPTIMIZER_DEFAULT_LR and "lr" not in (given or ()):
        o.lr = OPTIMIZER_DEFAULT_LR[o.optimizer]  # the method's AdamW lr means nothing to it
    check(o.lr > 0, "--lr", f"must be > 0 (got {o.lr})")
    check(o.batch_size > 0, "--batch-size", f"must be >= 1 (got {o.batch_size})")
    check(o.gradient_accumulation_steps > 0, "--gradient-accumulation-steps", "must be >= 1")
    check(o.lr_warmup_steps >= 0, "--lr-warmup-steps", "must be >= 0")
    check(o.max_grad_norm >= 0, "--max-grad-norm", "must be >= 0 (0 disables clipping)")
    check(o.snr_gamma is None or o.snr_gamma > 0, "--snr-gamma", f"must be > 0 (got {o.snr_gamma}); leave it out "
          "to turn the weighting off")
    check(o.noise_offset >= 0, "--noise-offset", f"must be >= 0 (got {o.noise_offset})")
    check(o.ema_decay is None or 0 < o.ema_decay < 1, "--ema-decay", f"must be in (0, 1) (got {o.ema_decay})")
    check(o.ema_decay is None or spec.runner is None, "--ema-decay",
          f"is not supported by --method {spec.name}: its iterations continue from the raw weights")
    check(0 <= d.caption_dropout < 1, "--caption-dropout", f"must be in [0, 1) (got {d.caption_dropout})")
    m = self.model
    check(m.quantize_base == "none" or spec.quantizable_base, "--quantize-base",
          f"{m.quantize_base} cannot be used with --method {spec.name}: it trains the denoiser's own weights, and "
          "quantized weights cannot be trained; use a LoRA method (lora, cat) or --quantize-base none")
    check(d.resolution is None or (d.resolution >= 8 and d.resolution % 8 == 0), "--resolution",
          f"must be a positive multiple of 8 (got {d.resolution})")
    for name in ("bucket_step", "bucket_min_side", "bucket_max_side"):
        value = getattr(d, name)
        check(value is None or d.buckets, flag(name), "needs --buckets")
        check(value is None or (value >= 8 and value % 8 == 0), flag(name),
              f"must be a positive multiple of 8 (got {value})")
    if d.resolution is not None:  # else checked once the model gives its size (training.loop.training_buckets)
        check_bucket_sides(d)
    check(d.trigger.strip() != "" and not any(c.isspace() for c in d.trigger.strip()), "--trigger",
          f"must be one word without spaces (got {d.trigger!r})")
    # (a method that makes its own images writes its own captions: the template is not read; a concepts file's
    # entries are checked when it is read)
    from cat_adapter.data.concepts import kohya_folders

    # kohya's layout (``--data img/`` of ``10_sks teapot`` folders) names each concept's trigger and class itself
    layout = bool(d.concepts) or (spec.needs_data and bool(kohya_folders(d.data)))
    clash = None if layout else trigger_class_clash(d.trigger, d.class_noun)
    check(clash is None, "--trigger", f"{d.trigger!r} and --class-noun {d.class_noun!r} must differ: {clash}; choose a "
          "trigger that is no word of the class (a rare token such as zwx)")
    needs_class = not layout and (("{class_noun}" in d.caption_template and spec.needs_data)
                                      or d.preserve_prompt == "class")
    check(not needs_class or bool(d.class_noun), "--class-noun",
          "is required by the caption template and by --preserve-prompt class")
    check("{trigger}" in d.caption_template, "--caption-template", "must contain {trigger}")
    for name in ("save_every", "checkpoint_every", "validation_every"):
        check(getattr(r, name) >= 0, flag(name), "must be >= 0")
    check(r.checkpoints_limit is None or r.checkpoints_limit > 0, "--checkpoints-limit", "must be >= 1")
    check(r.validation_images > 0, "--validation-images", "must be >= 1")
    check(not (r.resume and r.overwrite), "--resume", "cannot be combined with --overwrite")
    if spec.check is not None:
        spec.check(self, set(given or ()))
    index = field_index(type(self))
    unused = [n for n in (given or ()) if n in index and index[n][0] in registry.sections()
              and index[n][0] not in spec.sections]
    if unused:
        raise CatAdapterError(f"{flag(unused[0])} is not an option of --method {spec.name} (it reads: "
                              f"{', '.join(spec.sections) or 'no method options'})")
    for name in spec.sections:
        getattr(self, name).validate(self)
    return self


def _to_dict(self) -> dict[str, dict[str, Any]]:
    """The sections this run's method reads (the others hold only defaults and are left out)."""
    used = set(registry.get_spec(self.method.method).sections)
    return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
            if f.name not in registry.sections() or f.name in used}


# Sections in order: what is trained (model, data, method, the method sections, optim) apart from how it
# runs (run). The method sections come from the registry (methods/*/config.py).
_CORE_FIRST = (("model", ModelConfig), ("data", DataConfig), ("method", MethodConfig))
_CORE_LAST = (("optim", OptimConfig), ("run", RunConfig))
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(name, cls, field(default_factory=cls)) for name, cls in (*_CORE_FIRST, *registry.sections().items(), *_CORE_LAST)],
    namespace={"validate": _validate, "to_dict": _to_dict, "__module__": __name__,
               "__doc__": "The resolved configuration of one training run, section by section."})


def sections(cfg: Any) -> list[Any]:
    return [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]



def check_bucket_sides(d: "DataConfig") -> None:
    lo, hi = bucket_sides(d)
    check(not d.buckets or lo <= d.resolution <= hi, "--bucket-min-side",
          f"and --bucket-max-side must hold --resolution between them (got {lo}..{hi}, resolution {d.resolution})")


def bucket_sides(d: "DataConfig") -> tuple[int, int]:
    """(shortest, longest) bucket side: --bucket-min-side/--bucket-max-side, by default half and twice --resolution."""
    return (d.bucket_min_side or d.resolution // 2, d.bucket_max_side or 2 * d.resolution)


def field_index(cls: type = TrainConfig) -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Map every option name to (section name, field, resolved type). Names are unique across sections."""
    index: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for sec in dataclasses.fields(cls):
        sec_cls = get_type_hints(cls)[sec.name]
        hints = get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            assert f.name not in index, f"duplicate option {f.name}"
            index[f.name] = (sec.name, f, hints[f.name])
    return index


def _flatten(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept flat keys and section-grouped keys; normalise kebab-case to snake_case."""
    index = field_index()
    section_names = {f.name for f in dataclasses.fields(TrainConfig)}
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k in section_names and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                sk = str(sub_key).replace("-", "_")
                if sk not in index or index[sk][0] != k:
                    raise CatAdapterError(f"{source}: unknown key '{k}.{sub_key}'")
                flat[sk] = sub_value
        elif k in index:
            flat[k] = value
        elif k in ("package_version", "num_processes"):
            continue  # written into OUT/config.yaml for provenance (the world size is accelerate's, not an option)
        else:
            raise CatAdapterError(f"{source}: unknown key '{key}' (see cat-adapter train --help)")
    return flat


def load_config_file(path: str | Path) -> dict[str, Any]:
    from cat_adapter.io import read_yaml

    from cat_adapter.options import rebase_path

    path = Path(path)
    raw = read_yaml(path, f"--config {path}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CatAdapterError(f"--config {path}: expected a mapping of option names to values")
    kinds = path_fields(TrainConfig)   # relative paths are relative to the file, as in plans and concepts files
    root = path.expanduser().resolve().parent
    return {k: rebase_path(root, k, v, kinds) for k, v in _flatten(raw, f"--config {path}").items()}


def build_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, *,
                 file_source: str | None = None) -> TrainConfig:
    """Defaults <- the method's defaults <- file values <- overrides, coerced to their types and validated.

    ``file_source`` (e.g. ``--config run.yaml``) prefixes errors about values that came from the file.
    """
    index = field_index()
    file_values, overrides = file_values or {}, overrides or {}
    from_file = {k for k in file_values if k not in overrides}

    def located(exc: CatAdapterError, name: str | None) -> CatAdapterError:
        if file_source and name in from_file:
            return CatAdapterError(f"{file_source}: {exc}")
        return exc

    for source in (file_values, overrides):
        for name in source:
            if name not in index:
                raise CatAdapterError(f"unknown option {flag(name)}")
    method_field = index["method"][1]
    try:
        method = coerce("method", overrides.get("method", file_values.get("method", method_field.default)),
                        str, method_field.metadata["choices"])
    except CatAdapterError as exc:
        raise located(exc, "method" if "method" not in overrides else None) from None
    merged: dict[str, dict[str, Any]] = {}
    for source in (registry.get_spec(method).defaults, file_values, overrides):
        for name, value in source.items():
            sec, f, typ = index[name]
            try:
                merged.setdefault(sec, {})[name] = coerce(name, value, typ, f.metadata.get("choices"))
            except CatAdapterError as exc:
                raise located(exc, name if source is file_values else None) from None
    hints = get_type_hints(TrainConfig)
    kwargs = {sec.name: hints[sec.name](**merged.get(sec.name, {})) for sec in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**kwargs).validate(set(file_values) | set(overrides))
    except CatAdapterError as exc:
        first = str(exc).split(" ", 1)[0]
        raise located(exc, first[2:].replace("-", "_") if first.startswith("--") else None) from None


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Rebuild a TrainConfig from a saved OUT/config.yaml (sectioned or flat)."""
    return build_config(_flatten(data, source))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per field, grouped by section; defaults are SUPPRESSed so only given flags are seen (a required
    option may come from --config, so argparse does not require it)."""
    hints = get_type_hints(cls)
    for sec in dataclasses.fields(cls):
        sec_cls = hints[sec.name]
        group = parser.add_argument_group(sec.name)
        sec_hints = get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            per_method = "".join(f"; {m}: {registry.get_spec(m).defaults[f.name]}" for m in registry.method_names()
                                 if f.name in registry.get_spec(m).defaults)
            add_field(group, f, sec_hints[f.name], extra_default=per_method)


def save_config(cfg: TrainConfig, path: str | Path, **extra: Any) -> None:
    from cat_adapter.io import write_text_atomic

    data = dict(extra)
    data.update(cfg.to_dict())
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


# Options that may change between a run and its --resume without changing what is trained.
RESUME_MAY_CHANGE = {"resume", "overwrite", "steps", "save_every", "checkpoint_every", "checkpoints_limit", "offload_frozen",
                     "validation_prompt", "validation_every", "validation_images", "validation_steps",
                     "validation_guidance_scale", "export_format", "save_dtype", "cpu", "output", "cache_dir",
                     "report_to", "clip", "dino"}


def portable(cfg: TrainConfig) -> TrainConfig:
    """A copy with its path options absolute (those marked ``path="in"`` where they exist, aliases and hub ids as they
    are; those marked ``path="out"`` always) and the run switches (--resume/--overwrite) off: what OUT/config.yaml
    holds, re-runnable from any folder."""
    from pathlib import Path

    from cat_adapter.plugins import is_alias

    kinds = path_fields(type(cfg))

    def absolute(name: str, value):
        if not isinstance(value, str) or not value:
            return value
        if kinds[name] == "out":
            return str(Path(value).expanduser().resolve())
        if is_alias(value, "pipeline") or is_alias(value, "clip") or not Path(value).expanduser().exists():
            return value
        return str(Path(value).expanduser().resolve())

    sections = {}
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        changes = {f.name: absolute(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)
                   if f.name in kinds}
        if sec.name == "run":
            changes.update(resume=False, overwrite=False)
        sections[sec.name] = dataclasses.replace(section, **changes)
    return dataclasses.replace(cfg, **sections)


def check_same_run(cfg: TrainConfig, out) -> TrainConfig:
    """The run saved in ``out`` (its config.yaml), refused with one line when ``cfg`` would train something else."""
    from pathlib import Path

    from cat_adapter.io import read_yaml

    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise CatAdapterError(f"--resume: {out} has no config.yaml, so it cannot be checked against these options; "
                              "start it afresh with --overwrite")
    saved = config_from_dict(read_yaml(out / "config.yaml", f"{out}/config.yaml") or {}, f"{out}/config.yaml")
    diffs = resume_mismatch(saved, portable(cfg))
    if diffs:
        raise CatAdapterError(f"--resume: options differ from the run in {out}: {'; '.join(diffs)}")
    return saved


def resume_mismatch(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Options that differ between the saved run and the resumed one and would change the result."""
    diffs = []
    if saved.method.method != current.method.method:
        return [f"--method ({saved.method.method!r} -> {current.method.method!r})"]
    used = set(registry.get_spec(current.method.method).sections)
    for f_sec in dataclasses.fields(saved):
        if f_sec.name in registry.sections() and f_sec.name not in used:
            continue
        sec_saved, sec_now = getattr(saved, f_sec.name), getattr(current, f_sec.name)
        for f in dataclasses.fields(sec_saved):
            if f.name in RESUME_MAY_CHANGE:
                continue
            if getattr(sec_saved, f.name) != getattr(sec_now, f.name):
                diffs.append(f"{flag(f.name)} ({getattr(sec_saved, f.name)!r} -> {getattr(sec_now, f.name)!r})")
    return diffs
