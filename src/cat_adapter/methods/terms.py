"""Loss terms and the one executor that runs them: concatenation and splitting of sub-batches live here.

A term names the rows of the batch it predicts on (``Rows``: z_t, t, conditioning and a target, or
no target when the target is the frozen model's prediction) and a pure loss over them. Terms of the
``data`` group (identity, prior) always share one graded forward, as diffusers' DreamBooth scripts
batch instance and class images. The ``preservation`` group (CAT) joins that forward in ``fast``
mode, or runs after the data terms' backward in ``lean`` mode, whose peak memory is then close to
plain LoRA's. Both give the same gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cat_adapter.diffusion import mse
from cat_adapter.models.base import Cond, TokenIds

BackwardFn = Callable[[torch.Tensor], None]


@dataclass
class LossOutput:
    total: torch.Tensor                                      # scalar (already backpropagated)
    terms: dict[str, float] = field(default_factory=dict)    # named terms, logged separately


@dataclass
class Rows:
    """One term's sub-batch: predictions eps(z_t, t, cond) compared with ``target`` (None: frozen model's)."""
    z_t: torch.Tensor
    t: torch.Tensor
    cond: Cond
    target: torch.Tensor | None
    weights: torch.Tensor | None = None      # per-row loss weights (--snr-gamma, --weighting-scheme); None: plain mean
    frozen_cond: Callable[[], Cond] | None = None   # the frozen pass's conditioning when it is not ``cond``
                                                    # (text-encoder LoRA: y through the frozen encoder)
    micro: torch.Tensor | None = None        # (N, 6) each row's image sizes and crop (``Noised.micro``)
    reference: torch.Tensor | None = None    # a third input of the loss (DCO: the frozen model's prediction)

    def __len__(self) -> int:
        return self.z_t.shape[0]


class StepInputs:
    """What the terms of one step share: the batch, z_t and target of the instance stream, prompt encoding."""

    def __init__(self, method, batch):
        self.method, self.batch, self.model = method, batch, method.model
        inst = batch.instance
        obj = self.model.objective
        self.z_t = obj.noisy(inst.latents, inst.noise, inst.timesteps)
        self.target = obj.target(inst.latents, inst.noise, inst.timesteps)
        self._encoded: dict[str, Cond] = {}

    def prompts(self, name: str) -> Cond:
        """A cached ``Cond`` as it is; token ids encoded now, with gradients to the trainable tokens."""
        p = self.batch.prompts[name]
        if isinstance(p, TokenIds):
            if name not in self._encoded:
                self._encoded[name] = self.model.text.encode_ids(p, self.method.wrapped)
            return self._encoded[name]
        return p

    def frozen_prompts(self, name: str) -> Cond:
        """The prompts as the frozen model encodes them: call within ``method.frozen()``, where a text-encoder
        LoRA is off. Cached embeddings are already the frozen encoder's."""
        p = self.batch.prompts[name]
        return self.model.text.encode_ids(p) if isinstance(p, TokenIds) else p


class Term:
    """What every loss term has: a name, a group (``data`` or ``preservation``), a weight, the rows it reads and a
    pure loss; and what the loop asks of it without knowing it: ``check_inputs`` (cheap checks of the term's own
    inputs before any model loads) and ``prepare`` (data it needs once the base model is loaded), both returning
    keyword arguments of the training cache (``data.cache.build_cache``); ``stream_options`` (what it needs from
    the data stream: ``data.cache.StreamSampler`` keywords); ``kept_folders`` (folders of the output that
    ``--overwrite`` keeps: caches the term checks itself); ``needs_base`` (it reads the base model's prediction,
    so a full fine-tune keeps a frozen copy)."""

    name: str
    group: str
    needs_base: bool = False
    kept_folders: tuple[str, ...] = ()

    @classmethod
    def check_inputs(cls, cfg) -> dict:
        return {}

    @classmethod
    def prepare(cls, cfg, model, accelerator) -> dict:
        return {}

    @classmethod
    def stream_options(cls, cfg) -> dict:
        return {}

    def active(self, step: int) -> bool:
        """Whether the term runs at this (0-based) optimizer step."""
        return True


def identity_loss(pred_trigger: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Eq. 1 (and Eq. 3's first term): ||target - eps_theta(z_t, t, tau(y_T))||^2, target eps or v; per-row
    ``weights`` under --snr-gamma."""
    return mse(pred_trigger, target, weights)


def row_weights(cfg, objective, timesteps: torch.Tensor) -> torch.Tensor | None:
    """A data term's per-row loss weights: --snr-gamma's (DDPM) or the flow objective's --weighting-scheme
    (sigma_sqrt, cosmap); None (a plain mean) when neither weights."""
    gamma = cfg.optim.snr_gamma
    return objective.loss_weights(timesteps) if gamma is None else objective.min_snr_weights(timesteps, gamma)


class IdentityTerm(Term):
    name, group = "identity", "data"

    def __init__(self, cfg):
        self.weight = 1.0
        self.cfg = cfg

    def rows(self, s: StepInputs) -> Rows:
        t = s.batch.instance.timesteps
        return Rows(s.z_t, t, s.prompts("trigger"), s.target, row_weights(self.cfg, s.method.objective, t),
                    micro=s.batch.instance.micro)

    loss = staticmethod(identity_loss)


def concat_rows(rows: list[Rows]) -> tuple[torch.Tensor, torch.Tensor, Cond, torch.Tensor | None, list[int]]:
    """One batch of every term's rows, in order (z_t, t, conditioning, image sizes), and the sizes to split the
    prediction by."""
    if len(rows) == 1:
        r = rows[0]
        return r.z_t, r.t, r.cond, r.micro, [len(r)]
    micro = None if any(r.micro is None for r in rows) else torch.cat([r.micro for r in rows])
    return (torch.cat([r.z_t for r in rows]), torch.cat([r.t for r in rows]), Cond.cat([r.cond for r in rows]),
            micro, [len(r) for r in rows])


def _predict(model, rows: list[Rows]) -> list[torch.Tensor]:
    z, t, cond, micro, sizes = concat_rows(rows)
    return list(torch.split(model.predict(z, t, cond, micro=micro), sizes))


def _loss(term: Term, pred: torch.Tensor, r: Rows) -> torch.Tensor:
    if r.reference is not None:
        return term.loss(pred, r.target, r.reference)
    return term.loss(pred, r.target) if r.weights is None else term.loss(pred, r.target, r.weights)


def run_terms(method, batch, backward: BackwardFn) -> LossOutput:
    """Every term's loss, weighted and backpropagated; the loss terms are logged as ``loss_<name>``."""
    s = StepInputs(method, batch)
    model = method.model
    data = [(term, term.rows(s)) for term in method.terms if term.group == "data"]
    held = [(term, term.rows(s)) for term in method.terms if term.group != "data" and term.active(method.step)]
    skipped = {f"loss_{term.name}": None for term in method.terms if term.group != "data" and not term.active(method.step)}
    values: dict[str, torch.Tensor] = {}

    def frozen_targets() -> None:
        for _, r in held:
            with method.frozen():
                r.target = model.predict(r.z_t, r.t, r.frozen_cond() if r.frozen_cond is not None else r.cond,
                                         micro=r.micro)

    if method.cat_mode == "fast" or not held:
        frozen_targets()
        preds = _predict(model, [r for _, r in data + held])
        for (term, r), pred in zip(data + held, preds):
            values[term.name] = _loss(term, pred, r)
        total = sum(term.weight * values[term.name] for term, _ in data + held)
        backward(total)
    else:
        preds = _predict(model, [r for _, r in data])
        for (term, r), pred in zip(data, preds):
            values[term.name] = _loss(term, pred, r)
        data_total = sum(term.weight * values[term.name] for term, _ in data)
        backward(data_total)  # frees the data terms' activations before the preservation graph is built
        frozen_targets()
        total = data_total.detach()
        for term, r in held:
            values[term.name] = _loss(term, _predict(model, [r])[0], r)
            backward(term.weight * values[term.name])  # also at weight 0: a zero gradient, LoRA's update bit for bit
            total = total + term.weight * values[term.name].detach()
    # (meta tensors, the memory estimate's step, have no value to log)
    logged = {f"loss_{k}": float("nan") if v.is_meta else v.item() for k, v in values.items()}
    return LossOutput(total.detach(), {**logged, **skipped})
