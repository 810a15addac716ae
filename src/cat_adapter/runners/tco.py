"""The Chosen One's outer loop (Avrahami et al. 2023, Algorithm 1), resumable iteration by iteration.

Iteration i (``OUT/iterations/NN/``):
  1. generate N images, one seed each: the base model on p at i = 0, the adapter of iteration i - 1 on y_T after;
  2. embed them (``--tco-embedder``) and measure their mean pairwise distance; from i = 1 on, stop when it is at
     most ``--tco-convergence`` times the first iteration's (the output is then iteration i - 1's adapter);
  3. k-means++ into N // cluster size clusters, drop the small ones, keep the most cohesive (``cluster.py``);
  4. train LoRA + the trigger tokens on its images captioned y_T (``--method lora_ti`` through the plain loop),
     starting from iteration i - 1's trained state.
Each step's result is written atomically (images/, embeddings.safetensors, clusters.json, concept/, train/) and
``done.json`` last, so a run killed anywhere resumes where it stopped and ends with the same adapter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import cat_adapter
from cat_adapter.errors import CatAdapterError
from cat_adapter.io import atomic_dir, atomic_path, check_output_folder, write_json_atomic
from cat_adapter.methods.tco.cluster import choose_cluster, mean_pairwise_distance
from cat_adapter.methods.tco.prompts import tco_prompts

log = logging.getLogger(__name__)
MARKERS = ("tco.json", "config.yaml")
GRID_IMAGES = 12
GENERATION_BATCH = 8


def first_cluster(train_dir: Path) -> Path:
    """The images identity is measured against: the cluster the first iteration chose (compare's reference)."""
    return Path(train_dir) / "iterations" / "00" / "concept"


def image_seed(seed: int, iteration: int, index: int) -> int:
    """A distinct sampling seed per (run seed, iteration, image)."""
    return int(np.random.SeedSequence([seed, iteration, index]).generate_state(1)[0] % (2**31 - 1))


def train_tco(cfg, *, progress: bool = True, accelerator=None) -> Path:
    """Run The Chosen One as ``cfg`` says; returns the output folder with the final adapter (lora + tokens)."""
    from cat_adapter.io import output_lock

    with output_lock(cfg.run.output, "cat-adapter train --method tco"):
        return _train_tco(cfg, progress=progress, accelerator=accelerator)


def _train_tco(cfg, *, progress: bool, accelerator) -> Path:
    from cat_adapter.config import check_same_run, portable, save_config
    from cat_adapter.evaluation.embedders import load_image_embedder
    from cat_adapter.sampling import pick_device
    from cat_adapter.shared import shared_objects

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CatAdapterError("--method tco runs on one process (its generation and clustering are sequential); "
                              "start it without accelerate launch, or spread several runs with compare --shard")
    out, run, t, d = Path(cfg.run.output), cfg.run, cfg.tco, cfg.data
    mode = check_output_folder(out, markers=MARKERS, kind="a cat-adapter tco output folder", overwrite=run.overwrite,
                               resume=run.resume)
    prompt, trigger_prompt = tco_prompts(t.tco_prompt, d.trigger, d.class_noun)
    if mode == "resume":
        check_same_run(cfg, out)
    elif mode == "overwrite":
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "done.json").unlink(missing_ok=True)
    save_config(portable(cfg), out / "config.yaml", package_version=cat_adapter.__version__)
    device = pick_device(run.cpu)
    records: list[dict] = []
    with shared_objects():  # the base model is read once for every generation and training of the run
        embedder = load_image_embedder(t.tco_embedder, device=device)
        first = None
        for i in range(t.tco_max_iterations):
            folder = out / "iterations" / f"{i:02d}"
            previous = _last_trained(records, out)
            rec = _read_done(folder)
            if rec is None:
                rec = _iteration(cfg, i, folder, previous, first, embedder, prompt=prompt,
                                 trigger_prompt=trigger_prompt, device=device, progress=progress,
                                 accelerator=accelerator)
            records.append(rec)
            first = first if first is not None else rec["mean_pairwise_distance"]
            print(f"tco iteration {i}: mean pairwise distance {rec['mean_pairwise_distance']:.4f} "
                  f"({rec['relative_distance']:.2f} of the first)"
                  + (f", trained on cluster {rec['chosen']} ({rec['chosen_size']} images)" if rec["trained"] else
                     ", converged"), flush=True)
            if rec["converged"]:
                break
    return _finish(cfg, out, records, prompt=prompt, trigger_prompt=trigger_prompt)


def _read_done(folder: Path) -> dict | None:
    f = folder / "done.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _last_trained(records: list[dict], out: Path) -> Path | None:
    """The training folder of the last iteration that trained (records name it relative to OUT)."""
    trained = [r for r in records if r["trained"]]
    return out / trained[-1]["train_folder"] if trained else None


def _iteration(cfg, i: int, folder: Path, previous: Path | None, first: float | None, embedder, *, prompt: str,
               trigger_prompt: str, device, progress: bool, accelerator) -> dict:
    from safetensors.torch import load_file, save_file

    t = cfg.tco
    gen_prompt = prompt if previous is None else trigger_prompt
    t0 = time.perf_counter()
    paths = _generate(cfg, i, folder / "images", gen_prompt, previous, device)
    generation_s = time.perf_counter() - t0
    emb_file = folder / "embeddings.safetensors"
    if emb_file.is_file():
        emb = load_file(str(emb_file))["embeddings"].numpy()
    else:
        from PIL import Image

        emb = np.asarray(embedder.embed_images([Image.open(p).convert("RGB") for p in paths]), dtype=np.float64)
        with atomic_path(emb_file) as tmp:
            save_file({"embeddings": torch.from_numpy(emb).contiguous()}, str(tmp))
    dist = mean_pairwise_distance(emb)
    first = dist if first is None else first
    out = folder.parent.parent
    rec = {"iteration": i, "prompt": gen_prompt,
           "adapter_from": str(previous.relative_to(out)) if previous else None,
           "images": len(paths), "mean_pairwise_distance": dist, "relative_distance": dist / first if first else 1.0,
           "generation_seconds": round(generation_s, 2)}
    if i > 0 and dist <= t.tco_convergence * first:
        rec.update(converged=True, trained=False)
        write_json_atomic(folder / "done.json", rec)
        return rec
    clusters_file = folder / "clusters.json"
    if clusters_file.is_file():
        clustering = json.loads(clusters_file.read_text())
    else:
        clustering = choose_cluster(emb, cluster_size=t.tco_cluster_size, min_cluster=t.tco_min_cluster,
                                    seed=cfg.run.seed + i).to_dict()
        write_json_atomic(clusters_file, clustering)
    if clustering["fallback"]:
        log.warning("tco iteration %d: no cluster has more than --tco-min-cluster %d members; training on the most "
                    "cohesive of all (%d images)", i, t.tco_min_cluster, len(clustering["members"]))
    concept = folder / "concept"
    if not concept.is_dir():
        with atomic_dir(concept) as tmp:
            for j in clustering["members"]:
                shutil.copyfile(paths[j], tmp / paths[j].name)
                (tmp / paths[j].name).with_suffix(".txt").write_text(trigger_prompt + "\n")
    t1 = time.perf_counter()
    train_dir = _train(cfg, concept, folder / "train", previous, progress=progress, accelerator=accelerator)
    train_done = json.loads((train_dir / "done.json").read_text())
    rec.update(converged=False, trained=True, k=clustering["k"], cluster_sizes=clustering["sizes"],
               cohesion=clustering["cohesion"], kept=clustering["kept"], chosen=clustering["chosen"],
               chosen_size=len(clustering["members"]), fallback=clustering["fallback"],
               train_folder=str(train_dir.relative_to(out)),
               train_seconds=round(time.perf_counter() - t1, 2),
               step_seconds_median=train_done.get("step_seconds_median"),
               peak_memory_above_model_mb=train_done.get("peak_memory_above_model_mb"),
               steps=train_done.get("steps"))
    write_json_atomic(folder / "done.json", rec)
    return rec


def _generate(cfg, i: int, folder: Path, prompt: str, previous: Path | None, device) -> list[Path]:
    """N images of ``prompt``; the base model, or the base model with ``previous``'s adapter applied."""
    from cat_adapter.adapters import load_adapter
    from cat_adapter.models import load_model
    from cat_adapter.sampling import generate, save_image
    from cat_adapter.training.loop import MIXED, model_spec

    t = cfg.tco
    names = [f"{j:03d}.png" for j in range(t.tco_images)]
    if folder.is_dir():
        return [folder / n for n in names]
    model = load_model(model_spec(cfg), dtype=MIXED[cfg.run.mixed_precision])
    model.to(device)
    adapter = load_adapter(previous).apply(model) if previous is not None else None
    seeds = [image_seed(cfg.run.seed, i, j) for j in range(t.tco_images)]
    images = generate(model, [prompt] * len(seeds), seeds, steps=t.tco_sample_steps,
                      guidance_scale=t.tco_guidance_scale, height=cfg.data.resolution or model.default_resolution,
                      width=cfg.data.resolution or model.default_resolution,
                      lora_scale=adapter.lora_scale if adapter else None, batch_size=GENERATION_BATCH)
    with atomic_dir(folder) as tmp:
        for name, img in zip(names, images):
            save_image(img, tmp / name)
        write_json_atomic(tmp / "seeds.json", {"prompt": prompt, "seeds": seeds})
    del model
    return [folder / n for n in names]


def _train(cfg, concept: Path, output: Path, previous: Path | None, *, progress: bool, accelerator) -> Path:
    """LoRA + tokens on the chosen images (``lora_ti`` through the plain loop), from ``previous``'s trained state."""
    from cat_adapter.config import MethodConfig
    from cat_adapter.training.checkpoint import list_checkpoints, load_checkpoint
    from cat_adapter.training.loop import train_loop

    if (output / "done.json").is_file():
        return output
    steps = cfg.tco.tco_steps or cfg.optim.steps
    inner = replace(cfg, method=MethodConfig("lora_ti"), data=replace(cfg.data, data=str(concept)),
                    optim=replace(cfg.optim, steps=steps),
                    run=replace(cfg.run, output=str(output), resume=(output / "config.yaml").is_file(),
                                overwrite=not (output / "config.yaml").is_file(), validation_prompt=None,
                                checkpoint_every=cfg.run.checkpoint_every or steps, save_every=0))
    init = None
    if previous is not None:  # the exact float32 state of the previous iteration's last step
        init = load_checkpoint(list_checkpoints(previous)[-1])["trained"]
    return train_loop(inner, progress=progress, accelerator=accelerator, init_state=init)


def _finish(cfg, out: Path, records: list[dict], *, prompt: str, trigger_prompt: str) -> Path:
    """The last trained iteration's adapter in OUT (adapter.json, LoRA and embeddings), tco.json, iterations.png,
    then done.json last."""
    last = _last_trained(records, out)
    record = json.loads((last / "adapter.json").read_text())
    for name in sorted(set(record["files"].values())):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(last / name, tmp)
    d = cfg.data
    record.update(method="tco", concepts=[{"name": d.class_noun or "tco", "trigger": d.trigger, "class_noun": d.class_noun,
                                           "preserve_prompt": d.preserve_prompt, "caption_template": trigger_prompt,
                                           "prompt": prompt}])
    write_json_atomic(out / "adapter.json", record)
    t = cfg.tco
    converged = bool(records[-1]["converged"])
    summary = {"prompt": prompt, "trigger_prompt": trigger_prompt, "embedder": t.tco_embedder,
               "settings": {k: getattr(t, k) for k in vars(t)}, "initial_distance": records[0]["mean_pairwise_distance"],
               "converged": converged, "final_iteration": max(r["iteration"] for r in records if r["trained"]),
               "iterations": records}
    write_json_atomic(out / "tco.json", summary)
    _grid(out, records)
    trained = [r for r in records if r["trained"]]
    steps_s = [r["step_seconds_median"] for r in trained if r.get("step_seconds_median") is not None]
    peaks = [r["peak_memory_above_model_mb"] for r in trained if r.get("peak_memory_above_model_mb") is not None]
    generation = sum(r["generation_seconds"] for r in records)
    training = sum(r["train_seconds"] for r in trained)
    write_json_atomic(out / "done.json", {
        "seconds": round(generation + training, 2), "generation_seconds": round(generation, 2),
        "train_seconds": round(training, 2), "step_seconds_median": statistics.median(steps_s) if steps_s else None,
        "peak_memory_above_model_mb": max(peaks) if peaks else None, "files": sorted(set(record["files"].values())),
        "adapter": "adapter.json", "steps": sum(r["steps"] for r in trained), "iterations": len(records),
        "converged": converged})
    return out


def _grid(out: Path, records: list[dict]) -> None:
    """One row per iteration: the chosen cluster's images first, then the others (up to 12)."""
    from PIL import Image

    from cat_adapter.sampling import make_grid, save_image

    rows, labels = [], []
    for r in records:
        folder = out / "iterations" / f"{r['iteration']:02d}"
        paths = sorted((folder / "images").glob("*.png"))
        members = set(json.loads((folder / "clusters.json").read_text())["members"]) if r["trained"] else set()
        order = [j for j in range(len(paths)) if j in members] + [j for j in range(len(paths)) if j not in members]
        rows.append([Image.open(paths[j]).convert("RGB") for j in order[:GRID_IMAGES]])
        labels.append(f"{r['iteration']}: d={r['mean_pairwise_distance']:.3f} ({r['relative_distance']:.2f})"
                      + (f", chosen {r['chosen_size']}" if r["trained"] else ", converged"))
    save_image(make_grid(rows, row_labels=labels, min_cell=64), out / "iterations.png")
