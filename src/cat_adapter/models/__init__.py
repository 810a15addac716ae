"""Model families: loading, the denoiser call, the text side, the objective and LoRA files (see base.py)."""

from cat_adapter.models.base import (Cond, Family, ModelSpec, TokenIds, families, family_of, is_hub_id, load_model,
                                     model_identity, same_model)
from cat_adapter.models.sd import LORA_WEIGHT_NAME, SDModel, dtype_kwarg, freeze, load_pipeline

__all__ = ["Cond", "Family", "LORA_WEIGHT_NAME", "ModelSpec", "SDModel", "TokenIds", "dtype_kwarg", "families",
           "family_of", "freeze", "is_hub_id", "load_model", "load_pipeline", "model_identity", "same_model"]
