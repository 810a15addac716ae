"""``evaluate``: generate paired images for an adapter (or the base model), write a manifest, score it.

Every input is checked before a model is loaded; everything is written into a temporary folder
renamed onto ``--output`` at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cat_adapter
from cat_adapter.config import CAPTION_TEMPLATE
from cat_adapter.data.concept import load_concept, load_prompt_file
from cat_adapter.data.prompts import PRESERVE_MODES, fill_template, has_trigger, plain_prompt, remove_trigger
from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.clip import DEFAULT_CLIP, ClipEmbedder
from cat_adapter.evaluation.generate import EvalPrompt, copy_references, plan_evaluation, render_jobs
from cat_adapter.evaluation.manifest import read_manifest, write_manifest
from cat_adapter.evaluation.metrics import DEFAULT_EPSILON
from cat_adapter.evaluation.embedders import DINO_HELP, load_dino
from cat_adapter.evaluation.score import check_output, score_rows
from cat_adapter.io import atomic_dir
from cat_adapter.options import check, opt
from cat_adapter.sampling import MODEL_HELP, SAMPLE_STEPS
from cat_adapter.training import memory

ADAPTER_HELP = ("Adapter: a cat-adapter output folder (any method), a diffusers LoRA folder or .safetensors, a kohya "
                "LoRA file, a learned_embeds.safetensors; none for the base model. --lora is an alias.")
CLIP_HELP = ("CLIP model: hub id, local folder (CLIPModel + its processor), or toy (the shapes-world CLIP).")


@dataclass
class EvalOptions:
    """What ``cat-adapter evaluate`` takes; None means "from the adapter's adapter.json / config.yaml, else the
    default"."""
    model: str = opt(path="in", help=MODEL_HELP)
    adapter: str | None = opt(path="in", aliases=("--lora",), help=ADAPTER_HELP)
    data: str | None = opt(None, path="in", help="Concept folder (images with optional .txt captions). Required, "
                           "except for a multi-concept adapter evaluated without --concept: then every concept is "
                           "evaluated from the folders in the training run's concepts.yaml, with a confusion report.")
    output: str = opt(path="out", help="Evaluation folder to write.")
    concept: str | None = opt(None, "Evaluate this concept (by name) of a multi-concept adapter.")
    clip: str = opt(DEFAULT_CLIP, CLIP_HELP, path="in")
    dino: str | None = opt(None, DINO_HELP, path="in")
    trigger: str | None = opt(None, "Trigger word (default: from the adapter's config.yaml).")
    class_noun: str | None = opt(None, "Class noun (default: from the adapter's config.yaml).")
    preserve_prompt: str | None = opt(None, "How y is made from y_T (default: the adapter's config.yaml; remove for "
                                      "--adapter none).", choices=PRESERVE_MODES)
    caption_template: str | None = opt(None, "Caption of images without .txt (default: the adapter's).")
    prompts: str | None = opt(None, "Held-out prompt templates with {trigger}, one per line (group heldout).",
                              path="in")
    control_prompts: str | None = opt(None, "Trigger-free prompts never trained on (other classes/attributes), one "
                                      "per line: Leakage.", path="in")
    label: str | None = opt(None, "Name of this run in reports (default: the adapter folder's name, or base).")
    images_per_prompt: int = opt(4, "Seeds per prompt: seed, seed+1, ...")
    seed: int = opt(0, "First seed.")
    sample_steps: int = opt(SAMPLE_STEPS, "Sampling steps.")
    guidance_scale: float | None = opt(None, "Classifier-free guidance scale (default: the model's pipeline's own: "
                                       "7.5 for SD, 5 for SDXL, 3.5 for Flux).")
    batch_size: int = opt(8, "Images per generation batch.")
    lora_scale: float = opt(1.0, "Multiplier of the LoRA update.")
    drift_samples: int = opt(8, "z_t draws per trigger-free prompt for drift_plain (mean squared change of the noise "
                             "prediction against the base model); 0 skips it.")
    resolution: int | None = opt(None, "Image size (default: the model's own).")
    hm_epsilon: float = opt(DEFAULT_EPSILON, "Cosines <= this are clamped to it before the harmonic mean (and "
                            "counted).")
    clip_batch_size: int = opt(32, "Images or texts per CLIP batch.")
    single_file_config: str | None = opt(None, "Config folder for a single-file --model (offline).", path="in")
    allow_pickle: bool = opt(False, "Allow non-safetensors weights (weights_only=True).")
    cpu: bool = opt(False, "Run on the CPU even if a GPU is present.")
    overwrite: bool = opt(False, "Replace an existing evaluation folder.")

    @property
    def has_adapter(self) -> bool:
        return self.adapter is not None and self.adapter.strip().lower() != "none"

    def validate(self) -> "EvalOptions":
        for name, value in (("--images-per-prompt", self.images_per_prompt), ("--sample-steps", self.sample_steps),
                            ("--batch-size", self.batch_size), ("--clip-batch-size", self.clip_batch_size)):
            check(value >= 1, name, f"must be >= 1 (got {value})")
        check(self.drift_samples >= 0, "--drift-samples", f"must be >= 0 (got {self.drift_samples})")
        check(self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0), "--resolution",
              f"must be a positive multiple of 8 (got {self.resolution})")
        check(0 < self.hm_epsilon < 1, "--hm-epsilon", f"must be in (0, 1) (got {self.hm_epsilon})")
        check(math.isfinite(self.lora_scale), "--lora-scale", f"must be a finite number (got {self.lora_scale})")
        check(self.preserve_prompt is None or self.preserve_prompt in PRESERVE_MODES, "--preserve-prompt",
              f"must be one of {', '.join(PRESERVE_MODES)}")
        check(self.guidance_scale is None or math.isfinite(self.guidance_scale), "--guidance-scale",
              f"must be a finite number (got {self.guidance_scale})")
        from cat_adapter.io import check_writable

        check_writable(self.output, "--output")   # before the models load and the images are made
        return self


def pick_concept(adapter, name: str | None) -> dict:
    """The adapter's concept called ``name`` (its only one when None)."""
    names = [c.get("name") for c in adapter.concepts]
    if name is None:
        return adapter.concepts[0]
    if name not in names:
        raise CatAdapterError(f"--concept {name!r}: the adapter's concepts are {', '.join(map(str, names))}")
    return adapter.concepts[names.index(name)]


def resolve_options(o: EvalOptions, adapter=None) -> dict:
    """Trigger handling: flags, else the adapter's adapter.json concept or saved config.yaml, else defaults."""
    from cat_adapter.adapters import saved_run_config

    saved: dict = {}
    if adapter is not None:
        saved = dict((saved_run_config(adapter.path) or {}).get("data", {}) or {})
        if adapter.concepts:
            saved.update({k: v for k, v in pick_concept(adapter, o.concept).items() if v is not None})
    r = {"trigger": o.trigger or saved.get("trigger"), "class_noun": o.class_noun or saved.get("class_noun"),
         "preserve_prompt": o.preserve_prompt or (saved.get("preserve_prompt") if o.has_adapter else None) or "remove",
         "caption_template": o.caption_template or saved.get("caption_template") or CAPTION_TEMPLATE,
         "caption_missing_trigger": saved.get("caption_missing_trigger") or "error"}
    if not r["trigger"]:
        raise CatAdapterError("--trigger is required (no adapter.json or config.yaml beside --adapter to read it from)")
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
    p = Path(o.adapter).expanduser().resolve()
    return (p.parent if p.is_file() else p).name


NOT_APPLICABLE_TI = ("the adapter only adds tokens: a prompt without the trigger reads none of them, so its images "
                     "are the base model's by construction (not generated twice)")


def evaluate(o: EvalOptions) -> Path:
    """Generate, write ``manifest.csv`` and the images, then score them: the outputs of ``score`` plus images/.
    The output folder is held for the run (``io.output_lock``)."""
    from cat_adapter.io import output_lock

    o.validate()
    with output_lock(o.output, "cat-adapter evaluate"):
        return _evaluate(o)


def _evaluate(o: EvalOptions) -> Path:
    from cat_adapter import shared
    from cat_adapter.adapters import load_adapter
    from cat_adapter.evaluation.drift import prediction_drift
    from cat_adapter.models import ModelSpec, load_model
    from cat_adapter.sampling import pick_device

    out = check_output(o.output, overwrite=o.overwrite)
    adapter = load_adapter(o.adapter, allow_pickle=o.allow_pickle) if o.has_adapter else None
    if adapter is not None and len(adapter.concepts) > 1 and o.concept is None:
        return evaluate_concepts(o, adapter, out)
    if o.concept is not None and adapter is None:
        raise CatAdapterError("--concept picks a concept of --adapter; the base model has none")
    if not o.data:
        raise CatAdapterError("--data is required (the concept folder; only a multi-concept adapter evaluated "
                              "without --concept takes its folders from the training run)")
    resolved = resolve_options(o, adapter)
    prompts, references, controls = load_prompts(o, resolved)
    device = pick_device(o.cpu)
    # A bad CLIP fails before generating; in a harness (shared.shared_objects) it is loaded once per process.
    embedder = shared.get(("clip", o.clip, str(device), o.clip_batch_size),
                          lambda: ClipEmbedder(o.clip, batch_size=o.clip_batch_size, device=device), mutable=False)
    dino = load_dino(o.dino, device=device, batch_size=o.clip_batch_size) if o.dino else None
    model = load_model(ModelSpec(o.model, single_file_config=o.single_file_config, allow_pickle=o.allow_pickle))
    model.to(device)  # first: apply() keeps the base model's components where they are now
    if adapter is not None:
        adapter.apply(model, o.lora_scale)
    seeds = [o.seed + k for k in range(o.images_per_prompt)]
    changes = adapter.changes_trigger_free if adapter is not None else True
    meta = {"label": default_label(o), "model": o.model, "adapter": o.adapter if o.has_adapter else None,
            "adapter_kinds": adapter.kinds if adapter is not None else [],
            "adapter_recognised": adapter.recognised if adapter is not None else None,
            "data": str(o.data), "images_per_prompt": o.images_per_prompt, **resolved,
            "settings": {k: v for k, v in asdict(o).items() if k not in ("overwrite",)},
            "package_version": cat_adapter.__version__}
    if adapter is not None and not changes:
        meta["not_applicable"] = {k: NOT_APPLICABLE_TI for k in
                                  ("base_fidelity", "base_class_diversity", "leakage", "drift_plain")}
    with atomic_dir(out) as tmp:
        plan = plan_evaluation(prompts, references, controls, seeds, out_dir=tmp, has_adapter=o.has_adapter,
                               changes_trigger_free=changes)
        memory.reset_peak()  # inference cost per image (compare's resource profile), above the loaded models
        before, t0 = memory.current_mb(), time.perf_counter()
        guidance = model.default_guidance if o.guidance_scale is None else o.guidance_scale
        render_jobs(model, plan.jobs, tmp, adapter=adapter, steps=o.sample_steps, guidance_scale=guidance,
                    height=o.resolution, width=o.resolution, batch_size=o.batch_size)
        seconds, peak = time.perf_counter() - t0, memory.peak_mb()
        meta["inference"] = {"images": len(plan.jobs), "seconds": round(seconds, 3),
                             "seconds_per_image": round(seconds / max(1, len(plan.jobs)), 4),
                             "peak_memory_above_model_mb": memory.rounded(None if peak is None or before is None
                                                                          else peak - before),
                             "device": str(device), "batch_size": o.batch_size, "sample_steps": o.sample_steps,
                             "guidance_scale": guidance}
        copy_references(plan.copies, tmp)
        if adapter is not None and changes and o.drift_samples:
            plain = [p.plain for p in prompts] + list(controls)
            per_prompt = prediction_drift(model, adapter, plain, samples=o.drift_samples, seed=o.seed,
                                          resolution=o.resolution, lora_scale=adapter.lora_scale)
            meta["drift_plain"] = sum(per_prompt.values()) / len(per_prompt)
            meta["drift_plain_per_prompt"] = per_prompt
        # Score what the manifest says, read back from disk: the same path as ``cat-adapter score``.
        rows = read_manifest(write_manifest(tmp / "manifest.csv", plan.rows))
        score_rows(rows, embedder, tmp, epsilon=o.hm_epsilon, meta={**meta, "manifest": "manifest.csv"}, dino=dino)
    return out


def concept_folders(adapter) -> dict[str, str]:
    """Each concept's folder, from the ``concepts.yaml`` its training run wrote beside the adapter."""
    from cat_adapter.io import read_yaml

    folder = adapter.path if adapter.path.is_dir() else adapter.path.parent
    path = folder / "concepts.yaml"
    if not path.is_file():
        raise CatAdapterError(f"--adapter {adapter.path}: {len(adapter.concepts)} concepts and no concepts.yaml beside "
                              "it to find their folders; give --concept NAME and its --data")
    entries = (read_yaml(path, f"--adapter {adapter.path}: concepts.yaml") or {}).get("concepts") or []
    return {e["name"]: e["data"] for e in entries}


def evaluate_concepts(o: EvalOptions, adapter, out: Path, options_for=None) -> Path:
    """Every concept of a multi-concept adapter, each a complete evaluation in ``OUT/<name>/``, plus the confusion
    report (evaluation/confusion.py) and a ``metrics.json`` holding the per-concept scores and their means.
    ``options_for(name, output)``: each concept's EvalOptions (the compare harness: its own prompt files); by
    default ``o`` with the concept's folder from the training run's concepts.yaml."""
    import json
    from dataclasses import replace

    import numpy as np

    from cat_adapter import shared
    from cat_adapter.evaluation import confusion
    from cat_adapter.io import write_json_atomic
    from cat_adapter.sampling import pick_device

    names = [c["name"] for c in adapter.concepts]
    label = default_label(o)
    if options_for is None:
        if o.data:
            raise CatAdapterError("--data names one concept's folder; with a multi-concept adapter give --concept "
                                  "NAME with it, or leave --data out to evaluate every concept from the training "
                                  "run's folders")
        folders = concept_folders(adapter)
        missing = [n for n in names if n not in folders]
        if missing:
            raise CatAdapterError(f"--adapter {adapter.path}: concepts.yaml lacks the folder of {', '.join(missing)}")

        def options_for(name: str, output: Path) -> EvalOptions:
            return replace(o, concept=name, data=folders[name], output=str(output), overwrite=False,
                           label=f"{label}:{name}")
    from cat_adapter.evaluation.concept_rates import add_concept_rates
    from cat_adapter.plugins import world_for

    world = world_for(o.model)   # a world that reads looks from pixels (the shapes world), or None
    with atomic_dir(out) as tmp, shared.shared_objects():
        per: dict[str, dict] = {}
        for name in names:
            sub = evaluate(options_for(name, tmp / name))
            per[name] = json.loads((sub / "metrics.json").read_text())
        images = {n: confusion.trigger_images(tmp / n) for n in names}
        if world is not None:
            looks = {n: confusion.look_of(confusion.reference_images(tmp / n), world) for n in names}
            for n in names:
                if looks[n] is not None:
                    per[n].update(add_concept_rates(tmp / n, looks[n], world))
            matrix, kind = confusion.rate_matrix(images, looks, world), "concept_rate"
        else:
            device = pick_device(o.cpu)
            embedder = shared.get(("clip", o.clip, str(device), o.clip_batch_size),
                                  lambda: ClipEmbedder(o.clip, batch_size=o.clip_batch_size, device=device),
                                  mutable=False)
            refs = {n: confusion.reference_images(tmp / n) for n in names}
            matrix, kind, looks = confusion.identity_matrix(images, refs, embedder), "identity_score", None
        confusion.write_confusion(tmp, names, matrix, kind)
        keys = ("prompt_score", "identity_score", "kps", "base_fidelity", "class_diversity", "leakage", "drift_plain",
                "concept_rate_trigger", "concept_rate_class", "concept_rate_control")
        means = {k: float(np.mean([per[n][k] for n in names])) for k in keys
                 if all(per[n].get(k) is not None for n in names)}
        off = matrix[~np.eye(len(names), dtype=bool)]
        write_json_atomic(tmp / "metrics.json", {
            "label": label, "model": o.model, "adapter": o.adapter, "concepts": names, **means,
            "per_concept": {n: {k: per[n].get(k) for k in keys} for n in names},
            "confusion": {"kind": kind, "rows": "trigger of concept i", "columns": "concept j",
                          "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
                          "max_off_diagonal": None if np.all(np.isnan(off)) else float(np.nanmax(off))},
            "looks": looks, "package_version": cat_adapter.__version__})
    return out
