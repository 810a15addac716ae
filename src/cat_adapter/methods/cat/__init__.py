"""Contrastive Adapter Training (Park et al. 2024): LoRA x (identity + alpha * preservation), Eq. 3."""

from cat_adapter.methods.cat.config import PreservationOptions
from cat_adapter.methods.registry import MethodSpec, register_method, register_section, register_term

register_section("preservation", PreservationOptions)
# After the data terms (identity, prior): in lean mode it runs once their backward has freed their activations.
register_term("preservation", "cat_adapter.methods.cat.loss:PreservationTerm", order=20,
              enabled=lambda cfg: cfg.preservation.on)
register_method(MethodSpec(
    "cat", parts=("lora",), terms=("identity", "preservation"), sections=("lora", "preservation", "prior"),
    defaults={"cat_alpha": 1.0}, optional_terms=("prior",), multi_concept=True,
    description="LoRA with CAT's preservation term on the trigger-free prompt (paper Eq. 3)."))
