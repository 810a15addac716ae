"""Analytic (pixel-based, no neural net) analyzer of shapes-world images: fill, pattern, outline.

How it reads an image (resized to 32x32):

* the background grey and its noise level come from the border pixels (robust median / MAD);
* every pixel is explained as a palette colour, the background (a ball of its noise level), or a
  blend of two of them (anti-aliased edges, blur), whichever is cheapest in RGB distance, giving
  per-pixel colour masses; the foreground is where the background mass is below one half (specks
  dropped, enclosed holes filled: white parts on a light / black parts on a dark background);
* depth = distance in pixels from the foreground's edge. The outline is a colour that owns the
  outer ring (depths 1-2, the 2.5 px stroke) but not the core, and hides the fill from the edge
  layer; the fill is the majority colour of the interior (outline colour excluded); a pattern is a
  second interior colour covering >= 10 % of it whose map correlates with diagonal stripes or with
  an 8 px dot grid (the world's geometry, any phase; the better family wins).

Robust to mild blur, noise and colour shift (tolerant nearest-palette masses and majority votes,
not exact pixels). Known limitations:

* An outline coloured like the background (white on a light, black on a dark background) is found
  while it stays brighter/darker than the background by more than the noise; strong blur or noise,
  or a background grey very close to white/black, merges it into the background: "none".
* Small or thin shapes leave few interior pixels. A small shape without outline whose middle is
  covered by one pattern dot looks like an outlined shape with that dot's colour as fill; this is
  told apart only by pattern pieces reaching the edge layer, so it is sometimes misread.
* A pattern in the outline's colour that only touches the inner rim of a small outlined shape may
  be read as outline blur ("solid"); a pattern whose period or geometry differs much from the
  world's (8 px, thin diagonal stripes, round dots) may be read as the wrong kind or "solid".
* Colours snap to the nearest palette colour: a strong colour shift flips close pairs
  (orange/red/yellow, pink/red, purple/blue), and a uniform darkening looks like a black blend.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from cat_adapter.toy.world import PALETTE, RESOLUTION

_NAMES: tuple[str, ...] = tuple(PALETTE)
_COLS = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)
_BG = len(_NAMES)                 # index of the background in the mass arrays
# blends (pairs of colour indices) and their extra cost in RGB units: edges against the background are
# the most common blend, so they are cheaper (and win ties along the grey axis against white/black blends)
_PAIRS = [(i, _BG) for i in range(_BG)] + [(i, j) for i in range(_BG) for j in range(i + 1, _BG)]
_PAIR_I, _PAIR_J = np.array([i for i, _ in _PAIRS]), np.array([j for _, j in _PAIRS])
_PAIR_COST = np.array([6.0 if j == _BG else 12.0 for _, j in _PAIRS])
_BG_RADIUS = 1.5                  # background ball radius, in units of the border's noise level
_MIN_SHARE = 0.1                  # a pattern colour covers at least this share of the interior ...
_MIN_CORR = 0.35                  # ... and its map correlates at least this well with stripes or dots


def nearest_color(rgb: Sequence[float]) -> str:
    """The palette colour nearest to ``rgb`` (Euclidean in RGB, 0-255)."""
    d = np.linalg.norm(_COLS - np.asarray(rgb, dtype=np.float64)[:3], axis=1)
    return _NAMES[int(np.argmin(d))]


def _to_array(image: Image.Image) -> np.ndarray:
    """The image as a (32, 32, 3) float RGB array (BOX-resized when its size differs)."""
    img = image.convert("RGB")
    if img.size != (RESOLUTION, RESOLUTION):
        img = img.resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64)


def _unmix(px: np.ndarray, bg: np.ndarray, bg_radius: float = 0.0) -> np.ndarray:
    """Per-pixel masses (N, 11) over palette colours + background: the cheapest pure colour or blend.

    The background is a ball of ``bg_radius`` (its noise level) rather than a point."""
    refs = np.vstack([_COLS, bg[None]])
    n = len(px)
    p2 = (px * px).sum(1)[:, None]
    pure = np.sqrt(np.maximum(p2 - 2 * px @ refs.T + (refs * refs).sum(1)[None], 0.0))     # (N, K)
    pure[:, _BG] = np.maximum(pure[:, _BG] - bg_radius, 0.0) - 1e-6   # the background wins ties
    a, d = refs[_PAIR_I], refs[_PAIR_J] - refs[_PAIR_I]                                  # (P, 3)
    dd = np.maximum((d * d).sum(1), 1e-6)[None]
    pa2 = np.maximum(p2 - 2 * px @ a.T + (a * a).sum(1)[None], 0.0)                     # |p - a|^2
    pad = px @ d.T - (a * d).sum(1)[None]                                                # (p - a).d
    t = np.clip(pad / dd, 0.0, 1.0)
    resid = np.sqrt(np.maximum(pa2 - 2 * t * pad + t * t * dd, 0.0)) + _PAIR_COST[None]
    rows = np.arange(n)
    bp, bm = pure.argmin(1), resid.argmin(1)
    mix = resid[rows, bm] < pure[rows, bp]
    out = np.zeros((n, len(refs)))
    out[rows[~mix], bp[~mix]] = 1.0
    tt = t[rows, bm][mix]
    out[rows[mix], _PAIR_I[bm[mix]]] += 1.0 - tt
    out[rows[mix], _PAIR_J[bm[mix]]] += tt
    return out


def _erode(mask: np.ndarray, square: bool) -> np.ndarray:
    """One erosion step with the 4-neighbour cross (or, with ``square``, the 3x3 square)."""
    p = np.pad(mask, 1)
    out = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    if square:
        out &= p[:-2, :-2] & p[:-2, 2:] & p[2:, :-2] & p[2:, 2:]
    return out


def _depth(mask: np.ndarray) -> np.ndarray:
    """Distance to the outside in pixels (1 = edge layer), alternating 4- and 8-neighbour erosions."""
    depth = np.zeros(mask.shape, dtype=np.int64)
    cur, k = mask.copy(), 0
    while cur.any():
        k += 1
        depth[cur] = k
        cur = _erode(cur, square=k % 2 == 0)
    return depth


def _neighbours(mask: np.ndarray, diagonal: bool) -> list[np.ndarray]:
    """Views of ``mask`` shifted by one pixel towards each 4- (or 8-) neighbour, zero-padded."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else [])
    return [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in steps]


def _drop_specks(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_size`` pixels."""
    lab = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        new = np.where(mask, np.maximum.reduce([lab] + _neighbours(lab, True)), 0)
        if np.array_equal(new, lab):
            break
        lab = new
    return mask & (np.bincount(lab.ravel())[lab] >= min_size)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus everything that the outside cannot reach (4-connected) from the image border."""
    outside = ~mask
    reach = np.zeros_like(mask)
    reach[[0, -1], :] = outside[[0, -1], :]
    reach[:, [0, -1]] = outside[:, [0, -1]]
    while True:
        new = outside & np.logical_or.reduce([reach] + _neighbours(reach, False))
        if np.array_equal(new, reach):
            return ~reach
        reach = new


def _none(frac: float) -> dict:
    """The answer for an image without a clear foreground."""
    return {"fill": None, "pattern": None, "outline": None, "pattern_color": None, "foreground_fraction": frac}


def analyze(image: Image.Image) -> dict:
    """The look of the shape in ``image`` (PIL, any size and mode):

    ``{"fill": colour, "pattern": "solid"|"stripes"|"dots", "outline": "none"|colour,
    "pattern_color": colour|None, "foreground_fraction": float}``, colours being palette names.
    fill, pattern, outline and pattern_color are None when there is no clear foreground (a blank or
    noise image, a border that is not a uniform grey, a foreground under 2 % or over 90 %)."""
    arr = _to_array(image)
    h, w, _ = arr.shape
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    bg = np.median(border, axis=0)
    sigma = 1.4826 * float(np.median(np.abs(border - bg)))    # robust noise level per channel
    if sigma > 35 or np.ptp(bg) > 90:      # border is not a uniform grey: no clean scene
        return _none(0.0)
    mass = _unmix(arr.reshape(-1, 3), bg, _BG_RADIUS * sigma).reshape(h, w, -1)
    fg0 = mass[..., _BG] < 0.5
    fg = _fill_holes(_drop_specks(fg0, 4))
    frac = float(fg.mean())
    if frac < 0.02 or frac > 0.9:
        return _none(frac)
    # enclosed background-looking pixels are white (light background) or black (dark) shape parts
    holes = fg & ~fg0
    if holes.any():
        near = _NAMES.index("white" if bg.mean() > 128 else "black")
        mass[holes, near] += mass[holes, _BG]
        mass[holes, _BG] = 0.0
    depth = _depth(fg)
    return _decide(mass, depth, frac)


def _layer_mass(mass: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Summed palette masses (10,) of the selected pixels, background left out."""
    return mass[sel][:, :_BG].sum(0)


def _share(m: np.ndarray, k: int) -> float:
    """Share of colour ``k`` in the masses ``m``."""
    return float(m[k] / max(m.sum(), 1e-9))


def _deepest(depth: np.ndarray, want: int, min_pixels: int) -> np.ndarray:
    """Pixels at depth >= ``want``, or the deepest level that still has ``min_pixels``."""
    level = min(want, int(depth.max()))
    while level > 1 and (depth >= level).sum() < min_pixels:
        level -= 1
    return depth >= level


def _decide(mass: np.ndarray, depth: np.ndarray, frac: float) -> dict:
    """Outline, fill and pattern from the colour masses by depth (1 = the shape's edge layer)."""
    # outline: a colour that owns the outer ring (depths 1-2, about 2.5 px) but not the core
    ring = _layer_mass(mass, (depth >= 1) & (depth <= 2))
    core_sel = _deepest(depth, 4, 6)
    core = _layer_mass(mass, core_sel)
    o = int(np.argmax(ring))
    outline = "none"
    r_share, c_share = _share(ring, o), _share(core, o)
    if depth[core_sel].min() >= 3 and r_share >= 0.5 and r_share - c_share >= 0.35 and c_share <= 0.55:
        inner = _layer_mass(mass, _deepest(depth, 3, 4))
        inner[o] = -1.0
        f = int(np.argmax(inner))
        # a real outline hides the fill from the edge layer (up to blur); a pattern blob in the middle
        # of a small shape without outline (which mimics an outlined shape) usually has pieces there
        small = (depth >= 4).sum() < 20
        if _share(_layer_mass(mass, depth == 1), f) <= (0.03 if small else 0.2):
            outline = _NAMES[o]
    if outline == "none":
        f = int(np.argmax(_layer_mass(mass, _deepest(depth, 2, 4))))
    # pattern: a second colour covering a noticeable share of the interior, arranged as stripes or dots
    pat_sel = _deepest(depth, 4 if outline != "none" else 2, 6)
    pm = _layer_mass(mass, pat_sel)
    others = pm.copy()
    others[f] = -1.0
    q = int(np.argmax(others))
    if outline == _NAMES[q]:       # outline colour blurred into the interior is no pattern: look deeper
        deeper = depth >= 5
        if deeper.sum() >= 16:
            pat_sel, pm = deeper, _layer_mass(mass, deeper)
    pattern, pattern_color = "solid", None
    if pm[q] / max(pm[q] + pm[f], 1e-9) >= _MIN_SHARE and pm[q] >= 2.0:
        kind, corr = _stripes_or_dots(mass[..., q], pat_sel)
        if corr >= _MIN_CORR:
            pattern, pattern_color = kind, _NAMES[q]
    return {"fill": _NAMES[f], "pattern": pattern, "outline": outline, "pattern_color": pattern_color,
            "foreground_fraction": frac}


def _pattern_templates(side: int = RESOLUTION, sub: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Coverage maps (K, side, side) of diagonal stripes (both diagonals) and of the dot grid, at
    half-pixel phase steps: the world's geometry (8 px period at 32 px, stripes 2 px wide along x,
    dots of radius 2.24 px), with a free phase so that shifted patterns match too."""
    period = side * 8 / 32
    c = (np.arange(side * sub) + 0.5) / sub
    xx, yy = np.meshgrid(c, c)
    phases = np.arange(0.0, period, 0.5)

    def down(m: np.ndarray) -> np.ndarray:
        return m.reshape(side, sub, side, sub).mean(axis=(1, 3))
    stripes = [down(((xx + sign * yy - ph) % period) < period / 4) for sign in (-1, 1) for ph in phases]
    rad2 = (period * 0.28) ** 2
    dots = [down(((xx - px) % period - period / 2) ** 2 + ((yy - py) % period - period / 2) ** 2 < rad2)
            for px in phases for py in phases]
    return np.array(stripes), np.array(dots)


_STRIPES, _DOTS = _pattern_templates()


def _best_corr(t: np.ndarray, region: np.ndarray, templates: np.ndarray) -> float:
    """Highest correlation over ``region`` between the pattern map ``t`` and any of the templates."""
    v = t[region] - t[region].mean()
    tm = templates[:, region]
    tm = tm - tm.mean(axis=1, keepdims=True)
    den = np.sqrt((tm * tm).sum(1) * (v * v).sum()) + 1e-9
    return float(((tm @ v) / den).max())


def _stripes_or_dots(t: np.ndarray, region: np.ndarray) -> tuple[str, float]:
    """Whichever pattern family (diagonal stripes, dot grid) fits the pattern-colour map better, and
    how well (correlation)."""
    cs, cd = _best_corr(t, region, _STRIPES), _best_corr(t, region, _DOTS)
    return ("stripes", cs) if cs > cd else ("dots", cd)


def matches_look(image: Image.Image, look: dict) -> bool:
    """True when the analyzed fill, pattern and outline equal ``look``'s (pattern_color is not compared)."""
    got = analyze(image)
    return all(got[k] is not None and got[k] == look.get(k) for k in ("fill", "pattern", "outline"))


def concept_rate(images: Iterable[Image.Image], look: dict) -> float:
    """Share of ``images`` whose analyzed look matches ``look`` (0.0 for no images)."""
    hits = [matches_look(img, look) for img in images]
    return sum(hits) / len(hits) if hits else 0.0
