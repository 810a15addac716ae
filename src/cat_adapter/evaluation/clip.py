"""The CLIP embedder θ_clip of Eqs. 4, 6 and 8: transformers' ``CLIPModel`` and the folder's own processor.

``--clip`` is a hub id (default ``openai/clip-vit-large-patch14``) or a local folder saved with
``save_pretrained``. The model always runs in float32 whatever dtype its files hold; images and
texts are embedded in batches and L2-normalised (float64), so a dot product is Eq. 10's cosine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.metrics import normalize_rows
from cat_adapter.models import is_hub_id
from cat_adapter.models.base import first_line

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose ``pooler_output`` is the projected embedding; 4.x a tensor."""
    if torch.is_tensor(out):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if torch.is_tensor(value):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def check_clip_spec(spec: str, *, option: str = "--clip") -> None:
    """Cheap checks before anything heavy is loaded: a local folder must hold a CLIP config."""
    from cat_adapter.plugins import resolve_alias

    spec = resolve_alias(spec, "clip", option)
    path = Path(spec).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        model_type = None
        if cfg.is_file():
            try:
                model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
            except (json.JSONDecodeError, UnicodeDecodeError):
                model_type = None
        if model_type != "clip":
            found = f"model_type {model_type!r}" if model_type else "no CLIP config.json"
            raise CatAdapterError(f"{option} {spec}: not a CLIP model folder ({found}); give a folder saved by "
                                  "CLIPModel.save_pretrained with its processor, or a hub id such as " + DEFAULT_CLIP)
    elif path.exists():
        raise CatAdapterError(f"{option} {spec}: not a folder; give a CLIP model folder or a hub id")
    elif not is_hub_id(spec):
        raise CatAdapterError(f"{option} {spec}: no such folder (and not a hub id of the form org/name)")


class ClipEmbedder:
    """Batched, L2-normalised CLIP image and text embeddings (float32 model, float64 output)."""

    def __init__(self, spec: str = DEFAULT_CLIP, *, device: torch.device | str | None = None, batch_size: int = 32,
                 option: str = "--clip"):
        from transformers import AutoConfig, AutoProcessor, CLIPModel

        from cat_adapter.plugins import resolve_alias

        check_clip_spec(spec, option=option)
        spec = resolve_alias(spec, "clip", option)
        if batch_size < 1:
            raise CatAdapterError(f"--clip-batch-size must be >= 1 (got {batch_size})")
        self.spec = spec
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        where = str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec
        try:
            config = AutoConfig.from_pretrained(where)
        except Exception as exc:  # missing repo, no network, unreadable config
            raise CatAdapterError(f"{option} {spec}: cannot read its config ({first_line(exc)})") from None
        if getattr(config, "model_type", None) != "clip":
            raise CatAdapterError(f"{option} {spec}: not a CLIP model folder (model_type {config.model_type!r})")
        try:
            # dtype=float32: from_pretrained defaults to "auto" in transformers 5 (fp16 files would stay fp16).
            self.model = CLIPModel.from_pretrained(where, dtype=torch.float32).to(self.device).eval()
        except Exception as exc:
            raise CatAdapterError(f"{option} {spec}: cannot load CLIPModel ({first_line(exc)})") from None
        try:
            self.processor = AutoProcessor.from_pretrained(where)
        except Exception as exc:
            raise CatAdapterError(f"{option} {spec}: cannot load its processor ({first_line(exc)}); the folder "
                                  "needs the files CLIPProcessor.save_pretrained writes") from None
        if not (hasattr(self.processor, "image_processor") and hasattr(self.processor, "tokenizer")):
            raise CatAdapterError(f"{option} {spec}: its processor ({type(self.processor).__name__}) lacks an image "
                                  "processor or tokenizer; save a CLIPProcessor in the folder")
        self.max_length = min(int(self.processor.tokenizer.model_max_length),
                              int(self.model.config.text_config.max_position_embeddings))

    @torch.no_grad()
    def embed_images(self, images: Sequence) -> np.ndarray:
        """(n, d) unit vectors for PIL images of any size (the processor resizes and crops)."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            inputs = self.processor(images=list(images[i:i + self.batch_size]), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, torch.float32)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return normalize_rows(np.concatenate(chunks)) if chunks else np.zeros((0, self.dim))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) unit vectors for texts, truncated to the text model's length."""
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            inputs = self.processor(text=list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                    truncation=True, max_length=self.max_length)
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_features(self.model.get_text_features(**inputs)).float().cpu().numpy())
        return normalize_rows(np.concatenate(chunks)) if chunks else np.zeros((0, self.dim))

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)
