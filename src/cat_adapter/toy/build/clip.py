"""Stages 2 and 2b, ``clip`` and ``judge``: a tiny CLIP (text + vision) trained contrastively on
(image, caption) pairs, then trained further on its own data stream as the evaluation CLIP.

A caption names a subset of its image's attributes, so every image a caption is true of is a
positive. The U-Net conditions on the stage-2 text tower, which stays fixed; the judge is what
``--clip toy`` loads.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from cat_adapter.io import atomic_dir
from cat_adapter.toy.build.common import BuildContext, WorldPool, first_losses, mean_last, step_generator, step_rng
from cat_adapter.toy.world import RESOLUTION, caption_named, consistent


def build_clip_model(recipe: dict, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    c = recipe["clip"]
    common = dict(hidden_size=c["hidden"], intermediate_size=4 * c["hidden"], num_hidden_layers=c["layers"],
                  num_attention_heads=c["heads"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=recipe["tokenizer"]["model_max_length"],
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **common),
        vision_config=dict(image_size=RESOLUTION, patch_size=c["patch"], **common),
        projection_dim=c["projection_dim"])
    return CLIPModel(config)


def clip_loss(model, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              positives: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with several positives: caption j is a positive of image i when every
    attribute it names is true of image i (``positives[i, j]``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
    logits = out.logits_per_image                       # (images, texts)
    pos = positives.float()
    t_img = pos / pos.sum(1, keepdim=True)
    t_txt = pos.t() / pos.t().sum(1, keepdim=True)
    loss_i = -(t_img * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(t_txt * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def clip_batch(pool: WorldPool, tokenizer, recipe: dict, step: int, stage: str = "clip"):
    c = recipe["clip"]
    g, rng = step_generator(recipe["seed"], stage, step), step_rng(recipe["seed"], stage, step)
    idx = pool.sample_indices(g, c["batch_size"])
    scenes = [pool.scene(i) for i in idx]
    named = [caption_named(s, rng, name_all=rng.random() < c["full_caption_prob"]) for s in scenes]
    # Padded to the batch's longest caption: the text tower pools at the end-of-text token, so padding
    # length does not change the embedding, and world captions are half the model's length.
    tokens = tokenizer([t for t, _ in named], padding="longest", truncation=True,
                       max_length=tokenizer.model_max_length, return_tensors="pt")
    positives = torch.tensor([[consistent(n, s) for _, n in named] for s in scenes])
    return pool.pixels(idx), tokens["input_ids"], tokens["attention_mask"], positives


def clip_step_loss(model, pool: WorldPool, tokenizer, recipe: dict, stage: str, device, step: int) -> torch.Tensor:
    """The contrastive loss of ``stage``'s batch at ``step``."""
    px, ids, mask, pos = clip_batch(pool, tokenizer, recipe, step, stage=stage)
    return clip_loss(model, px.to(device), ids.to(device), mask.to(device), pos.to(device))


def save_clip_folder(model, tokenizer, folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": RESOLUTION},
                                           crop_size={"height": RESOLUTION, "width": RESOLUTION},
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
        tokenizer=tokenizer)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))


def text_encoder_from_clip(clip_folder: Path):
    """The CLIP folder's text tower as a ``CLIPTextModel`` (what the pipeline conditions on), float32."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(str(clip_folder), dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def load_text_encoder(folder: Path):
    """The U-Net's text encoder: ``folder/text_encoder`` (a pipeline's) if present, else the stage-2 CLIP's text tower."""
    from transformers import CLIPTextModel

    if (folder / "text_encoder").is_dir():
        return CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32).eval()
    return text_encoder_from_clip(folder / "clip")


def contrastive_stage(ctx: BuildContext, name: str, model, *, steps: int, lr: float, warmup: int,
                      final_lr: float = 1.0) -> dict | None:
    """Train a CLIP (stage ``clip`` or ``judge``), save it to state/NAME and record its zero-shot accuracy.

    With ``ctx.stop_after``, returns ``{name: first losses}`` and saves nothing but the checkpoint."""
    loss_fn = partial(clip_step_loss, model, ctx.pool, ctx.tokenizer, ctx.recipe, name, ctx.device)
    t0 = time.time()
    model, losses = ctx.train(name, model, loss_fn, steps=steps, lr=lr, warmup=warmup,
                              weight_decay=ctx.recipe["clip"]["weight_decay"], final_lr=final_lr)
    if ctx.stop_after is not None:
        return {name: first_losses(losses)}
    with atomic_dir(ctx.state / name) as tmp:
        save_clip_folder(model.cpu(), ctx.tokenizer, tmp)
    from cat_adapter.toy.judge import clip_zero_shot

    acc = clip_zero_shot(str(ctx.state / name), n=500, seed=10_000_000)
    ctx.progress[name] = {"first_losses": first_losses(losses), "final_loss": round(mean_last(losses, 100), 5),
                          "zero_shot_500": acc}
    ctx.done(name, t0)
    ctx.log(f"[{name}] zero-shot accuracy on 500 fresh images: {acc}")
    return None


def clip_stage(ctx: BuildContext) -> dict | None:
    """Stage 2: a CLIP from scratch (initialised under ``torch.manual_seed(seed + 2)``)."""
    torch.manual_seed(ctx.recipe["seed"] + 2)
    model = build_clip_model(ctx.recipe, ctx.tokenizer).to(ctx.device)
    c = ctx.recipe["clip"]
    return contrastive_stage(ctx, "clip", model, steps=c["steps"], lr=c["lr"], warmup=c["warmup"])


def judge_stage(ctx: BuildContext) -> dict | None:
    """Stage 2b: the stage-2 CLIP (``src/clip``) trained further: the evaluation CLIP."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(ctx.src / "clip"), dtype=torch.float32).to(ctx.device)
    j = ctx.recipe["judge"]
    return contrastive_stage(ctx, "judge", model, steps=j["steps"], lr=j["lr"], warmup=j["warmup"],
                             final_lr=j["final_lr_fraction"])
