"""Validation grids during training: base vs adapted, for y_T and its trigger-free y, fixed seeds."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from cat_adapter.sampling import generate, make_grid, save_image


def validation_grid(method, *, prompt_trigger: str, prompt_plain: str, num_images: int, steps: int,
                    guidance_scale: float, resolution: int, path: Path, autocast=None) -> list[list]:
    """Rows: base y_T, adapted y_T, base y, adapted y; columns: seeds 0..N-1, saved as a grid at ``path``; returns
    the rows (the monitor's image metrics read them). The base rows come from ``method.base()`` (LoRA off, a full
    fine-tune's frozen copy, the tokenizer without added tokens). Generation draws from its own generators: the
    run's RNG (dropout) is not touched."""
    model = method.model
    modules = list(method.modules().values())
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    seeds = list(range(num_images))
    kw = dict(steps=steps, guidance_scale=guidance_scale, height=resolution, width=resolution)
    rows, labels = [], []
    try:
        with torch.random.fork_rng(devices=[]), (autocast if autocast is not None else nullcontext()):
            for prompt in (prompt_trigger, prompt_plain):
                with method.base():
                    rows.append(generate(model, [prompt] * num_images, seeds, **kw))
                rows.append(generate(model, [prompt] * num_images, seeds, **kw))
                labels += [f"base: {prompt or '(empty)'}", f"adapted: {prompt or '(empty)'}"]
    finally:
        for m, s in zip(modules, states):
            m.train(s)
    save_image(make_grid(rows, row_labels=labels, col_labels=[f"seed {s}" for s in seeds]), path)
    return rows
