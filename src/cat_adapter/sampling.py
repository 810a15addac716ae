"""Image generation with fixed seeds, and labelled image grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from cat_adapter.io import atomic_path


def seeded_latents(model, seeds: list[int], *, height: int, width: int) -> torch.Tensor:
    """Initial latents, one CPU generator per seed, so an image depends only on its seed, not on its batch."""
    shape = (1, *model.latent_shape(height, width))
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(model, prompts: list[str], seeds: list[int], *, steps: int = 30, guidance_scale: float = 7.5,
             height: int | None = None, width: int | None = None, lora_scale: float | None = None,
             negative_prompt: str | None = None, batch_size: int = 8) -> list[Image.Image]:
    """One image per (prompt, seed) pair, batched; the same seed gives the same initial noise.

    Each image also gets its own generator (seeded by its seed, after its initial noise), so stochastic
    samplers draw the same randomness for an image whatever its batch; the global RNG is not touched.
    Prompts are rewritten for added tokens (``sks`` -> ``<sks>``) as the adapter recorded.
    """
    assert len(prompts) == len(seeds)
    pipe = model.pipe
    height = height or model.default_resolution
    width = width or model.default_resolution
    device = pipe._execution_device
    dtype = model.denoiser.dtype
    images: list[Image.Image] = []
    kwargs = model.pipeline_kwargs(lora_scale)
    for i in range(0, len(prompts), batch_size):
        p, s = [model.text.rewrite(x) for x in prompts[i:i + batch_size]], seeds[i:i + batch_size]
        latents = seeded_latents(model, s, height=height, width=width).to(device, dtype)
        generators = [torch.Generator().manual_seed(int(x) + 1) for x in s]
        with torch.random.fork_rng(devices=[]):
            out = pipe(prompt=p, negative_prompt=[negative_prompt] * len(p) if negative_prompt else None,
                       latents=latents, num_inference_steps=steps, guidance_scale=guidance_scale,
                       height=height, width=width, output_type="pil", generator=generators, **kwargs)
        images.extend(out.images)
    return images


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def make_grid(rows: list[list[Image.Image]], *, row_labels: list[str] | None = None,
              col_labels: list[str] | None = None, min_cell: int = 128) -> Image.Image:
    """Images in rows, upscaled (nearest) to at least ``min_cell`` px, with optional text labels."""
    n_cols = max(len(r) for r in rows)
    w, h = rows[0][0].size
    scale = max(1, -(-min_cell // max(w, h)))
    cw, ch = w * scale, h * scale
    font = _font(max(10, min(16, ch // 8)))
    label_w = 0
    if row_labels:
        label_w = min(360, max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in row_labels) + 12)
    label_h = 20 if col_labels else 0
    pad = 2
    grid = Image.new("RGB", (label_w + n_cols * (cw + pad) + pad, label_h + len(rows) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(col_labels or []):
        draw.text((label_w + pad + j * (cw + pad) + 4, 3), text, fill="black", font=font)
    for i, row in enumerate(rows):
        y = label_h + pad + i * (ch + pad)
        if row_labels:
            draw.text((4, y + ch // 2 - 8), _fit(draw, row_labels[i], font, label_w - 8), fill="black", font=font)
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((cw, ch), Image.Resampling.NEAREST), (label_w + pad + j * (cw + pad), y))
    return grid


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_image(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def pick_device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def sample_to_folder(*, model: str, adapter: str | None, prompts: list[str], seed: int, num_images: int, output: Path,
                     lora_scale: float = 1.0, steps: int = 30, guidance_scale: float = 7.5,
                     resolution: int | None = None, batch_size: int = 4, negative_prompt: str | None = None,
                     single_file_config: str | None = None, allow_pickle: bool = False, cpu: bool = False,
                     overwrite: bool = False) -> list[Path]:
    """Write ``output/<prompt index>-<seed>.png`` for every prompt and seed, and ``output/grid.png``."""
    from cat_adapter.adapters import load_adapter
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.models import ModelSpec, load_model

    for name, value in (("--num-images", num_images), ("--steps", steps), ("--batch-size", batch_size)):
        if value < 1:
            raise CatAdapterError(f"{name} must be >= 1 (got {value})")
    for name, value in (("--lora-scale", lora_scale), ("--guidance-scale", guidance_scale)):
        if not math.isfinite(value):
            raise CatAdapterError(f"{name} must be a finite number (got {value})")
    if resolution is not None and (resolution < 8 or resolution % 8):
        raise CatAdapterError(f"--resolution must be a positive multiple of 8 (got {resolution})")
    if output.exists() and not output.is_dir():
        raise CatAdapterError(f"--output {output}: is a file; give a folder path")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise CatAdapterError(f"--output {output}: folder is not empty; pass --overwrite to replace its images")
    if adapter and adapter.strip().lower() == "none":
        adapter = None
    found = load_adapter(adapter, allow_pickle=allow_pickle) if adapter else None  # fails before the model loads
    m = load_model(ModelSpec(model, single_file_config=single_file_config, allow_pickle=allow_pickle))
    if found:
        found.apply(m, lora_scale)
    m.to(pick_device(cpu))
    seeds = [seed + i for i in range(num_images)]
    images = generate(m, [p for p in prompts for _ in seeds], seeds * len(prompts), steps=steps,
                      guidance_scale=guidance_scale, height=resolution, width=resolution,
                      lora_scale=found.lora_scale if found else None, negative_prompt=negative_prompt,
                      batch_size=batch_size)
    if output.exists() and overwrite:
        for old in list(output.glob("*-seed*.png")) + [output / "grid.png"]:
            old.unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    for k, img in enumerate(images):
        i, s = divmod(k, num_images)
        files.append(save_image(img, output / f"{i:02d}-seed{seeds[s]}.png"))
    rows = [images[i * num_images:(i + 1) * num_images] for i in range(len(prompts))]
    files.append(save_image(make_grid(rows, row_labels=prompts, col_labels=[f"seed {s}" for s in seeds]),
                            output / "grid.png"))
    return files
