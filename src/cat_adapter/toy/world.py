"""The shapes world: one shape on a background, rendered deterministically from a seed, with captions.

Attributes of a scene: shape, fill colour, pattern (solid, stripes or dots in a second colour that
covers a minority of the shape, so the fill is always the majority colour), outline (none or a
colour), background (light or dark), size and position. A caption names some attributes and leaves
the others out ("a circle", "a red striped star", "a square with a black outline on a dark
background"), so an unnamed attribute varies: "a circle" means circles of many looks. No trigger
word ever appears in the base world's captions.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (250, 140, 0), "cyan": (0, 210, 220), "pink": (250, 130, 190),
    "white": (255, 255, 255), "black": (0, 0, 0),
}
COLORS = tuple(PALETTE)
PATTERNS = ("solid", "stripes", "dots")
PATTERN_WORDS = {"solid": "solid", "stripes": "striped", "dots": "dotted"}
OUTLINES = ("none",) + COLORS
BACKGROUNDS = ("light", "dark")
BACKGROUND_RANGE = {"light": (190, 235), "dark": (25, 70)}   # grey levels of each background kind
RESOLUTION = 32
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    fill: str
    pattern: str = "solid"
    pattern_color: str | None = None    # second colour of stripes/dots
    outline: str = "none"
    background: str = "light"
    background_level: int = 215         # grey level of the background
    size: float = 0.6                   # shape diameter as a fraction of the image side
    cx: float = 0.5                     # centre, as fractions of the image side
    cy: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def _contrast_ok(color: str, background: str) -> bool:
    """White shapes on light and black shapes on dark backgrounds would be hard to see: avoided."""
    return not ((color == "white" and background == "light") or (color == "black" and background == "dark"))


def sample_scene(rng: random.Random, **fixed: str) -> Scene:
    """A random scene; any attribute given in ``fixed`` (shape, fill, pattern, pattern_color, outline,
    background) is kept. Colours never clash: pattern colour != fill, outline != fill."""
    shape = fixed.get("shape") or rng.choice(SHAPES)
    background = fixed.get("background") or rng.choice(
        [b for b in BACKGROUNDS if not fixed.get("fill") or _contrast_ok(fixed["fill"], b)])
    fill = fixed.get("fill") or rng.choice([c for c in COLORS if _contrast_ok(c, background)])
    pattern = fixed.get("pattern") or rng.choice(PATTERNS)
    pattern_color = fixed.get("pattern_color")
    if pattern != "solid" and pattern_color is None:
        pattern_color = rng.choice([c for c in COLORS if c != fill])
    if pattern == "solid":
        pattern_color = None
    outline = fixed.get("outline") or (rng.choice([c for c in COLORS if c != fill]) if rng.random() < 0.4 else "none")
    lo, hi = BACKGROUND_RANGE[background]
    size = rng.uniform(0.5, 0.85)
    margin = size / 2 + 0.04
    return Scene(shape=shape, fill=fill, pattern=pattern, pattern_color=pattern_color, outline=outline,
                 background=background, background_level=rng.randint(lo, hi), size=size,
                 cx=rng.uniform(margin, 1 - margin), cy=rng.uniform(margin, 1 - margin))


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(math.radians(-90 + 36 * k)),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(math.radians(-90 + 36 * k))) for k in range(10)]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 17, cy - r * (y + 2) / 17))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(scene: Scene, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = scene.cx * side, scene.cy * side, scene.size * side / 2
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_shape_points(scene.shape, cx, cy, r), fill=255)
    return mask


def _pattern_mask(scene: Scene, side: int) -> Image.Image:
    """Stripes cover 1/4 of the area and dots about 1/4: always a clear minority of the shape.

    The period is fixed in output pixels (8 px at 32 px), so patterns stay legible on small shapes."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    period = round(side * 8 / 32)
    if scene.pattern == "stripes":
        width = period / 4
        for x0 in range(-side, 2 * side, period):  # diagonal stripes
            draw.polygon([(x0, 0), (x0 + width, 0), (x0 + width + side, side), (x0 + side, side)], fill=255)
    elif scene.pattern == "dots":
        rad = period * 0.28
        for y in range(period // 2, side, period):
            for x in range(period // 2, side, period):
                draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=255)
    return mask


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """The scene as an RGB image; drawn at SUPERSAMPLE x the resolution and downsampled (anti-aliased)."""
    side = resolution * SUPERSAMPLE
    level = scene.background_level
    img = Image.new("RGB", (side, side), (level, level, level))
    shape = _shape_mask(scene, side)
    img.paste(PALETTE[scene.fill], mask=shape)
    if scene.pattern != "solid":
        pat = _pattern_mask(scene, side)
        both = Image.fromarray(((np.asarray(shape) > 0) & (np.asarray(pat) > 0)).astype(np.uint8) * 255)
        img.paste(PALETTE[scene.pattern_color], mask=both)
    if scene.outline != "none":
        width = round(side * 2.5 / 32)  # 2.5 px at 32 px: at least two whole pixels after downsampling
        draw = ImageDraw.Draw(img)
        cx, cy, r = scene.cx * side, scene.cy * side, scene.size * side / 2
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=PALETTE[scene.outline], width=width)
        else:
            pts = _shape_points(scene.shape, cx, cy, r)
            draw.line(pts + [pts[0]], fill=PALETTE[scene.outline], width=width, joint="curve")
    return img.resize((resolution, resolution), Image.Resampling.BOX)


def caption_named(scene: Scene, rng: random.Random, *, trigger: str | None = None,
                  name_all: bool = False) -> tuple[str, dict[str, str]]:
    """A caption naming a random subset of the scene's attributes (all of them with ``name_all``), and
    the attributes it names ({"shape": ..., "fill": ..., "pattern": ..., "outline": ..., "background": ...}).

    The shape is always named; with ``trigger`` it stands right before the shape ("a sks circle").
    A solid fill is named "solid" and no outline "without an outline" as often as the other values.
    """
    name = (lambda p: True) if name_all else (lambda p: rng.random() < p)  # noqa: E731
    named = {"shape": scene.shape}
    words = []
    if name(0.6):
        words.append(scene.fill)
        named["fill"] = scene.fill
    if name(0.5):
        words.append(PATTERN_WORDS[scene.pattern])
        named["pattern"] = scene.pattern
    if trigger:
        words.append(trigger)
    words.append(scene.shape)
    text = ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
    if name(0.5):
        text += f" with a {scene.outline} outline" if scene.outline != "none" else " without an outline"
        named["outline"] = scene.outline
    if name(0.3):
        text += f" on a {scene.background} background"
        named["background"] = scene.background
    return text, named


def caption(scene: Scene, rng: random.Random, *, trigger: str | None = None, name_all: bool = False) -> str:
    """A caption naming a random subset of the scene's attributes: see ``caption_named``."""
    return caption_named(scene, rng, trigger=trigger, name_all=name_all)[0]


def consistent(named: dict[str, str], scene: Scene) -> bool:
    """Whether every attribute a caption names is true of ``scene``."""
    return all(getattr(scene, key) == value for key, value in named.items())


def sample_pair(seed: int, resolution: int = RESOLUTION) -> tuple[Image.Image, str, Scene]:
    """One training example of the base world: (image, caption, scene), a pure function of ``seed``."""
    rng = random.Random(seed)
    scene = sample_scene(rng)
    return render(scene, resolution), caption(scene, rng), scene
