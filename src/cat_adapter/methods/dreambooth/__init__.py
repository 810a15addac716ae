"""DreamBooth (Ruiz et al. 2023): every denoiser weight x (identity + prior on generated class images)."""

from cat_adapter.methods.dreambooth.config import PriorOptions
from cat_adapter.methods.registry import MethodSpec, register_method, register_part, register_section, register_term

register_section("prior", PriorOptions)
register_part("full", "cat_adapter.methods.dreambooth.part:FullPart")
register_term("prior", "cat_adapter.methods.dreambooth.loss:PriorTerm", order=10,
              enabled=lambda cfg: cfg.prior.prior_preservation)
# Defaults of diffusers' examples/dreambooth (train_dreambooth.py and its README): lr 5e-6, batch 1,
# 400 steps, 100 class images, prior weight 1.0, AdamW weight decay 1e-2, constant schedule.
register_method(MethodSpec(
    "dreambooth", parts=("full",), terms=("identity",), sections=("prior", "preservation"),
    defaults={"lr": 5e-6, "steps": 400, "prior_preservation": True}, optional_terms=("prior", "preservation"),
    quantizable_base=False,
    description="Full fine-tune of the denoiser with DreamBooth's prior preservation."))
