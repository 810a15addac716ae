"""Options of CAT's preservation term (paper Eq. 3, second term)."""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt


@dataclass
class PreservationOptions:
    cat_alpha: float = opt(0.0, "CAT strength alpha of Eq. 3; > 0 adds the preservation term (with --method "
                           "dreambooth against a frozen copy of the U-Net).")
    cat_mode: str = opt("lean", "CAT execution: lean backpropagates the identity term before the "
                        "preservation passes (memory near LoRA's); fast runs the adapted denoiser once on "
                        "[y_T; y] (faster, more memory). Same gradients.", choices=("lean", "fast"))
    preserve_pool: str | None = opt(None, "Text file of extra trigger-free prompts (one per line) that the "
                                    "preservation term also covers (other classes, other attributes).")
    preserve_pool_size: int = opt(2, "Prompts drawn from --preserve-pool each step; their preservation "
                                  "terms are averaged with the caption's.")

    def validate(self, cfg) -> None:
        check(self.cat_alpha >= 0, "--cat-alpha", f"must be >= 0 (got {self.cat_alpha})")
        check(self.preserve_pool_size >= 0, "--preserve-pool-size", "must be >= 0")
        from cat_adapter.methods import registry

        if self.preserve_pool and "preservation" not in registry.active_terms(registry.get_spec(cfg.method.method), cfg):
            import logging

            logging.getLogger("cat_adapter").warning(
                "--preserve-pool is read by the preservation term only (--method cat, or --cat-alpha > 0); ignored")
