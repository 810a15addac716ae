"""Options of CAT's preservation term (paper Eq. 3, second term)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cat_adapter.options import check, opt


AUTO = "auto"


@dataclass
class PreservationOptions:
    cat_alpha: float | str = opt(0.0, "CAT strength alpha of Eq. 3; > 0 adds the preservation term (with --method "
                                 "dreambooth against a frozen copy of the U-Net). auto: constrained CAT, alpha is "
                                 "a Lagrange multiplier that holds the term at --preservation-target.",
                                 choices=(AUTO,))
    preservation_target: float | None = opt(None, "With --cat-alpha auto: the preservation term (MSE between the "
                                            "adapted and frozen predictions on y) to hold training at. Pick it from "
                                            "a --cat-alpha 0 run's loss_preservation: a fifth to a tenth of it keeps "
                                            "most of CAT's effect (docs/methods.md, constrained CAT).")
    cat_alpha_init: float = opt(1.0, "With --cat-alpha auto: alpha at step 0.")
    cat_alpha_lr: float = opt(0.05, "With --cat-alpha auto: the dual step size eta; each optimizer step "
                              "alpha <- max(0, alpha + eta * (term - target) / target).")
    cat_every: int = opt(1, "Run the preservation term every K-th optimizer step only, with weight K x alpha "
                         "(its average weight per step stays alpha). 1: every step.")
    cat_fraction: float = opt(1.0, "Run the preservation term on ceil(F x batch) rows of each batch (at least one), "
                              "drawn from the seeded data stream. 1: every row.")
    cat_mode: str = opt("lean", "CAT execution: lean backpropagates the identity term before the "
                        "preservation passes (memory near LoRA's); fast runs the adapted denoiser once on "
                        "[y_T; y] (faster, more memory). Same gradients.", choices=("lean", "fast"))
    preserve_pool: str | None = opt(None, path="in", help="Text file of extra trigger-free prompts (one per line) that the "
                                    "preservation term also covers (other classes, other attributes); auto: built "
                                    "from the captions' subject phrase with class nouns (its own and others) and "
                                    "attributes, bare classes left out (docs/methods.md).")
    preserve_pool_nouns: str | None = opt(None, path="in", help="With --preserve-pool auto: a file of class nouns (one per line) to "
                                          "swap in, instead of the built-in list (the toy world: its shapes).")
    preserve_pool_exclude: str | None = opt(None, path="in", help="A file of prompts (one per line) left out of the "
                                            "pool: held out for evaluation (compare passes its control prompts).")
    preserve_pool_size: int = opt(2, "Prompts drawn from --preserve-pool each step, on the caption's noisy latents.")
    preserve_pool_weight: float = opt(3.0, "Weight of the pool's mean preservation term beside the caption's y term "
                                      "(the term is y's + W x the pool's; y keeps the paper's full alpha). 3 measured "
                                      "best on random toy concepts (docs/benchmarks.md, preservation on random concepts).")

    @property
    def auto(self) -> bool:
        return self.cat_alpha == AUTO

    @property
    def on(self) -> bool:
        """Whether the options switch the preservation term on (alpha > 0, or constrained)."""
        return self.auto or self.cat_alpha > 0

    def validate(self, cfg) -> None:
        check(self.auto or self.cat_alpha >= 0, "--cat-alpha", f"must be >= 0 or auto (got {self.cat_alpha})")
        check(not self.auto or self.preservation_target is not None, "--cat-alpha auto",
              "needs --preservation-target EPS (the preservation term to hold; see --help)")
        check(self.preservation_target is None or self.auto, "--preservation-target", "is read with --cat-alpha auto only")
        check(self.preservation_target is None or self.preservation_target > 0, "--preservation-target",
              f"must be > 0 (got {self.preservation_target})")
        check(self.cat_alpha_init >= 0, "--cat-alpha-init", f"must be >= 0 (got {self.cat_alpha_init})")
        check(self.cat_alpha_lr > 0, "--cat-alpha-lr", f"must be > 0 (got {self.cat_alpha_lr})")
        check(self.cat_every >= 1, "--cat-every", f"must be >= 1 (got {self.cat_every}); 1 runs the term every step")
        check(0 < self.cat_fraction <= 1, "--cat-fraction", f"must be in (0, 1] (got {self.cat_fraction})")
        check(self.preserve_pool_size >= 0, "--preserve-pool-size", "must be >= 0")
        check(self.preserve_pool_weight >= 0, "--preserve-pool-weight", f"must be >= 0 (got {self.preserve_pool_weight})")
        check(self.preserve_pool_exclude is None or bool(self.preserve_pool), "--preserve-pool-exclude",
              "is read with --preserve-pool only")
        check(self.preserve_pool_nouns is None or self.preserve_pool == "auto", "--preserve-pool-nouns",
              "is read with --preserve-pool auto only")
        from cat_adapter.methods.registry import active_terms, get_spec

        active = "preservation" in active_terms(get_spec(cfg.method.method), cfg)
        changed = {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        for name in ("cat_every", "cat_fraction"):
            check(name not in changed or active, "--" + name.replace("_", "-"),
                  "is read by the preservation term only (--method cat, or --cat-alpha > 0)")
        for name in ("cat_alpha_init", "cat_alpha_lr"):
            check(name not in changed or self.auto, "--" + name.replace("_", "-"), "is read with --cat-alpha auto only")
        d = cfg.data
        check(not (d.caption_dropout > 0 and active and d.preserve_prompt == "empty"), "--caption-dropout",
              "cannot be combined with --preserve-prompt empty under CAT: a dropped row's identity term would pull the "
              "empty prompt toward the concept while the preservation term holds it at the base model; use "
              "--preserve-prompt remove or class")
        if self.preserve_pool and not active:
            import logging

            logging.getLogger("cat_adapter").warning(
                "--preserve-pool is read by the preservation term only (--method cat, or --cat-alpha > 0); ignored")
