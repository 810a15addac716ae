"""Pure functions over embeddings and cosines: the paper's aggregates (Eqs. 4-11) and ours.

Nothing here loads a model or an image. ``aggregate`` turns the per-pair cosines that
``pairs.csv`` holds into every number of ``metrics.json``, so a reader can redo it by hand.

Score                 per pair (cos = Eq. 10)                         aggregate
prompt_score          cos(text(y_p), image(I^{y_T}(p, s)))  (Eq. 4)   H (Eq. 5)
prompt_score_plain    cos(text(y_p), image(I^{y}(p, s)))    (§3 text) H
identity_score        cos(image(original_i), image(I^{y_T}(caption_i, s)))  (Eq. 6)   H (Eq. 7)
kps                   cos(image(I^{y}(p, s)), image(I^{y_T}(p, s)))  (Eq. 8)   1 - H (Eq. 9)
base_fidelity         cos(image(I_base^{y}(p, s)), image(I^{y}(p, s)))          H (ours)
class_diversity       1 - cos(image(I^{y}(p, s)), image(I^{y}(p, s')))  mean over p of the mean over s < s'
base_class_diversity  the same among the base model's I_base^{y}(p, s)
leakage               cos(image(I_base^{c}(s)), image(I^{c}(s))) over control prompts c   1 - H (ours)
clip_i                the identity_score pairs' CLIP cosines                                mean (DreamBench)
dino_identity         the same pairs with DINO ViT-S/16 image embeddings (``--dino``)       mean (DreamBench)
clip_t                the prompt_score pairs' CLIP cosines (the trigger prompt's text)       mean (DreamBench)

H is dominated by its smallest values and undefined for values <= 0: they are clamped to
``epsilon`` and counted. Beside every H-based score its arithmetic mean and median of the raw
(unclamped) cosines are reported, transformed the same way (``kps_mean = 1 - mean(cos)``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

DEFAULT_EPSILON = 1e-3
HM_METRICS = ("prompt_score", "prompt_score_plain", "identity_score", "base_fidelity")
ONE_MINUS_HM_METRICS = ("kps", "leakage")
DIVERSITY_METRICS = ("class_diversity", "base_class_diversity")
MEAN_METRICS = ("clip_i", "dino_identity", "clip_t")   # DreamBench's subject fidelity and prompt fidelity: plain means
PAIR_METRICS = HM_METRICS + ONE_MINUS_HM_METRICS + DIVERSITY_METRICS + MEAN_METRICS
TEXT_REFERENCE_METRICS = ("prompt_score", "prompt_score_plain", "clip_t")  # ``reference`` is the text, not an image
TRIGGER_GROUPS = ("train", "heldout")
GROUPS = TRIGGER_GROUPS + ("control",)


def cosine(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Eq. 10: S_C(A, B) = A.B / (|A|_2 |B|_2), in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise every row (float64), so that a dot product is the cosine of Eq. 10."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class HarmonicMean:
    value: float | None
    n: int
    clamped: int   # values <= epsilon that were replaced by epsilon


def harmonic_mean(values: Iterable[float], *, epsilon: float = DEFAULT_EPSILON) -> HarmonicMean:
    """Eq. 11: H(x_1..x_n) = n / sum(1 / x_i), with every x_i <= epsilon clamped to epsilon.

    H is undefined for values <= 0 (and jumps sign around 0); the paper assumes cosines in
    [0, 1] (below Eq. 8), which CLIP cosines need not be. ``value`` is None for no values.
    """
    if epsilon <= 0:
        raise ValueError("epsilon must be > 0")
    xs = [float(v) for v in values]
    if not xs:
        return HarmonicMean(None, 0, 0)
    clamped = sum(1 for x in xs if x <= epsilon)
    value = len(xs) / sum(1.0 / max(x, epsilon) for x in xs)
    return HarmonicMean(value, len(xs), clamped)


def summarize(values: Sequence[float], *, epsilon: float = DEFAULT_EPSILON, one_minus: bool = False) -> dict:
    """H (or 1 - H), the arithmetic mean and the median of ``values``, their count and clamped count."""
    hm = harmonic_mean(values, epsilon=epsilon)
    if hm.value is None:
        return {"score": None, "mean": None, "median": None, "n": 0, "clamped": 0}
    mean, median = statistics.fmean(values), statistics.median(values)
    if one_minus:  # Eq. 9: KPS = 1 - H(...); the mean and median are transformed the same way
        return {"score": 1.0 - hm.value, "mean": 1.0 - mean, "median": 1.0 - median, "n": hm.n, "clamped": hm.clamped}
    return {"score": hm.value, "mean": mean, "median": median, "n": hm.n, "clamped": hm.clamped}


def pairwise_diversity(embeddings: np.ndarray) -> tuple[float | None, list[tuple[int, int, float]]]:
    """Mean of 1 - cos over all pairs i < j of rows (None for fewer than 2 rows), and every pair's cosine."""
    e = normalize_rows(embeddings)
    pairs = [(i, j, float(e[i] @ e[j])) for i in range(len(e)) for j in range(i + 1, len(e))]
    if not pairs:
        return None, []
    return statistics.fmean(1.0 - c for _, _, c in pairs), pairs


def diversity(cosines_by_prompt: dict[str, list[float]]) -> dict:
    """Class Diversity (ours): mean over prompts p of the mean over seed pairs of (1 - cos)."""
    per_prompt = [statistics.fmean(1.0 - c for c in cs) for cs in cosines_by_prompt.values() if cs]
    n = sum(len(cs) for cs in cosines_by_prompt.values())
    return {"score": statistics.fmean(per_prompt) if per_prompt else None, "n": n, "prompts": len(per_prompt)}


@dataclass(frozen=True)
class PairValue:
    """One row of pairs.csv: a compared pair and its cosine."""
    metric: str
    group: str
    prompt: str
    seed: int
    image: str
    reference: str   # an image path, or the text for TEXT_REFERENCE_METRICS
    cosine: float


def _scores(pairs: list[PairValue], epsilon: float) -> dict:
    """Every score of one set of pairs, with ``counts`` and ``clamped``; None where no pair exists."""
    out: dict = {}
    counts: dict[str, int] = {}
    clamped: dict[str, int] = {}
    by_metric: dict[str, list[PairValue]] = {m: [] for m in PAIR_METRICS}
    for p in pairs:
        by_metric[p.metric].append(p)
    for m in HM_METRICS + ONE_MINUS_HM_METRICS:
        s = summarize([p.cosine for p in by_metric[m]], epsilon=epsilon, one_minus=m in ONE_MINUS_HM_METRICS)
        out[m], out[f"{m}_mean"], out[f"{m}_median"] = s["score"], s["mean"], s["median"]
        counts[m], clamped[m] = s["n"], s["clamped"]
    for m in MEAN_METRICS:
        values = [p.cosine for p in by_metric[m]]
        out[m], counts[m] = (statistics.fmean(values) if values else None), len(values)
    for m in DIVERSITY_METRICS:
        by_prompt: dict[str, list[float]] = {}
        for p in by_metric[m]:
            by_prompt.setdefault(p.prompt, []).append(p.cosine)
        d = diversity(by_prompt)
        out[m] = d["score"]
        counts[m] = d["n"]
    out["counts"], out["clamped"] = counts, clamped
    return out


def aggregate(pairs: Sequence[PairValue], *, epsilon: float = DEFAULT_EPSILON) -> dict:
    """All scores pooled over every pair, the same per group under ``groups``, and notes on gaps.

    Control rows only ever give ``leakage`` pairs and trigger rows never do, so pooling every
    pair is pooling the trigger prompts (train + heldout) for all scores but Leakage.
    """
    pairs = list(pairs)
    for p in pairs:
        if p.metric not in PAIR_METRICS:
            raise ValueError(f"unknown metric {p.metric!r}")
    result = _scores(pairs, epsilon)
    result["groups"] = {g: _scores([p for p in pairs if p.group == g], epsilon)
                        for g in GROUPS if any(p.group == g for p in pairs)}
    result["notes"] = notes(result, epsilon)
    return result


def notes(scores: dict, epsilon: float) -> list[str]:
    """Human-readable notes on clamped values and scores that could not be computed."""
    out = []
    for m, k in scores["clamped"].items():
        if k:
            out.append(f"{m}: {k} of {scores['counts'][m]} cosines were <= {epsilon:g} and were clamped to it "
                       "before the harmonic mean; see its _mean and _median")
    why = {"identity_score": "no row has a reference (concept) image",
           "base_fidelity": "no row has a base-model image",
           "leakage": "no control prompts (--control-prompts / group control)",
           "prompt_score": "no trigger rows", "prompt_score_plain": "no trigger rows", "kps": "no trigger rows",
           "class_diversity": "needs >= 2 seeds per prompt",
           "base_class_diversity": "needs >= 2 seeds per prompt and base-model images",
           "clip_i": "no row has a reference (concept) image", "clip_t": "no trigger rows",
           "dino_identity": "no --dino, or no row has a reference image"}
    for m in PAIR_METRICS:
        if scores[m] is None and m != "dino_identity":   # dino_identity is opt-in: its absence is no gap
            out.append(f"{m}: null ({why[m]})")
            out.append(f"{m}: null ({why[m]})")
    return out


# --------------------------------------------------------------------------------------------
# 95% interval of a score across runs (seeds or concepts pooled under one label).
# --------------------------------------------------------------------------------------------

# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30.
_T975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243, 2.3060041, 2.2621572,
         2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495, 2.1199053, 2.1098155, 2.1009220,
         2.0930241, 2.0859634, 2.0796138, 2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305,
         2.0484071, 2.0452296, 2.0422725)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: a table up to df = 30, then the Cornish-Fisher expansion (error < 1e-4)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean across runs and the half-width t_{0.975, n-1} * sd / sqrt(n) (None for fewer than 2 runs)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    if len(xs) < 2:
        return xs[0], None
    return statistics.fmean(xs), t_quantile_975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
