"""Manifest -> pairs.csv + metrics.json + grid.png: the one scoring path of ``score`` and ``evaluate``.

``pair_specs`` decides which images are compared (pure), ``compute_pairs`` embeds each distinct
image and text once with CLIP and takes the cosines, ``metrics.aggregate`` turns the cosines
into scores. Paths in pairs.csv are relative to the output folder.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

import cat_adapter
from cat_adapter.data.concept import open_image
from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.clip import DEFAULT_CLIP, ClipEmbedder, check_clip_spec
from cat_adapter.evaluation.embedders import DINO_HELP, load_dino
from cat_adapter.evaluation.manifest import ManifestRow, read_manifest
from cat_adapter.evaluation.metrics import DEFAULT_EPSILON, PairValue, aggregate
from cat_adapter.io import atomic_dir, check_output_folder, write_json_atomic, write_text_atomic
from cat_adapter.options import opt
from cat_adapter.sampling import make_grid, save_image

log = logging.getLogger(__name__)
PAIR_COLUMNS = ("metric", "prompt", "seed", "image", "reference", "cosine", "group")
OUTPUT_MARKERS = ("metrics.json", "pairs.csv")


@dataclass(frozen=True)
class PairSpec:
    """Two things to compare: ``image`` with ``reference`` (an image path, or a text when ``text``)."""
    metric: str
    group: str
    prompt: str
    seed: int
    image: Path
    reference: Path | str
    text: bool = False
    embedder: str = "clip"   # which image embedder compares them: clip, or dino (``--dino``)


def pair_specs(rows: list[ManifestRow], *, dino: bool = False) -> list[PairSpec]:
    """Every compared pair of a manifest. Rows naming the same images are one pair (not counted twice). DreamBench's
    clip_i and clip_t are the identity and prompt pairs again (their own rows, a plain mean); ``dino``: the identity
    pairs once more, embedded with DINO."""
    specs: list[PairSpec] = []
    seen: set = set()

    def add(spec: PairSpec) -> None:
        key = (spec.metric, spec.group, spec.image, spec.reference)
        if key not in seen:
            seen.add(key)
            specs.append(spec)

    plain_by_prompt: dict[tuple[str, str], dict[int, ManifestRow]] = {}
    for r in rows:
        if r.group == "control":  # Leakage (ours): cos(I_base^c(s), I^c(s))
            if r.base_image is not None:
                add(PairSpec("leakage", r.group, r.prompt_plain, r.seed, r.image_plain, r.base_image))
            continue
        y_t, y = r.prompt_trigger, r.prompt_plain
        add(PairSpec("prompt_score", r.group, y_t, r.seed, r.image_trigger, r.text, text=True))     # Eq. 4
        add(PairSpec("clip_t", r.group, y_t, r.seed, r.image_trigger, r.text, text=True))           # DreamBench
        add(PairSpec("prompt_score_plain", r.group, y, r.seed, r.image_plain, r.text, text=True))   # §3 sentence
        add(PairSpec("kps", r.group, y_t, r.seed, r.image_trigger, r.image_plain))                  # Eq. 8
        if r.reference is not None:                                                                 # Eq. 6
            add(PairSpec("identity_score", r.group, y_t, r.seed, r.image_trigger, r.reference))
            add(PairSpec("clip_i", r.group, y_t, r.seed, r.image_trigger, r.reference))             # DreamBench
            if dino:
                add(PairSpec("dino_identity", r.group, y_t, r.seed, r.image_trigger, r.reference, embedder="dino"))
        if r.base_image is not None:                                                                # ours
            add(PairSpec("base_fidelity", r.group, y, r.seed, r.image_plain, r.base_image))
        plain_by_prompt.setdefault((r.group, y), {}).setdefault(r.seed, r)
    # Class Diversity (ours): all seed pairs s < s' of I^{y}(p, .) and of I_base^{y}(p, .).
    for (group, y), by_seed in plain_by_prompt.items():
        seeds = sorted(by_seed)
        for i, s in enumerate(seeds):
            for s2 in seeds[i + 1:]:
                a, b = by_seed[s], by_seed[s2]
                add(PairSpec("class_diversity", group, y, s, a.image_plain, b.image_plain))
                if a.base_image is not None and b.base_image is not None:
                    add(PairSpec("base_class_diversity", group, y, s, a.base_image, b.base_image))
    return specs


def compute_pairs(specs: list[PairSpec], embedder: ClipEmbedder, *, out_dir: Path, option: str = "--manifest",
                  dino=None) -> list[PairValue]:
    """Embed every distinct image (per embedder) and text once (batched), then take each pair's cosine (Eq. 10).
    ``dino``: the image embedder of the ``dino`` pairs."""
    from tqdm.auto import tqdm

    embedders = {"clip": embedder, "dino": dino}
    image_emb: dict[tuple[str, Path], Any] = {}
    for key, model in embedders.items():
        paths = list(dict.fromkeys(p for s in specs if s.embedder == key
                                   for p in (s.image, None if s.text else s.reference) if p is not None))
        if paths and model is None:
            raise ValueError(f"pairs for the {key} embedder but none given")
        step = model.batch_size if model is not None else 1
        for i in tqdm(range(0, len(paths), step), desc=f"{key.upper()} embeddings", unit="batch", disable=None,
                      leave=False):
            chunk = paths[i:i + step]   # images loaded chunk by chunk: memory stays bounded
            for p, e in zip(chunk, model.embed_images([open_image(p, option) for p in chunk])):
                image_emb[key, p] = e
    texts = list(dict.fromkeys(s.reference for s in specs if s.text))
    text_emb = dict(zip(texts, embedder.embed_texts(texts))) if texts else {}
    out = []
    for s in specs:
        a = image_emb[s.embedder, s.image]
        b = text_emb[s.reference] if s.text else image_emb[s.embedder, s.reference]
        out.append(PairValue(s.metric, s.group, s.prompt, s.seed, _rel(s.image, out_dir),
                             s.reference if s.text else _rel(s.reference, out_dir), float(a @ b)))
    return out


def _rel(path: Path, out_dir: Path) -> str:
    return os.path.relpath(path, out_dir)


def write_pairs_csv(path: Path, pairs: list[PairValue]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIR_COLUMNS)
    for p in pairs:
        w.writerow([p.metric, p.prompt, p.seed, p.image, p.reference, repr(p.cosine), p.group])
    write_text_atomic(path, buf.getvalue())


def comparison_grid(rows: list[ManifestRow], *, max_prompts: int = 4, max_seeds: int = 3) -> Image.Image | None:
    """base y | adapter y | adapter y_T for a few prompts and seeds (control rows: base c | adapter c)."""
    trigger = [r for r in rows if r.group != "control"]
    use = trigger or [r for r in rows if r.group == "control"]
    picked: dict[tuple[str, int], ManifestRow] = {}
    prompts: list[str] = []
    for r in use:
        p = r.prompt_trigger if trigger else r.prompt_plain
        if p not in prompts:
            if len(prompts) == max_prompts:
                continue
            prompts.append(p)
        if sum(1 for k in picked if k[0] == p) < max_seeds:
            picked.setdefault((p, r.seed), r)
    if not picked:
        return None
    cells, labels = [], []
    blank = None
    with_base = any(r.base_image is not None for r in picked.values())  # TI has no base column: y is the base's
    for (p, seed), r in picked.items():
        row = ([r.base_image] if with_base else []) + [r.image_plain] + ([r.image_trigger] if trigger else [])
        images = [open_image(x, "--manifest") if x is not None else None for x in row]
        size = next(im.size for im in images if im is not None)
        blank = blank or Image.new("RGB", size, (128, 128, 128))
        cells.append([im if im is not None else blank for im in images])
        labels.append(f"seed {seed} | {p}")
    cols = ["base y", "adapter y", "adapter y_T"] if trigger else ["base c", "adapter c"]
    if not with_base:
        cols = cols[1:]
    return make_grid(cells, row_labels=labels, col_labels=cols)


def score_rows(rows: list[ManifestRow], embedder: ClipEmbedder, out_dir: Path, *,
               epsilon: float = DEFAULT_EPSILON, meta: dict | None = None, dino=None) -> dict:
    """Write pairs.csv, metrics.json and grid.png for ``rows`` into ``out_dir``; return the metrics. ``dino``: an
    image embedder for DreamBench's ``dino_identity``."""
    pairs = compute_pairs(pair_specs(rows, dino=dino is not None), embedder, out_dir=out_dir, dino=dino)
    scores = aggregate(pairs, epsilon=epsilon)
    for note in scores["notes"]:
        if "clamped" in note:
            log.warning(note)
    metrics = dict(meta or {})
    metrics.update({"package_version": cat_adapter.__version__, "clip": embedder.spec,
                    "dino": getattr(dino, "spec", None), "hm_epsilon": epsilon,
                    "seeds": sorted({r.seed for r in rows}), "rows": len(rows), "pairs": len(pairs)})
    metrics.update(scores)
    write_pairs_csv(out_dir / "pairs.csv", pairs)
    grid = comparison_grid(rows)
    if grid is not None:
        save_image(grid, out_dir / "grid.png")
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def check_output(output: str | Path, *, overwrite: bool, option: str = "--output",
                 markers: tuple[str, ...] = OUTPUT_MARKERS, kind: str = "an evaluation folder") -> Path:
    """An output folder that is new or empty, or (with --overwrite) one of the same ``kind`` this package wrote."""
    check_output_folder(output, markers=markers, kind=kind, overwrite=overwrite, option=option)
    return Path(output)


@dataclass
class ScoreOptions:
    """What ``cat-adapter score`` takes."""
    manifest: str = opt(path="in", help="CSV or JSONL (.jsonl) manifest.")
    output: str = opt(path="out", help="Folder for metrics.json, pairs.csv and grid.png.")
    clip: str = opt(DEFAULT_CLIP, "CLIP model: hub id, local folder (CLIPModel + its processor), or toy (the "
                    "shapes-world CLIP).", path="in")
    label: str | None = opt(None, "Name of this run in reports (default: the manifest folder's name).")
    hm_epsilon: float = opt(DEFAULT_EPSILON, "Cosines <= this are clamped to it before the harmonic mean (and "
                            "counted).")
    dino: str | None = opt(None, DINO_HELP, path="in")
    clip_batch_size: int = opt(32, "Images or texts per CLIP batch.")
    cpu: bool = opt(False, "Run on the CPU even if a GPU is present.")
    overwrite: bool = opt(False, "Replace an existing evaluation folder.")


def score_manifest(o: ScoreOptions) -> Path:
    """``score`` with the command's options."""
    kw = asdict(o)
    return score(kw.pop("manifest"), epsilon=kw.pop("hm_epsilon"), **kw)


def score(manifest: str | Path, *, output: str | Path, clip: str = DEFAULT_CLIP, label: str | None = None,
          epsilon: float = DEFAULT_EPSILON, clip_batch_size: int = 32, overwrite: bool = False,
          cpu: bool = False, dino: str | None = None) -> Path:
    """Score images made elsewhere, listed in a CSV/JSONL manifest; write the outputs to ``output``."""
    if not 0 < epsilon < 1:
        raise CatAdapterError(f"--hm-epsilon must be in (0, 1) (got {epsilon})")
    out = check_output(output, overwrite=overwrite)
    manifest = Path(manifest)
    if manifest.resolve().is_relative_to(out.resolve()):
        raise CatAdapterError(f"--manifest {manifest}: lies inside --output {out}; write the scores to another folder")
    check_clip_spec(clip)
    rows = read_manifest(manifest)
    dino_model = load_dino(dino, device="cpu" if cpu else None, batch_size=clip_batch_size) if dino else None
    embedder = ClipEmbedder(clip, batch_size=clip_batch_size, device="cpu" if cpu else None)
    meta = {"label": label or manifest.resolve().parent.name, "manifest": str(manifest.resolve()), "model": None}
    with atomic_dir(out) as tmp:
        score_rows(rows, embedder, tmp, epsilon=epsilon, meta=meta, dino=dino_model)
    return out
