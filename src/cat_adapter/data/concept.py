"""Concept folders: images with optional same-name ``.txt`` captions, validated and preprocessed.

Images are converted to RGB (RGBA/LA/P composited on white, L, 16-bit and float modes rescaled),
EXIF orientation is applied; data/buckets.py then scales each image to cover its bucket (the
``resolution`` square, or an aspect-ratio bucket with ``--buckets``) and crops the centre.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cat_adapter.data.buckets import fit, place
from cat_adapter.data.prompts import fill_template, has_trigger, plain_prompt
from cat_adapter.errors import CatAdapterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_IMAGE_SIZE = 8


@dataclass
class ConceptItem:
    image_path: Path
    caption: str          # y_T: with the trigger
    plain: str            # y: trigger-free, by --preserve-prompt
    caption_source: str   # the .txt file, or "template"
    concept: int = 0      # index of its concept (--concepts)


def list_images(folder: str | Path, option: str = "--data") -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise CatAdapterError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise CatAdapterError(f"{option} {folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))
    if not images:
        raise CatAdapterError(f"{option} {folder}: no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in this folder")
    return images


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def open_image(path: str | Path, option: str = "--data") -> Image.Image:
    """Open, EXIF-orient and convert to RGB; a corrupt or tiny image is an error naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CatAdapterError(f"{option}: cannot read image {path} ({type(exc).__name__}); remove or replace it") from None
    if min(img.size) < MIN_IMAGE_SIZE:
        raise CatAdapterError(f"{option}: image {path} is {img.size[0]}x{img.size[1]} px, smaller than "
                              f"{MIN_IMAGE_SIZE} px; remove it")
    return img


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution``, centre square crop (the one bucket of a run without --buckets)."""
    return fit(img, place(img.size, (resolution, resolution)))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_concept(
    folder: str | Path,
    *,
    trigger: str,
    class_noun: str | None,
    caption_template: str = "a photo of {trigger} {class_noun}",
    missing_trigger: str = "error",
    preserve_prompt: str = "remove",
    option: str = "--data",
) -> list[ConceptItem]:
    """Read captions (or the template) and derive y for every image; images are checked here too."""
    items = []
    images = list_images(folder, option)
    stems = {p.stem for p in images}
    for orphan in sorted(Path(folder).expanduser().glob("*.txt")):
        if orphan.stem not in stems:
            logging.getLogger("cat_adapter").warning(
                "%s: caption %s has no image of the same name beside it; it is ignored", option, orphan)
    for path in images:
        open_image(path, option)  # validate every image before any model is loaded
        txt = path.with_suffix(".txt")
        if txt.is_file():
            caption = " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
            source = str(txt)
            if not caption:
                raise CatAdapterError(f"{option}: caption file {txt} is empty; write a caption with "
                                      f"'{trigger}' or delete the file to use --caption-template")
        else:
            caption = fill_template(caption_template, trigger, class_noun)
            source = "template"
        if not has_trigger(caption, trigger):
            if missing_trigger == "prepend":
                caption = f"{trigger}, {caption}"
            else:
                raise CatAdapterError(f"{option}: caption {source} does not contain the trigger '{trigger}'; "
                                      "add it, or pass --caption-missing-trigger prepend")
        items.append(ConceptItem(path, caption, plain_prompt(caption, trigger, preserve_prompt, class_noun), source))
    return items


def load_prompt_file(path: str | Path, option: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CatAdapterError(f"{option} {path}: file not found")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise CatAdapterError(f"{option} {path}: no prompts in this file (one per line)")
    return prompts
