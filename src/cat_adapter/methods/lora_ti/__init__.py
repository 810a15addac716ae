"""LoRA and new trigger tokens trained together ("pivotal tuning", cloneofsimo/lora), identity term only.

Also The Chosen One's per-iteration step. Both parts share one optimizer group (one --lr), as The Chosen One's
public implementation trains them.
"""

from cat_adapter.methods.registry import MethodSpec, register_method

register_method(MethodSpec(
    "lora_ti", parts=("lora", "tokens"), terms=("identity",), sections=("lora", "tokens"),
    description="LoRA on the denoiser plus new trigger tokens, trained together (pivotal tuning)."))
