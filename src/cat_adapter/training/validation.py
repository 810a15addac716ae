"""Validation grids during training: base vs adapted, for y_T and its trigger-free y, fixed seeds."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from cat_adapter.methods.lora.adapter import adapter_disabled
from cat_adapter.sampling import generate, make_grid, save_image


def validation_grid(pipe, params: list[torch.nn.Parameter], *, prompt_trigger: str, prompt_plain: str, num_images: int,
                    steps: int, guidance_scale: float, resolution: int, path: Path, autocast=None) -> Path:
    """Rows: base y_T, adapted y_T, base y, adapted y; columns: seeds 0..num_images-1."""
    unet = pipe.unet
    was_training = unet.training
    unet.eval()
    seeds = list(range(num_images))
    kw = dict(steps=steps, guidance_scale=guidance_scale, height=resolution, width=resolution)
    ctx = autocast if autocast is not None else nullcontext()
    rows, labels = [], []
    with ctx:
        for prompt in (prompt_trigger, prompt_plain):
            with adapter_disabled(unet, params):
                rows.append(generate(pipe, [prompt] * num_images, seeds, **kw))
            rows.append(generate(pipe, [prompt] * num_images, seeds, **kw))
            labels += [f"base: {prompt or '(empty)'}", f"adapted: {prompt or '(empty)'}"]
    unet.train(was_training)
    return save_image(make_grid(rows, row_labels=labels, col_labels=[f"seed {s}" for s in seeds]), path)
