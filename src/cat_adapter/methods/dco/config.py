"""Options of Direct Consistency Optimization."""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt


@dataclass
class DcoOptions:
    dco_beta: float = opt(1000.0, "beta of DCO's loss -log sigmoid(-beta (l_adapted - l_frozen)), l the per-image "
                          "squared error on the trigger captions (the paper and kyungmnlee/dco use 1000-2000). Its "
                          "gradient starts at beta / 2 times the plain loss's, but AdamW's step does not grow with "
                          "the gradient: keep the --lr you would give LoRA (a --lr scaled down by beta / 2 barely "
                          "moves the adapter; docs/benchmarks.md).")

    def validate(self, cfg) -> None:
        check(self.dco_beta > 0, "--dco-beta", "must be > 0")
