"""LoRA (Hu et al. 2021) personalization: peft LoRA on the denoiser x the identity term (paper Eq. 1-2)."""

from cat_adapter.methods.lora.config import LoraOptions
from cat_adapter.methods.registry import MethodSpec, register_method, register_part, register_section

register_section("lora", LoraOptions)
register_part("lora", "cat_adapter.methods.lora.part:LoraPart")
register_method(MethodSpec(
    "lora", parts=("lora",), terms=("identity",), sections=("lora", "preservation", "prior"),
    optional_terms=("prior", "preservation"), multi_concept=True,
    description="LoRA on the denoiser, identity loss on the trigger captions (+ --prior-preservation: DreamBooth-LoRA)."))
