"""Model families: loading, the denoiser call, the text side, the objective and LoRA files (see base.py).

Each family module registers itself when imported here; adding a family is one module and one line below
(docs/architecture.md, "How to add a model family").
"""

from cat_adapter.models.base import (Cond, Family, ModelFamily, ModelSpec, TokenIds, denoiser_folders, families,
                                     family_of, is_hub_id, load_model, model_identity, same_model)
from cat_adapter.models.pipeline import LORA_WEIGHT_NAME, PipelineFamily, dtype_kwarg, freeze, load_pipeline
from cat_adapter.models import sd, sdxl, flux, sd3, zimage, chroma  # noqa: F401,E402,I001  (registration: the built-in families)
from cat_adapter.models.sd import SDModel  # noqa: E402

__all__ = ["Cond", "Family", "LORA_WEIGHT_NAME", "ModelFamily", "ModelSpec", "PipelineFamily", "SDModel", "TokenIds",
           "denoiser_folders", "dtype_kwarg", "families", "family_of", "freeze", "is_hub_id", "load_model",
           "load_pipeline", "model_identity", "same_model"]
