"""Paired generation for evaluation: which images to make, making them batched, and the manifest rows.

For every trigger prompt p and seed s the adapter makes I^{y_T}(p, s) and I^{y}(p, s), and the
base model (adapter disabled) makes I_base^{y}(p, s); control prompts c get I^{c}(s) and
I_base^{c}(s). Every image's initial latent comes from its own seed (``sampling.seeded_latents``),
so the images of a pair share their initial noise whatever batch they fall in.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from cat_adapter.evaluation.manifest import ManifestRow
from cat_adapter.sampling import generate, save_image


@dataclass(frozen=True)
class EvalPrompt:
    group: str      # train (a concept caption) or heldout (--prompts)
    trigger: str    # y_T
    plain: str      # y, by --preserve-prompt
    text: str       # the trigger-removed prompt: the text of the Prompt Score


@dataclass(frozen=True)
class Job:
    path: str       # file path relative to the output folder
    prompt: str
    seed: int
    adapter: bool   # True: with the adapter; False: the base model (adapter disabled)


@dataclass
class Plan:
    jobs: list[Job]
    rows: list[ManifestRow]
    copies: list[tuple[Path, str]]   # (concept image, relative path of its copy)


def plan_evaluation(prompts: list[EvalPrompt], references: list[tuple[Path, str]], controls: list[str],
                    seeds: list[int], *, out_dir: Path, has_adapter: bool, changes_trigger_free: bool = True) -> Plan:
    """The images to generate and the manifest rows that pair them (paths under ``out_dir/images``).

    ``references`` are (concept image, its caption y_T): one train row per image and seed, so the
    Identity Score compares each original with I^{y_T}(caption_i, s). Without an adapter the base
    images are the plain images themselves (nothing is generated twice). An adapter that cannot change
    a trigger-free prompt (Textual Inversion) makes its plain images once and has no base images: the
    measures that compare with the base model are not applicable to it.
    """
    separate_base = has_adapter and changes_trigger_free
    jobs: dict[str, Job] = {}
    trig_idx = {p: i for i, p in enumerate(dict.fromkeys(p.trigger for p in prompts))}
    plain_idx = {y: i for i, y in enumerate(dict.fromkeys(p.plain for p in prompts))}

    def job(kind: str, idx: int, prompt: str, seed: int, adapter: bool) -> Path:
        rel = f"images/{kind}/{kind[0]}{idx:03d}-seed{seed}.png"
        jobs.setdefault(rel, Job(rel, prompt, seed, adapter))
        return out_dir / rel

    def trigger_row(p: EvalPrompt, s: int, reference: Path | None = None) -> ManifestRow:
        plain = job("plain", plain_idx[p.plain], p.plain, s, True)
        base = (job("base_plain", plain_idx[p.plain], p.plain, s, False) if separate_base
                else None if has_adapter else plain)
        return ManifestRow(group=p.group, prompt_trigger=p.trigger, prompt_plain=p.plain, seed=s,
                           image_trigger=job("trigger", trig_idx[p.trigger], p.trigger, s, True), image_plain=plain,
                           base_image=base, reference=reference, prompt_text=p.text)

    rows: list[ManifestRow] = []
    copies: list[tuple[Path, str]] = []
    by_caption = {p.trigger: p for p in prompts if p.group == "train"}
    for i, (image, caption) in enumerate(references):
        rel = f"images/reference/{i:03d}-{image.name}"
        copies.append((image, rel))
        rows += [trigger_row(by_caption[caption], s, out_dir / rel) for s in seeds]
    rows += [trigger_row(p, s) for p in prompts if p.group != "train" for s in seeds]
    for k, c in enumerate(dict.fromkeys(controls)):
        for s in seeds:
            adapted = job("control", k, c, s, True)
            base = (job("base_control", k, c, s, False) if separate_base
                    else None if has_adapter else adapted)
            rows.append(ManifestRow(group="control", prompt_trigger=None, prompt_plain=c, seed=s, image_trigger=None,
                                    image_plain=adapted, base_image=base))
    return Plan(list(jobs.values()), rows, copies)


def render_jobs(model, jobs: list[Job], out_dir: Path, *, adapter=None, steps: int, guidance_scale: float,
                height: int | None = None, width: int | None = None, batch_size: int = 8) -> None:
    """Generate every job, batched across prompts and seeds: with the adapter, then in ``adapter.base(model)``. A
    progress bar per phase on a terminal (none when stderr is not one)."""
    from tqdm.auto import tqdm

    for with_adapter in (True, False):
        todo = [j for j in jobs if j.adapter == with_adapter]
        if not todo:
            continue
        ctx = adapter.base(model) if (adapter is not None and not with_adapter) else nullcontext()
        scale = adapter.lora_scale if (adapter is not None and with_adapter) else None
        chunk = batch_size * 4  # save as we go: memory stays bounded however many images there are
        label = "images, adapted" if with_adapter and adapter is not None else "images, base model"
        with ctx, tqdm(total=len(todo), desc=label, unit="img", disable=None, leave=False) as bar:
            for i in range(0, len(todo), chunk):
                part = todo[i:i + chunk]
                images = generate(model, [j.prompt for j in part], [j.seed for j in part], steps=steps,
                                  guidance_scale=guidance_scale, height=height, width=width, lora_scale=scale,
                                  batch_size=batch_size)
                for j, img in zip(part, images):
                    save_image(img, out_dir / j.path)
                bar.update(len(part))


def copy_references(copies: list[tuple[Path, str]], out_dir: Path) -> None:
    """Copy the concept images byte for byte, so the output folder holds every compared image."""
    for src, rel in copies:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out_dir / rel)
