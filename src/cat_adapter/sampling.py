"""Image generation with fixed seeds, and labelled image grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from cat_adapter.io import atomic_path
from cat_adapter.options import check, opt

SAMPLE_STEPS = 30   # sampling steps of sample and evaluate when none are given
MODEL_HELP = ("Base model: hub id, diffusers folder, single-file .safetensors, or toy (the built-in shapes world).")


def seeded_latents(model, seeds: list[int], *, height: int, width: int) -> torch.Tensor:
    """Initial latents, one CPU generator per seed, so an image depends only on its seed, not on its batch."""
    shape = (1, *model.latent_shape(height, width))
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(model, prompts: list[str], seeds: list[int], *, steps: int = SAMPLE_STEPS, guidance_scale: float | None = None,
             height: int | None = None, width: int | None = None, lora_scale: float | None = None,
             negative_prompt: str | None = None, batch_size: int = 8) -> list[Image.Image]:
    """One image per (prompt, seed) pair, batched; the same seed gives the same initial noise.

    Each image also gets its own generator (seeded by its seed, after its initial noise), so stochastic
    samplers draw the same randomness for an image whatever its batch; the global RNG is not touched.
    Prompts are rewritten for added tokens (``sks`` -> ``<sks>``) as the adapter recorded. ``guidance_scale``
    None: the model's pipeline's own default.
    """
    assert len(prompts) == len(seeds)
    guidance_scale = model.default_guidance if guidance_scale is None else guidance_scale
    pipe = model.pipe
    height = height or model.default_resolution
    width = width or model.default_resolution
    device = pipe._execution_device
    dtype = model.denoiser.dtype
    images: list[Image.Image] = []
    kwargs = model.pipeline_kwargs(lora_scale)
    for i in range(0, len(prompts), batch_size):
        p, s = [model.text.rewrite(x) for x in prompts[i:i + batch_size]], seeds[i:i + batch_size]
        latents = model.pipeline_latents(seeded_latents(model, s, height=height, width=width)).to(device, dtype)
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


def save_image(img: Image.Image, path: str | Path, *, parameters: str | None = None) -> Path:
    """A PNG written atomically; ``parameters``: the text chunk A1111 and ComfyUI users read (how it was made)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return path


def parameters_text(prompt: str, *, negative_prompt: str | None, steps: int, guidance: float, seed: int, size: tuple,
                    model: str, adapter: str | None, lora_scale: float | None) -> str:
    """A1111's ``parameters`` layout: the prompt, a negative-prompt line, then ``key: value`` pairs."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [("Steps", steps), ("CFG scale", guidance), ("Seed", seed), ("Size", f"{size[0]}x{size[1]}"),
             ("Model", model), ("Adapter", adapter or "none")] + ([("Lora scale", lora_scale)] if adapter else [])
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs) + ", Generator: cat-adapter")
    return "\n".join(lines)


def pick_device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


@dataclass
class SampleOptions:
    """What ``cat-adapter sample`` takes (the CLI's flags, one field each), checked by ``validate``."""
    model: str = opt(path="in", help=MODEL_HELP)
    prompts: list[str] = opt(flag="--prompt", append=True, help="Prompt; repeat for several.")
    output: str = opt(path="out", help="Folder for the PNGs and grid.png.")
    adapter: str | None = opt(None, path="in", aliases=("--lora",), help=(
        "Adapter: a cat-adapter output folder (any method), a diffusers LoRA folder or .safetensors, a kohya LoRA file, "
        "a learned_embeds.safetensors; none (or omitted) for the base model. --lora is an alias."))
    lora_scale: float = opt(1.0, "Multiplier of the LoRA update.")
    negative_prompt: str | None = opt(None, "Negative prompt.")
    seed: int = opt(0, "Seed of the first image; image i uses seed + i.")
    num_images: int = opt(4, "Images per prompt.")
    steps: int = opt(SAMPLE_STEPS, "Sampling steps.")
    guidance_scale: float | None = opt(None, "Classifier-free guidance scale (default: the model's pipeline's own: "
                                       "7.5 for SD, 5 for SDXL, 3.5 for Flux).")
    resolution: int | None = opt(None, "Image size (default: the model's own).")
    batch_size: int = opt(4, "Images per forward batch.")
    single_file_config: str | None = opt(None, "Config folder for a single-file --model (offline).", path="in")
    allow_pickle: bool = opt(False, "Allow non-safetensors weights (weights_only=True).")
    cpu: bool = opt(False, "Run on the CPU even if a GPU is present.")
    overwrite: bool = opt(False, "Replace the images of a non-empty --output folder.")

    def validate(self) -> "SampleOptions":
        for name in ("num_images", "steps", "batch_size"):
            value = getattr(self, name)
            check(value >= 1, "--" + name.replace("_", "-"), f"must be >= 1 (got {value})")
        for name in ("lora_scale", "guidance_scale"):
            value = getattr(self, name)
            check(value is None or math.isfinite(value), "--" + name.replace("_", "-"),
                  f"must be a finite number (got {value})")
        check(self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0), "--resolution",
              f"must be a positive multiple of 8 (got {self.resolution})")
        out = Path(self.output)
        check(not out.exists() or out.is_dir(), f"--output {out}:", "is a file; give a folder path")
        check(not (out.exists() and any(out.iterdir())) or self.overwrite, f"--output {out}:",
              "folder is not empty; pass --overwrite to replace its images")
        if self.adapter and self.adapter.strip().lower() == "none":
            self.adapter = None
        from cat_adapter.io import check_writable

        check_writable(out, "--output")   # before the model loads and the images are made
        return self


def sample_to_folder(o: SampleOptions) -> list[Path]:
    """Write ``output/<prompt index>-<seed>.png`` for every prompt and seed, and ``output/grid.png``; the output
    folder is held for the run (``io.output_lock``)."""
    from cat_adapter.io import output_lock

    o.validate()
    with output_lock(o.output, "cat-adapter sample"):
        return _sample_to_folder(o)


def _sample_to_folder(o: SampleOptions) -> list[Path]:
    from cat_adapter.adapters import load_adapter
    from cat_adapter.models import ModelSpec, load_model

    output = Path(o.output)
    found = load_adapter(o.adapter, allow_pickle=o.allow_pickle) if o.adapter else None  # fails before the model loads
    m = load_model(ModelSpec(o.model, single_file_config=o.single_file_config, allow_pickle=o.allow_pickle))
    m.to(pick_device(o.cpu))  # first: apply() keeps the base model's components where they are now
    if found:
        found.apply(m, o.lora_scale)
    seeds = [o.seed + i for i in range(o.num_images)]
    images = generate(m, [p for p in o.prompts for _ in seeds], seeds * len(o.prompts), steps=o.steps,
                      guidance_scale=o.guidance_scale, height=o.resolution, width=o.resolution,
                      lora_scale=found.lora_scale if found else None, negative_prompt=o.negative_prompt,
                      batch_size=o.batch_size)
    if output.exists() and o.overwrite:
        for old in list(output.glob("*-seed*.png")) + [output / "grid.png"]:
            old.unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    files, records = [], []
    guidance = m.default_guidance if o.guidance_scale is None else o.guidance_scale
    for k, img in enumerate(images):
        i, s = divmod(k, o.num_images)
        text = parameters_text(o.prompts[i], negative_prompt=o.negative_prompt, steps=o.steps, guidance=guidance,
                               seed=seeds[s], size=img.size, model=o.model, adapter=o.adapter,
                               lora_scale=o.lora_scale if o.adapter else None)
        files.append(save_image(img, output / f"{i:02d}-seed{seeds[s]}.png", parameters=text))
        records.append({"image": files[-1].name, "prompt": o.prompts[i], "negative_prompt": o.negative_prompt,
                        "seed": seeds[s], "steps": o.steps, "guidance_scale": guidance, "width": img.size[0],
                        "height": img.size[1], "model": o.model, "adapter": o.adapter,
                        "lora_scale": o.lora_scale if o.adapter else None})
    from cat_adapter.io import write_json_atomic

    write_json_atomic(output / "samples.json", records)
    rows = [images[i * o.num_images:(i + 1) * o.num_images] for i in range(len(o.prompts))]
    files.append(save_image(make_grid(rows, row_labels=o.prompts, col_labels=[f"seed {s}" for s in seeds]),
                            output / "grid.png"))
    return files
