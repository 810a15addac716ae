"""A tiny random-weight CLIP (vision + text + processor + tokenizer) built from config and saved.

It is loaded back through ``ClipEmbedder``, the path a real ``--clip`` takes; tests, benchmarks
and smoke runs use it offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def build_tiny_clip(folder: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                    projection_dim: int = 16, dtype: torch.dtype = torch.float32) -> Path:
    """Write a CLIPModel + CLIPProcessor folder (char-level CLIPTokenizer, CLIPImageProcessor of ``image_size``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    from cat_adapter.testing.tiny import build_char_tokenizer

    folder = Path(folder)
    tok_dir = folder / ".tokenizer-src"
    tokenizer = build_char_tokenizer(tok_dir, model_max_length=77)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim))
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder


def build_tiny_dinov2(folder: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                      hidden: int = 32) -> Path:
    """Write a random-weight ``Dinov2Model`` folder with its image processor (a stand-in for facebook/dinov2-*)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden,
                             image_size=image_size, patch_size=patch_size)).save_pretrained(folder, safe_serialization=True)
    BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder
