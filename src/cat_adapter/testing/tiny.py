"""Tiny random-weight Stable Diffusion pipelines built from config (tests, benchmarks, smoke runs).

They are saved as a standard ``StableDiffusionPipeline`` folder and loaded back through
``models.load_model``, the same path a real model takes. Their tokenizer is a character-level
CLIP BPE (every byte is a token), so any trigger tokenizes without unknown ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cat_adapter.data.bpe import bytes_to_unicode


def build_char_tokenizer(folder: Path, *, model_max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is every byte (with and without the end-of-word mark)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length,
                        pad_token="<|endoftext|>")
    return tok


def build_tiny_pipeline(folder: str | Path, *, block_out_channels: tuple[int, ...] = (32, 64), layers_per_block: int = 1,
                        sample_size: int = 8, vae_blocks: int = 2, text_hidden: int = 32, seed: int = 0,
                        prediction_type: str = "epsilon", model_max_length: int = 77) -> Path:
    """Write a random-weight SD pipeline folder: latents ``4 x sample_size^2``, images ``sample_size * 2^(vae_blocks-1)``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=block_out_channels, norm_num_groups=min(32, block_out_channels[0]),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_hidden, attention_head_dim=8)
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        norm_num_groups=32, sample_size=sample_size * 2 ** (vae_blocks - 1))
    tok_dir = folder / ".tokenizer-src"
    tokenizer = build_char_tokenizer(tok_dir, model_max_length=model_max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder


def write_shape_concept(folder: str | Path, *, n: int = 4, size: int = 64, trigger: str = "sks",
                        class_noun: str = "circle", seed: int = 0, captions: bool = True) -> Path:
    """A synthetic concept folder: an orange circle with a black outline on varied backgrounds."""
    import random

    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        bg = tuple(rng.randint(150, 255) for _ in range(3)) if rng.random() < 0.5 else tuple(rng.randint(0, 80) for _ in range(3))
        img = Image.new("RGB", (size, size), bg)
        r = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 140, 0), outline=(0, 0, 0),
                                    width=max(1, size // 32))
        img.save(folder / f"{i:02d}.png")
        if captions:
            where = "on a dark background" if sum(bg) < 300 else "on a light background"
            (folder / f"{i:02d}.txt").write_text(f"a photo of {trigger} {class_noun} {where}")
    return folder
