"""How far concepts of one adapter bleed into each other: for the trigger prompts of concept i, how often concept
j's look appears.

Where the model has a world that reads looks from pixels (the shapes world, ``plugins.World``), concept j's look
is the most common look the world reads in j's reference images, and the entry is the share of i's trigger images with that look
(``concept_rate``). On real models it is CLIP's identity score: the mean cosine between i's trigger images and
j's reference images. ``confusion.csv`` has a row per trigger (concept i) and a column per concept j.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cat_adapter.evaluation.concept_rates import open_images
from cat_adapter.evaluation.manifest import read_manifest
from cat_adapter.io import atomic_path, write_text_atomic


def trigger_images(eval_dir: Path) -> list[Path]:
    """The adapted model's images of an evaluation's trigger prompts (training captions and held-out prompts)."""
    return [r.image_trigger for r in read_manifest(eval_dir / "manifest.csv")
            if r.group != "control" and r.image_trigger is not None]


def reference_images(eval_dir: Path) -> list[Path]:
    return list(dict.fromkeys(r.reference for r in read_manifest(eval_dir / "manifest.csv") if r.reference is not None))


def look_of(images: list[Path], world) -> dict | None:
    """The most common look ``world`` reads in ``images`` (None if it reads none)."""
    return world.look_of(open_images(images))


def rate_matrix(images: dict[str, list[Path]], looks: dict[str, dict | None], world) -> np.ndarray:
    """[i, j]: share of concept i's trigger images with concept j's look (NaN where j's look is unknown)."""
    names = list(images)
    out = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        opened = open_images(images[a])
        for j, b in enumerate(names):
            if looks[b] is not None and opened:
                out[i, j] = world.concept_rate(opened, looks[b])
    return out


def identity_matrix(images: dict[str, list[Path]], references: dict[str, list[Path]], embedder) -> np.ndarray:
    """[i, j]: mean cosine between concept i's trigger images and concept j's reference images (CLIP)."""
    def embed(paths: list[Path]) -> np.ndarray:
        return embedder.embed_images(open_images(paths))

    names = list(images)
    emb, ref = {n: embed(images[n]) for n in names}, {n: embed(references[n]) for n in names}
    out = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            out[i, j] = float(np.mean(emb[a] @ ref[b].T))
    return out


def write_confusion(folder: Path, names: list[str], matrix: np.ndarray, kind: str) -> None:
    """``confusion.csv`` (rows: trigger of concept i, columns: concept j) and ``confusion.png``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trigger_of"] + names)
    for name, row in zip(names, matrix):
        w.writerow([name] + ["" if np.isnan(v) else f"{v:.4f}" for v in row])
    write_text_atomic(folder / "confusion.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(1.4 * n + 2.2, 1.2 * n + 1.6))
    vmin, vmax = (0.0, 1.0) if kind == "concept_rate" else (float(np.nanmin(matrix)), float(np.nanmax(matrix)))
    im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax)
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if np.isnan(v) or v < (vmin + vmax) / 2 else "black", fontsize=9)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), [f"trigger of {x}" for x in names])
    ax.set_xlabel("look of concept" if kind == "concept_rate" else "references of concept (CLIP cosine)")
    ax.set_title("concept rate" if kind == "concept_rate" else "identity score")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(folder / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
