"""``evaluate``: generate paired images for an adapter (or the base model), write a manifest, score it.

Every input is checked before a model is loaded; everything is written into a temporary folder
renamed onto ``--output`` at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from pathlib import Path

import cat_adapter
from cat_adapter.data.concept import load_concept, load_prompt_file
from cat_adapter.data.prompts import PRESERVE_MODES, fill_template, has_trigger, plain_prompt, remove_trigger
from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.clip import DEFAULT_CLIP, ClipEmbedder
from cat_adapter.evaluation.generate import EvalPrompt, copy_references, plan_evaluation, render_jobs
from cat_adapter.evaluation.manifest import read_manifest, write_manifest
from cat_adapter.evaluation.metrics import DEFAULT_EPSILON
from cat_adapter.evaluation.score import check_output, score_rows
from cat_adapter.io import atomic_dir

DEFAULT_TEMPLATE = "a photo of {trigger} {class_noun}"


@dataclass
class EvalOptions:
    """What ``cat-adapter evaluate`` takes; None means "from the adapter's config.yaml, else the default"."""
    model: str
    lora: str | None           # a LoRA folder or file; None or "none" for the base model
    data: str
    output: str
    clip: str = DEFAULT_CLIP
    trigger: str | None = None
    class_noun: str | None = None
    preserve_prompt: str | None = None
    caption_template: str | None = None
    prompts: str | None = None           # held-out {trigger} templates, one per line
    control_prompts: str | None = None   # trigger-free prompts never trained on (Leakage)
    label: str | None = None
    images_per_prompt: int = 4
    seed: int = 0
    sample_steps: int = 30
    guidance_scale: float = 7.5
    batch_size: int = 8
    lora_scale: float = 1.0
    resolution: int | None = None
    hm_epsilon: float = DEFAULT_EPSILON
    clip_batch_size: int = 32
    overwrite: bool = False
    cpu: bool = False
    allow_pickle: bool = False
    single_file_config: str | None = None

    @property
    def has_adapter(self) -> bool:
        return self.lora is not None and self.lora.strip().lower() != "none"


def _check_numbers(o: EvalOptions) -> None:
    for name, value in (("--images-per-prompt", o.images_per_prompt), ("--sample-steps", o.sample_steps),
                        ("--batch-size", o.batch_size), ("--clip-batch-size", o.clip_batch_size)):
        if value < 1:
            raise CatAdapterError(f"{name} must be >= 1 (got {value})")
    if o.resolution is not None and (o.resolution < 8 or o.resolution % 8):
        raise CatAdapterError(f"--resolution must be a positive multiple of 8 (got {o.resolution})")
    if not 0 < o.hm_epsilon < 1:
        raise CatAdapterError(f"--hm-epsilon must be in (0, 1) (got {o.hm_epsilon})")
    if not math.isfinite(o.lora_scale):
        raise CatAdapterError(f"--lora-scale must be a finite number (got {o.lora_scale})")
    if not math.isfinite(o.guidance_scale):
        raise CatAdapterError(f"--guidance-scale must be a finite number (got {o.guidance_scale})")
    if o.preserve_prompt is not None and o.preserve_prompt not in PRESERVE_MODES:
        raise CatAdapterError(f"--preserve-prompt must be one of {', '.join(PRESERVE_MODES)}")


def resolve_options(o: EvalOptions) -> dict:
    """Trigger handling: flags, else the adapter's saved config.yaml, else defaults (``remove`` for none)."""
    from cat_adapter.models import lora_weight_file, saved_run_config

    saved: dict = {}
    if o.has_adapter:
        lora_weight_file(o.lora, allow_pickle=o.allow_pickle)  # a missing or empty folder fails here
        saved = (saved_run_config(o.lora) or {}).get("data", {}) or {}
    r = {"trigger": o.trigger or saved.get("trigger"), "class_noun": o.class_noun or saved.get("class_noun"),
         "preserve_prompt": o.preserve_prompt or (saved.get("preserve_prompt") if o.has_adapter else None) or "remove",
         "caption_template": o.caption_template or saved.get("caption_template") or DEFAULT_TEMPLATE,
         "caption_missing_trigger": saved.get("caption_missing_trigger") or "error"}
    if not r["trigger"]:
        raise CatAdapterError("--trigger is required (no config.yaml beside --lora to read it from)")
    if r["preserve_prompt"] == "class" and not r["class_noun"]:
        raise CatAdapterError("--class-noun is required by --preserve-prompt class")
    return r


def load_prompts(o: EvalOptions, r: dict) -> tuple[list[EvalPrompt], list[tuple[Path, str]], list[str]]:
    """Trigger prompts (concept captions, then held-out templates), (concept image, caption) pairs, controls."""
    t, noun, mode = r["trigger"], r["class_noun"], r["preserve_prompt"]
    items = load_concept(o.data, trigger=t, class_noun=noun, caption_template=r["caption_template"],
                         missing_trigger=r["caption_missing_trigger"], preserve_prompt=mode)
    prompts = [EvalPrompt("train", c, plain_prompt(c, t, mode, noun), remove_trigger(c, t))
               for c in dict.fromkeys(it.caption for it in items)]
    if o.prompts:
        for i, line in enumerate(load_prompt_file(o.prompts, "--prompts")):
            y_t = fill_template(line, t, noun)
            if not has_trigger(y_t, t):
                raise CatAdapterError(f"--prompts {o.prompts}: prompt {i + 1} {line!r} has no '{{trigger}}' "
                                      f"(or '{t}'); held-out prompts must name the concept")
            prompts.append(EvalPrompt("heldout", y_t, plain_prompt(y_t, t, mode, noun), remove_trigger(y_t, t)))
    controls: list[str] = []
    if o.control_prompts:
        for i, line in enumerate(load_prompt_file(o.control_prompts, "--control-prompts")):
            c = fill_template(line, t, noun)
            if "{trigger}" in line or has_trigger(c, t):
                raise CatAdapterError(f"--control-prompts {o.control_prompts}: prompt {i + 1} {line!r} contains "
                                      f"the trigger '{t}'; control prompts must be trigger-free")
            controls.append(c)
    return prompts, [(it.image_path, it.caption) for it in items], controls


def default_label(o: EvalOptions) -> str:
    if o.label:
        return o.label
    if not o.has_adapter:
        return "base"
    p = Path(o.lora).expanduser().resolve()
    return (p.parent if p.is_file() else p).name


def evaluate(o: EvalOptions) -> Path:
    """Generate, write ``manifest.csv`` and the images, then score them: the outputs of ``score`` plus images/."""
    from cat_adapter.models import load_lora, load_pipeline
    from cat_adapter.sampling import pick_device

    _check_numbers(o)
    out = check_output(o.output, overwrite=o.overwrite)
    resolved = resolve_options(o)
    prompts, references, controls = load_prompts(o, resolved)
    device = pick_device(o.cpu)
    embedder = ClipEmbedder(o.clip, batch_size=o.clip_batch_size, device=device)  # a bad CLIP fails before generating
    pipe = load_pipeline(o.model, single_file_config=o.single_file_config, allow_pickle=o.allow_pickle)
    if o.has_adapter:
        load_lora(pipe, o.lora, allow_pickle=o.allow_pickle)
    pipe.to(device)
    seeds = [o.seed + k for k in range(o.images_per_prompt)]
    meta = {"label": default_label(o), "model": o.model, "lora": o.lora if o.has_adapter else None,
            "data": str(o.data), "images_per_prompt": o.images_per_prompt, **resolved,
            "settings": {k: v for k, v in asdict(o).items() if k not in ("overwrite",)},
            "package_version": cat_adapter.__version__}
    with atomic_dir(out) as tmp:
        plan = plan_evaluation(prompts, references, controls, seeds, out_dir=tmp, has_adapter=o.has_adapter)
        render_jobs(pipe, plan.jobs, tmp, has_adapter=o.has_adapter, steps=o.sample_steps,
                    guidance_scale=o.guidance_scale, height=o.resolution, width=o.resolution,
                    lora_scale=o.lora_scale, batch_size=o.batch_size)
        copy_references(plan.copies, tmp)
        # Score what the manifest says, read back from disk: the same path as ``cat-adapter score``.
        rows = read_manifest(write_manifest(tmp / "manifest.csv", plan.rows))
        score_rows(rows, embedder, tmp, epsilon=o.hm_epsilon, meta={**meta, "manifest": "manifest.csv"})
    return out
