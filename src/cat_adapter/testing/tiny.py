"""Tiny random-weight Stable Diffusion pipelines built from config (tests, benchmarks, smoke runs).

They are saved as a standard ``StableDiffusionPipeline`` folder and loaded back through
``models.load_model``, the same path a real model takes. Their tokenizer is a character-level
CLIP BPE (every byte is a token), so any trigger tokenizes without unknown ids.
"""

from __future__ import annotations

import copy
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


def build_tiny_sdxl_pipeline(folder: str | Path, *, sample_size: int = 8, vae_blocks: int = 2, seed: int = 0,
                             model_max_length: int = 77, force_upcast: bool = True) -> Path:
    """Write a random-weight ``StableDiffusionXLPipeline`` folder (the SDXL config of FACTS.md, scaled down): two
    CLIP text encoders of width 32 (the second with a projection), a U-Net with text_time added conditioning
    (80 = 6 time ids x 8 + 32 pooled; cross-attention 64 = 32 + 32), Euler scheduler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=32)
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        norm_num_groups=32, sample_size=sample_size * 2 ** (vae_blocks - 1), force_upcast=force_upcast)
    tok_dir = folder / ".tokenizer-src"
    tokenizer = build_char_tokenizer(tok_dir, model_max_length=model_max_length)
    cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=model_max_length, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=copy.deepcopy(tokenizer), unet=unet,
                                     scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder


def build_t5_tokenizer(folder: Path, *, model_max_length: int = 32):
    """A T5TokenizerFast without the hub: a ``tokenizers`` Unigram model over every printable ASCII character (with
    and without the word-start mark), ``<pad>`` / ``</s>`` / ``<unk>`` first, Metaspace pre-tokenizer and decoder;
    it appends ``</s>`` as T5's does."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    t5 = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=model_max_length, pad_token="<pad>",
                         eos_token="</s>", unk_token="<unk>")
    folder.mkdir(parents=True, exist_ok=True)
    return t5


def build_tiny_flux_pipeline(folder: str | Path, *, vae_blocks: int = 2, seed: int = 0, guidance_embeds: bool = True,
                             max_sequence_length: int = 32) -> Path:
    """Write a random-weight ``FluxPipeline`` folder (the Flux config of FACTS.md): a one-double, one-single-block
    transformer over 2x2-packed 4-channel latents, CLIP (width 32) pooled + T5 (d_model 32) conditioning, a VAE
    without quant convs with a shift factor, flow-matching Euler scheduler. ``guidance_embeds``: dev-like."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds)
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        norm_num_groups=32, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    tok_dir = folder / ".tokenizer-src"
    tokenizer = build_char_tokenizer(tok_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    tokenizer_2 = build_t5_tokenizer(tok_dir, model_max_length=max_sequence_length)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_ff=37, d_kv=8, num_heads=4,
                                             num_layers=2, relative_attention_num_buckets=8, feed_forward_proj="relu",
                                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder


def build_tiny_sd3_pipeline(folder: str | Path, *, vae_blocks: int = 2, seed: int = 0, max_sequence_length: int = 32,
                            with_t5: bool = True) -> Path:
    """Write a random-weight ``StableDiffusion3Pipeline`` folder (diffusers' SD3 test config, scaled to fit): a
    one-block MMDiT with patch size 2 over 16-channel latents, two CLIP encoders with projection (width 32 each,
    pooled 64) and T5 (d_model 64, the joint width), a VAE without quant convs with SD3's shift and scale, the
    flow-matching Euler scheduler with SD3's static shift 3.0. ``with_t5`` False saves it without T5 (SD3 allows
    that: the pipeline puts zeros in T5's place)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=16)
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        norm_num_groups=32, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5305)
    tok_dir = folder / ".tokenizer-src"
    tokenizer = build_char_tokenizer(tok_dir)
    cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, projection_dim=32)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    tokenizer_3 = text_encoder_3 = None
    if with_t5:
        tokenizer_3 = build_t5_tokenizer(tok_dir, model_max_length=max_sequence_length)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=64, d_ff=37, d_kv=8, num_heads=4,
                                                 num_layers=2, relative_attention_num_buckets=8,
                                                 feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0,
                                                 eos_token_id=1))
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=copy.deepcopy(tokenizer), text_encoder_3=text_encoder_3,
                                    tokenizer_3=tokenizer_3, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")


def build_qwen_tokenizer(*, model_max_length: int = 512):
    """A Qwen2Tokenizer without the hub: byte-level BPE over the 256 byte symbols (no merges, so every byte is a
    token, as a rare word is under Qwen's vocabulary), Qwen's special tokens and the user/assistant part of Qwen3's
    chat template (``enable_thinking`` as Qwen3's: false adds an empty think block)."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", model_max_length=model_max_length)
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>",
                                                         "</think>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def build_tiny_zimage_pipeline(folder: str | Path, *, vae_blocks: int = 2, seed: int = 0,
                               max_sequence_length: int = 64) -> Path:
    """Write a random-weight ``ZImagePipeline`` folder (diffusers' Z-Image test config): a two-layer single-stream
    DiT (one noise and one context refiner layer) with patch 2 over 16-channel latents, a two-layer Qwen3 text encoder
    (width 16) behind a byte-level Qwen tokenizer with a chat template, a VAE with Flux's shift and scale, the
    flow-matching Euler scheduler with shift 3."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5,
                                           qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():   # created with torch.empty (diffusers' tests fix them the same way)
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159)
    tokenizer = build_qwen_tokenizer(model_max_length=max_sequence_length)
    text_encoder = Qwen3Model(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                          vocab_size=len(tokenizer), max_position_embeddings=512,
                                          pad_token_id=tokenizer.pad_token_id))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_chroma_pipeline(folder: str | Path, *, vae_blocks: int = 2, seed: int = 0,
                               max_sequence_length: int = 32) -> Path:
    """Write a random-weight ``ChromaPipeline`` folder (diffusers' Chroma test config): a one-double, one-single-block
    transformer with a one-layer approximator over 2x2-packed 4-channel latents, T5 (d_model 32) alone, a VAE without
    quant convs with a shift factor, the flow-matching Euler scheduler."""
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32, approximator_layers=1,
                                           approximator_num_channels=16)
    vae_ch = [32, 64, 64, 64][:vae_blocks]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks, up_block_types=["UpDecoderBlock2D"] * vae_blocks,
                        norm_num_groups=32, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    tokenizer = build_t5_tokenizer(folder / ".tokenizer-src", model_max_length=max_sequence_length)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4,
                                           num_layers=2, relative_attention_num_buckets=8, feed_forward_proj="relu",
                                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer, image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(folder / ".tokenizer-src", ignore_errors=True)
    return folder


# family -> builder of its tiny pipeline (``python -m cat_adapter.testing.tiny FAMILY FOLDER``)
BUILDERS = {"sd": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline, "flux": build_tiny_flux_pipeline,
            "sd3": build_tiny_sd3_pipeline, "zimage": build_tiny_zimage_pipeline, "chroma": build_tiny_chroma_pipeline}


def main(argv: list[str] | None = None) -> int:
    """Write a tiny random-weight pipeline of a family (and optionally a 16 px concept folder) to try a family's
    whole path on a CPU in seconds: ``python -m cat_adapter.testing.tiny sd3 /tmp/sd3 --concept /tmp/circle``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cat_adapter.testing.tiny", description=main.__doc__)
    ap.add_argument("family", choices=sorted(BUILDERS))
    ap.add_argument("folder", help="where to write the pipeline (must not exist)")
    ap.add_argument("--concept", help="also write a concept folder of 4 captioned 16 px circles ('sks circle') here")
    args = ap.parse_args(argv)
    if Path(args.folder).exists():
        ap.error(f"{args.folder} exists; give a new folder")
    print(BUILDERS[args.family](args.folder))
    if args.concept:
        print(write_shape_concept(args.concept, n=4, size=16))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def build_tiny_vit(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A random-weight ViT folder (``ViTModel`` + ``ViTImageProcessor``), DINO ViT-S/16's layout scaled down: what
    ``--dino`` loads in tests (no hub)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    torch.manual_seed(seed)
    ViTModel(ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37), add_pooling_layer=False).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
