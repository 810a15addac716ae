"""CAT's preservation term (paper Eq. 3, second term) as a pure function, and the rows it reads."""

from __future__ import annotations

import torch

from cat_adapter.diffusion import mse
from cat_adapter.methods.cat.constrained import DualAlpha, plot_alpha
from cat_adapter.methods.terms import Rows, Term
from cat_adapter.models.base import Cond


def preservation_loss(pred_plain_adapted: torch.Tensor, pred_plain_frozen: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """||eps_theta(z_t, t, tau(y)) - eps_{theta_L,theta_R}(z_t, t, tau(y))||^2 (Eq. 3 without alpha).

    ``pred_plain_frozen`` is the frozen base model's prediction (no gradient). With pool prompts stacked after the
    caption's y rows, ``weights`` (``pool_weights``) make it the y term plus the pool's mean term times the pool
    weight, so the caption's y keeps the paper's full alpha whatever the pool.
    """
    return mse(pred_plain_adapted, pred_plain_frozen.detach(), weights)


def pool_weights(rows_y: int, pool_prompts: int, pool_weight: float) -> torch.Tensor:
    """Per-row weights of [y (B rows); K pool prompts x B rows] under which the rows' weighted mean is
    mean(y rows) + pool_weight x mean(pool rows)."""
    n = rows_y * (1 + pool_prompts)
    w = torch.full((n,), float(n) / rows_y)
    w[rows_y:] = pool_weight * n / (rows_y * pool_prompts)
    return w


def plain_inputs(z_t: torch.Tensor, t: torch.Tensor, plain: Cond, pool: Cond | None):
    """The same z_t and t under every trigger-free prompt, rows [y of each caption (B); pool prompt 1 on all B
    latents; ...; pool prompt K] -> B * (1 + K)."""
    b = z_t.shape[0]
    conds = [plain] + ([pool.expand_row(k, b) for k in range(len(pool))] if pool is not None else [])
    n = len(conds)
    return z_t.repeat(n, *([1] * (z_t.dim() - 1))), t.repeat(n), Cond.cat(conds)


def load_pool(cfg) -> list[str] | None:
    """``--preserve-pool`` and each concept's ``preserve_pool`` (--concepts): one trigger-free prompt per line, the
    files in that order, less ``--preserve-pool-exclude``'s prompts; a prompt with any concept's trigger is an error
    naming it."""
    from cat_adapter.data.concept import load_prompt_file
    from cat_adapter.data.concepts import concept_specs
    from cat_adapter.data.prompts import has_trigger
    from cat_adapter.errors import CatAdapterError

    specs = concept_specs(cfg.data)
    p = cfg.preservation
    # (prompt, where it came from, what to do about a trigger in it)
    sources: list[tuple[str, str, str]] = []
    held = load_prompt_file(p.preserve_pool_exclude, "--preserve-pool-exclude") if p.preserve_pool_exclude else []
    if p.preserve_pool == "auto":
        from dataclasses import replace

        from cat_adapter.data.auto_pool import auto_pool, subject_template
        from cat_adapter.plugins import world_for

        nouns = load_prompt_file(p.preserve_pool_nouns, "--preserve-pool-nouns") if p.preserve_pool_nouns else None
        phrased = [replace(c, caption_template=subject_template(c)) for c in specs]
        sources += [(x, f"--preserve-pool auto: prompt {x!r}", "remove that noun from --preserve-pool-nouns")
                    for x in auto_pool(phrased, world=world_for(cfg.model.model), nouns=nouns, exclude=held)]
    files = ([] if p.preserve_pool == "auto" else [(p.preserve_pool, "--preserve-pool")]) + \
        [(c.preserve_pool, f"--concepts ({c.name}) preserve_pool") for c in specs if c.preserve_pool]
    for path, option in files:
        if path:
            sources += [(x, f"{option} {path}: prompt {i + 1} {x!r}", "the pool must be trigger-free")
                        for i, x in enumerate(load_prompt_file(path, option))]
    for x, where, remedy in sources:
        hit = next((c.trigger for c in specs if has_trigger(x, c.trigger)), None)
        if hit:
            raise CatAdapterError(f"{where} contains the trigger '{hit}'; {remedy}")
    if held:
        from cat_adapter.data.auto_pool import shared_with

        sources = [src for src in sources if not shared_with([src[0]], held)]
    prompts = [x for x, _, _ in sources]
    return prompts or None


class PreservationTerm(Term):
    """alpha * ||eps_frozen(z_t, t, y) - eps_adapted(z_t, t, y)||^2 on the instance stream's z_t and t.

    ``--cat-every K`` runs it on every K-th step at weight K x alpha; ``--cat-fraction F`` on the rows the data
    stream picked (``Batch.preserve_rows``); ``--cat-alpha auto`` makes alpha a ``DualAlpha``.
    """

    name, group = "preservation", "preservation"
    needs_base = True

    @classmethod
    def check_inputs(cls, cfg) -> dict:
        return {"pool_prompts": load_pool(cfg)}

    @classmethod
    def stream_options(cls, cfg) -> dict:
        """Pool prompts drawn per step (--preserve-pool-size) and the share of rows the term reads (--cat-fraction)."""
        p = cfg.preservation
        return {"pool_size": p.preserve_pool_size, "preserve_fraction": p.cat_fraction}

    def log_values(self) -> dict[str, float]:
        """The alpha this step trains with (constrained CAT moves it)."""
        return {"cat_alpha": self.alpha}

    def __init__(self, cfg):
        p = cfg.preservation
        self.every = int(p.cat_every)
        self.dual = DualAlpha(p.preservation_target, p.cat_alpha_init, p.cat_alpha_lr) if p.auto else None
        self.fixed = None if p.auto else float(p.cat_alpha)
        self.pool_weight = float(p.preserve_pool_weight)

    @property
    def alpha(self) -> float:
        return self.dual.alpha if self.dual is not None else self.fixed

    @property
    def weight(self) -> float:
        return self.every * self.alpha if self.every > 1 else self.alpha

    def active(self, step: int) -> bool:
        return step % self.every == 0

    def observe(self, term: float) -> None:
        """The step's measured term (mean over micro-batches and processes): the dual update."""
        if self.dual is not None:
            self.dual.update(term)

    def state_dict(self) -> dict:
        return self.dual.state_dict() if self.dual is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.dual is not None:
            self.dual.load_state_dict(state)

    def report(self, out) -> None:
        """``OUT/alpha.png`` of a constrained run: alpha and the term per step, from ``log.jsonl``."""
        if self.dual is not None:
            plot_alpha(out / "log.jsonl", self.dual.target, out / "alpha.png")

    def rows(self, s):
        b = s.batch
        pool = "pool" in b.prompts
        keep = b.preserve_rows   # --cat-fraction: this rank's rows the stream picked; None: all

        def pick(x):
            return x if keep is None else x[keep]

        z_t, t_rows = pick(s.z_t), pick(b.instance.timesteps)
        z, t, cond = plain_inputs(z_t, t_rows, pick(s.prompts("plain")), s.prompts("pool") if pool else None)
        micro = b.instance.micro
        if micro is not None:
            micro = pick(micro).repeat(len(z) // len(z_t), 1)

        def frozen() -> Cond:  # y through the frozen text encoder, when a text-encoder LoRA trains
            return plain_inputs(z_t, t_rows, pick(s.frozen_prompts("plain")),
                                s.frozen_prompts("pool") if pool else None)[2]

        trained_encoder = getattr(s.model.text, "encoder_trained", False)
        weights = pool_weights(len(z_t), len(z) // len(z_t) - 1, self.pool_weight).to(z.device) if pool else None
        return Rows(z, t, cond, None, weights=weights, frozen_cond=frozen if trained_encoder else None, micro=micro)

    loss = staticmethod(preservation_loss)
