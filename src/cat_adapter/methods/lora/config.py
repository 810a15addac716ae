"""Options of the LoRA part (peft ``LoraConfig`` on the denoiser)."""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt


@dataclass
class LoraOptions:
    rank: int = opt(4, "LoRA rank r.")
    lora_alpha: float | None = opt(None, "LoRA scaling numerator (scale = lora_alpha / rank); none means rank.")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] = opt(["to_q", "to_k", "to_v", "to_out.0"],
                                    "Denoiser modules that get LoRA (comma-separated names).")

    def validate(self, cfg) -> None:
        check(self.rank > 0, "--rank", f"must be >= 1 (got {self.rank})")
        check(self.lora_alpha is None or self.lora_alpha > 0, "--lora-alpha", "must be > 0")
        check(0 <= self.lora_dropout < 1, "--lora-dropout", "must be in [0, 1)")
        check(len(self.target_modules) > 0, "--target-modules", "must name at least one module")
        if self.lora_alpha is None:
            self.lora_alpha = float(self.rank)  # resolved here so the saved config holds the value used
