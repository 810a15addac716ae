"""Textual Inversion (Gal et al. 2022): new token embeddings in the text encoder x the identity term."""

from cat_adapter.methods.registry import MethodSpec, register_method, register_part, register_section
from cat_adapter.methods.ti.config import TokenOptions


def _check(cfg, given: set[str]) -> None:
    from cat_adapter.errors import CatAdapterError

    if cfg.prior.prior_preservation:
        raise CatAdapterError("--prior-preservation does not apply to --method ti: it trains no denoiser weights, "
                              "so class images have nothing to preserve")
    if cfg.preservation.on:
        raise CatAdapterError(f"--cat-alpha {'auto' if cfg.preservation.auto else '> 0'} does not apply to --method ti: a prompt without the trigger never "
                              "reads the new token, so the trigger-free prediction cannot change")


register_section("tokens", TokenOptions)
register_part("tokens", "cat_adapter.methods.ti.part:TokensPart")
# Defaults of diffusers' examples/textual_inversion README recipe for SD 1.5: lr 5e-4 x 4 (--scale_lr with
# gradient accumulation 4) = 2e-3 at batch 1, 3000 steps, constant schedule, AdamW weight decay 1e-2.
register_method(MethodSpec(
    "ti", parts=("tokens",), terms=("identity",), sections=("tokens",),
    defaults={"lr": 2e-3, "steps": 3000}, check=_check,
    description="Textual Inversion: only new token embeddings train."))
