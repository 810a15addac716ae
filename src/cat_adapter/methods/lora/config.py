"""Options of the LoRA part (peft ``LoraConfig`` on the denoiser)."""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt


RANK_PER_CONCEPT = 4


def concept_count(cfg) -> int:
    """How many concepts the run trains (1 when the data options are still to be checked)."""
    from cat_adapter.data.concepts import concept_specs
    from cat_adapter.errors import CatAdapterError

    try:
        return max(1, len(concept_specs(cfg.data)))
    except (CatAdapterError, OSError, TypeError):
        return 1


@dataclass
class LoraOptions:
    rank: int | None = opt(None, f"LoRA rank r. Default: {RANK_PER_CONCEPT}, times the number of concepts when one adapter "
                           "trains several (--concepts, or a kohya folder layout): several concepts need their singles' "
                           "capacity together (docs/benchmarks.md, several concepts).")
    lora_alpha: float | None = opt(None, "LoRA scaling numerator (scale = lora_alpha / rank); none means rank.")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] | None = opt(None, "Denoiser modules that get LoRA (comma-separated names). Default: "
                                           "the family's: to_q,to_k,to_v,to_out.0 (SD, SDXL); for Flux the 12 of "
                                           "diffusers' Flux example (attention of both streams, both feed-forwards).")
    lora_type: str = opt("lora", "lora, or lokr (LyCORIS LoKr through peft: Kronecker-product factors, --rank and "
                         "--lora-alpha as peft's r and alpha). A LoKr file loads in plain diffusers with "
                         "pipe.unet.load_lora_adapter(OUT, weight_name=..., prefix='unet'), not load_lora_weights.",
                         choices=("lora", "lokr"))
    train_text_encoder: bool = opt(False, "Also train LoRA on the text encoder (--text-encoder-target-modules). "
                                   "Under CAT the adapted pass encodes y_T and y with the adapted text encoder, the "
                                   "frozen pass encodes y with the frozen one. lora and cat only.")
    text_encoder_lr: float | None = opt(None, "Learning rate of the text-encoder LoRA; none means --lr.")
    text_encoder_target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "out_proj"],
                                                 "Text-encoder modules that get LoRA with --train-text-encoder.")
    use_dora: bool = opt(False, "DoRA (Liu et al. 2024, peft's use_dora): a trained magnitude per output channel on "
                         "top of LoRA's direction update. Loads with diffusers' load_lora_weights; not with "
                         "--export-format kohya.")
    init_lora_weights: str = opt("gaussian", "Initialisation, each starting with B A = 0 so training starts at the "
                                 "base model: gaussian or true (peft's Kaiming-uniform) A with B = 0, or orthogonal "
                                 "(A and B from orthogonal rows, product 0 up to rounding; even --rank). Methods that rewrite "
                                 "the base weights (PiSSA, OLoRA, CorDA, LoftQ) are not offered: CAT's frozen pass and "
                                 "plain-diffusers loading need the base weights untouched.",
                                 choices=("gaussian", "true", "orthogonal"))

    def validate(self, cfg) -> None:
        if self.rank is None:
            self.rank = RANK_PER_CONCEPT * concept_count(cfg)   # resolved here so the saved config holds the value
        check(self.rank > 0, "--rank", f"must be >= 1 (got {self.rank})")
        check(self.lora_alpha is None or self.lora_alpha > 0, "--lora-alpha", "must be > 0")
        check(0 <= self.lora_dropout < 1, "--lora-dropout", "must be in [0, 1)")
        check(self.target_modules is None or len(self.target_modules) > 0, "--target-modules",
              "must name at least one module")
        check(self.init_lora_weights != "orthogonal" or self.rank % 2 == 0, "--init-lora-weights",
              f"orthogonal needs an even --rank (got {self.rank})")
        if self.lora_type == "lokr":
            for bad, name in ((self.use_dora, "--use-dora"), (self.train_text_encoder, "--train-text-encoder"),
                              (self.lora_dropout > 0, "--lora-dropout"),
                              (self.init_lora_weights != "gaussian", "--init-lora-weights"),
                              (cfg.run.export_format == "kohya", "--export-format kohya")):
                check(not bad, "--lora-type lokr", f"cannot be combined with {name} (LoRA only)")
        if self.train_text_encoder:
            check(cfg.method.method in ("lora", "cat"), "--train-text-encoder",
                  f"is for --method lora or cat (got {cfg.method.method})")
            check(cfg.run.export_format != "kohya", "--train-text-encoder",
                  "cannot be exported with --export-format kohya yet; use the diffusers format")
            check(self.text_encoder_lr is None or self.text_encoder_lr > 0, "--text-encoder-lr", "must be > 0")
        check(not (self.use_dora and cfg.run.export_format == "kohya"), "--use-dora",
              "cannot be exported with --export-format kohya: diffusers' kohya conversion does not map DoRA's "
              "magnitude vectors (lora_magnitude_vector -> dora_scale); use the diffusers format")
        if self.lora_alpha is None:
            self.lora_alpha = float(self.rank)  # resolved here so the saved config holds the value used
