"""Aspect-ratio buckets (``--buckets``): where each image is resized and cropped to before it is encoded.

The buckets are the sizes (width, height) whose sides are multiples of ``step`` (by default the model's
size multiple: VAE factor x U-Net downsampling, 64 for Stable Diffusion), lie in [min_side, max_side],
and whose area is at most ``resolution ** 2`` (the max-area rule of kohya's sd-scripts): for each width
the tallest such height, both orientations, plus the largest square. An image goes to the bucket whose
aspect ratio is nearest its own (on a log scale, so 2:1 and 1:2 are equally far from 1:1), is scaled to
cover it and centre-cropped; its original size and crop offset are kept (SDXL conditions on them).

Without ``--buckets`` there is one bucket, the ``resolution`` square, and the same resize and crop: a
run without buckets sees exactly the pixels it always saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class Placement:
    """Where one image goes: its bucket, its size after EXIF orientation, the size it is scaled to (covering the
    bucket) and the crop's top-left corner in that scaled image."""

    bucket: Size
    original: Size
    resized: Size
    crop: Size  # (left, top)


def bucket_sizes(resolution: int, step: int, min_side: int, max_side: int) -> list[Size]:
    """Every (width, height) with sides multiples of ``step`` in [min_side, max_side] and area <= resolution**2
    that is maximal for its width, both orientations; sorted by aspect ratio (width / height)."""
    area = resolution * resolution
    lo, hi = math.ceil(min_side / step) * step, max_side // step * step
    side = min(hi, max(lo, resolution // step * step))
    sizes = {(side, side)}
    for w in range(lo, hi + 1, step):
        h = min(hi, area // w // step * step)
        if h >= lo:
            sizes.update({(w, h), (h, w)})
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def nearest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's on a log scale; ties go to the larger area."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def place(size: Size, bucket: Size) -> Placement:
    """Scale (w, h) to cover ``bucket`` (the smallest scale at which both sides reach it), centre the crop."""
    (w, h), (bw, bh) = size, bucket
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return Placement(bucket, (w, h), (nw, nh), ((nw - bw) // 2, (nh - bh) // 2))


def fit(img: Image.Image, placement: Placement) -> Image.Image:
    """The image resized (bicubic) and cropped as ``placement`` says."""
    (bw, bh), (left, top) = placement.bucket, placement.crop
    if img.size != placement.original:
        raise ValueError(f"image is {img.size[0]}x{img.size[1]}, the placement was made for {placement.original}")
    img = img.resize(placement.resized, Image.Resampling.BICUBIC)
    return img.crop((left, top, left + bw, top + bh))
