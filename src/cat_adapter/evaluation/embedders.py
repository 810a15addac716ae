"""Image embedders for clustering (The Chosen One): any transformers vision model, by hub id or folder.

A CLIP folder uses CLIP's projected image embedding (``ClipEmbedder``); any other model (DINOv2, which The
Chosen One's paper uses, or another ViT) is loaded with ``AutoModel`` and ``AutoImageProcessor`` and gives its
CLS token: ``pooler_output`` where the model has one (DINOv2's is the layer-normed CLS token), else the first
position of ``last_hidden_state``. Rows are L2-normalised, so distances do not depend on the feature scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.metrics import normalize_rows
from cat_adapter.models.base import first_line


class VisionEmbedder:
    """CLS-token embeddings of a transformers vision model (float32, L2-normalised, float64 output)."""

    def __init__(self, spec: str, *, device=None, batch_size: int = 32, option: str = "--tco-embedder"):
        from transformers import AutoImageProcessor, AutoModel

        self.spec, self.batch_size = spec, batch_size
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = AutoModel.from_pretrained(spec, dtype=torch.float32).to(self.device).eval()
            self.processor = AutoImageProcessor.from_pretrained(spec)
        except Exception as exc:
            raise CatAdapterError(f"{option} {spec}: cannot load a vision model and its image processor "
                                  f"({first_line(exc)})") from None

    @torch.no_grad()
    def embed_images(self, images: Sequence) -> np.ndarray:
        chunks = []
        for i in range(0, len(images), self.batch_size):
            pixels = self.processor(images=[im.convert("RGB") for im in images[i:i + self.batch_size]],
                                    return_tensors="pt")["pixel_values"].to(self.device, torch.float32)
            out = self.model(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            feats = pooled if torch.is_tensor(pooled) and pooled.dim() == 2 else out.last_hidden_state[:, 0]
            chunks.append(feats.float().cpu().numpy())
        return normalize_rows(np.concatenate(chunks)) if chunks else np.zeros((0, 0))


def _model_type(spec: str) -> str | None:
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(spec), "model_type", None)
    except Exception as exc:
        raise CatAdapterError(f"--tco-embedder {spec}: cannot read its config ({first_line(exc)})") from None


def load_image_embedder(spec: str, *, device=None, batch_size: int = 32, option: str = "--tco-embedder"):
    """A CLIP (image tower) or any other vision model; aliases such as ``toy`` resolve to their folder.
    In a harness (``shared.shared_objects``) it is loaded once per process."""
    from cat_adapter import shared
    from cat_adapter.plugins import resolve_alias

    resolved = resolve_alias(spec, "clip", option)
    path = Path(resolved).expanduser()
    where = str(path) if path.exists() else resolved
    if path.exists() and not (path / "config.json").is_file():
        raise CatAdapterError(f"{option} {spec}: no config.json in the folder; give a transformers vision model folder "
                              "or a hub id (facebook/dinov2-large)")

    def load():
        if _model_type(where) == "clip":
            from cat_adapter.evaluation.clip import ClipEmbedder

            return ClipEmbedder(where, device=device, batch_size=batch_size, option=option)
        return VisionEmbedder(where, device=device, batch_size=batch_size, option=option)

    return shared.get(("image-embedder", where, str(device), batch_size), load, mutable=False)


DEFAULT_DINO = "facebook/dino-vits16"   # DreamBench's subject-fidelity model (DINO ViT-S/16)
DINO_TYPES = ("vit", "dinov2", "dinov3_vit")   # ViT model types whose CLS token DINO-style fidelity reads
DINO_HELP = (f"A self-supervised ViT for DreamBench's subject fidelity, dino_identity ({DEFAULT_DINO}, loaded through "
             "transformers; a hub id or a local folder): the DINO cosine of each trigger image and its reference. "
             "Off when unset.")


def load_dino(spec: str, *, device=None, batch_size: int = 32, option: str = "--dino") -> VisionEmbedder:
    """The ViT of ``--dino`` (its CLS token; not a CLIP or another kind of model: one line saying so)."""
    from transformers import AutoConfig

    from cat_adapter import shared

    path = Path(spec).expanduser()
    where = str(path) if path.exists() else spec
    if path.exists() and not (path / "config.json").is_file():
        raise CatAdapterError(f"{option} {spec}: no config.json in the folder; give a ViT model folder or a hub id "
                              f"({DEFAULT_DINO})")
    try:
        kind = getattr(AutoConfig.from_pretrained(where), "model_type", None)
    except Exception as exc:
        raise CatAdapterError(f"{option} {spec}: cannot read its config ({first_line(exc)})") from None
    if kind not in DINO_TYPES:
        raise CatAdapterError(f"{option} {spec}: a {kind} model, not a ViT; DreamBench's dino_identity uses DINO "
                              f"ViT-S/16 ({DEFAULT_DINO}) or another ViT ({', '.join(DINO_TYPES)})")
    return shared.get(("dino", where, str(device), batch_size),
                      lambda: VisionEmbedder(where, device=device, batch_size=batch_size, option=option), mutable=False)
