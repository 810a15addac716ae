"""Options of the tokens part: Textual Inversion's new embedding rows (Gal et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt


@dataclass
class TokenOptions:
    num_vectors: int = opt(1, "Embedding vectors the trigger stands for (tokens trigger, trigger_1, ...).")
    initializer_token: str | None = opt(None, "Word whose embedding initialises the new rows (several tokens are "
                                        "averaged); default: the class noun.")

    def validate(self, cfg) -> None:
        check(self.num_vectors >= 1, "--num-vectors", f"must be >= 1 (got {self.num_vectors})")
        check(bool(self.initializer_token or cfg.data.class_noun), "--initializer-token",
              "is required when there is no --class-noun to initialise the new token from")
