"""``cat-adapter toy build``: train the shapes world's models from scratch, resumably.

Stages, each a pure function of the recipe and seed (data order, noise and caption choices come
from a generator seeded by (seed, stage, step), so a resumed stage continues exactly), one module each:

1. ``tokenizer`` (``tokenizer.py``): a CLIP BPE trained on the world's captions with the ``tokenizers``
   library; its base vocabulary is every byte with and without the end-of-word mark, so any word (a
   trigger never seen in captions included) splits into known pieces.
2. ``clip`` (``clip.py``): a tiny CLIP (text + vision) trained contrastively on (image, caption) pairs.
   A caption names a subset of its image's attributes, so every image a caption is true of is a positive.
   ``judge``: that CLIP trained further (same loss, its own data stream): the evaluation CLIP
   (``--clip toy``). The U-Net conditions on the stage-2 text tower, which stays fixed.
3. ``vae`` (``vae.py``): a tiny AutoencoderKL (32x32x3 -> 4x16x16); its ``scaling_factor`` is measured
   as 1 / std of sampled latents over the world.
4. ``unet`` (``unet.py``): a tiny U-Net conditioned on the CLIP text encoder's last hidden states
   (frozen), with classifier-free guidance dropout (empty caption) and an EMA of its weights, which is
   shipped; trained with the shared DDPM objective (``cat_adapter.diffusion``).

The result (``assemble.py``) is ``OUTPUT/pipeline`` (a ``StableDiffusionPipeline`` folder),
``OUTPUT/clip`` (a ``CLIPModel`` folder with its processor: the judge) and ``OUTPUT/build.json``
(command, recipe, versions, commit, timings, the first losses of every stage and the sha256 of every
weight file). Stage checkpoints live in ``OUTPUT/state`` until the build ends. What the stages share
(recipe, seeded generators, world pool, training loop, bookkeeping) is in ``common.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from cat_adapter.toy.build.assemble import assemble
from cat_adapter.toy.build.clip import (build_clip_model, clip_batch, clip_loss, clip_stage, judge_stage,
                                        load_text_encoder, save_clip_folder, text_encoder_from_clip)
from cat_adapter.toy.build.common import (DEPENDANTS, RECIPE, STAGES, BuildContext, WorldPool, invocations,
                                          load_progress, prepare_state, record_invocation, run_stage, step_generator,
                                          step_rng, weight_hashes, world_vocabulary)
from cat_adapter.toy.build.tokenizer import load_tokenizer, tokenizer_stage, train_tokenizer
from cat_adapter.toy.build.unet import (LatentCache, build_objective, build_scheduler, build_unet, encode_text,
                                        unet_loss, unet_stage)
from cat_adapter.toy.build.vae import build_vae, measure_scaling_factor, vae_loss, vae_stage
from cat_adapter.toy.world import OUTLINES, PATTERNS

# Each stage: run(ctx) -> {stage: first losses} with ``stop_after``, else None (results in ctx.progress).
STAGE_RUNNERS: dict[str, Callable[[BuildContext], dict | None]] = {
    "tokenizer": tokenizer_stage, "clip": clip_stage, "judge": judge_stage, "vae": vae_stage, "unet": unet_stage}
assert tuple(STAGE_RUNNERS) == STAGES


def build(output: str | Path, *, resume: bool = False, device: str | None = None, recipe: dict | None = None,
          stop_after: int | None = None, stages: tuple[str, ...] = STAGES, inputs: Path | None = None,
          redo: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict:
    """Run the build into ``output``; returns the build record (also written to ``output/build.json``).

    ``stop_after`` runs the first selected stage with steps for only that many steps and returns its
    first losses (a prefix of the real build, for checks); ``inputs`` is a finished build whose
    tokenizer/CLIP/VAE the later stages then use. ``redo`` (with ``resume``) first discards the results
    and checkpoints of those stages and of the stages that read them, so a recipe change to a stage
    that already ran can be built.
    """
    recipe = copy.deepcopy(recipe or RECIPE)
    output = Path(output)
    state = output / "state"
    redo = prepare_state(output, recipe, resume=resume, redo=redo, log=log)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = False
    progress = load_progress(state)
    ctx = BuildContext(recipe=recipe, state=state, src=inputs or state, device=dev,
                       pool=WorldPool(recipe["seed"], recipe["pool_size"]), progress=progress,
                       stop_after=stop_after, log=log)
    if stop_after is None:
        record_invocation(state, stages, redo, dev, progress)
    for name in STAGES:
        if name in stages and name not in progress:
            result = STAGE_RUNNERS[name](ctx)
            if stop_after is not None and result is not None:
                return result
        if name == "tokenizer":  # what the later stages tokenise with
            ctx.tokenizer = load_tokenizer(ctx.src / "tokenizer") if (ctx.src / "tokenizer").is_dir() else None
    if stop_after is not None or set(stages) != set(STAGES):
        return progress
    return assemble(output, recipe, progress, log=log)


__all__ = ["RECIPE", "STAGES", "DEPENDANTS", "STAGE_RUNNERS", "build", "assemble", "WorldPool", "world_vocabulary",
           "OUTLINES", "PATTERNS", "step_generator", "step_rng", "run_stage", "train_tokenizer", "load_tokenizer",
           "build_clip_model", "clip_loss", "clip_batch", "save_clip_folder", "text_encoder_from_clip",
           "load_text_encoder", "build_vae", "vae_loss", "measure_scaling_factor", "build_unet", "build_scheduler",
           "build_objective", "LatentCache", "encode_text", "unet_loss", "weight_hashes", "load_progress",
           "invocations"]
