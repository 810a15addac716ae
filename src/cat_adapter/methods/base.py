"""A method = what is trained (parts) x which loss terms. ``Method`` composes them; the loop calls only
``parameters / param_groups / modules / forward_backward / after_step / state_dict / load_state_dict /
export / base``.

A part (``lora``, ``full``, ``tokens``) owns its parameters, their optimizer groups, the modules
accelerate must prepare, how the base model is recovered within a block (``base()``), its
checkpoint state and its exported files. A term (``identity``, ``prior``, ``preservation``) is a
pure loss function plus the rows of the batch it reads; ``terms.run_terms`` executes them.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.terms import BackwardFn, LossOutput, run_terms


@dataclass
class Exported:
    """What a part wrote into the output folder, for adapter.json."""
    kind: str                                      # lora | full | tokens
    files: dict[str, str]                          # role -> file or folder name relative to the output
    info: dict[str, Any] = field(default_factory=dict)


class Part(Protocol):
    kind: str

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def param_groups(self, optim) -> list[dict]: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def base(self) -> Any: ...                       # context manager: the base model within the block

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def after_step(self) -> None: ...

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported: ...


class Method:
    """Parts x terms, as the registry entry and the options say (built by ``build_method``)."""

    def __init__(self, name: str, model, parts: list[Part], terms: list, *, cat_mode: str = "lean"):
        self.name = name
        self.model = model
        self.parts = parts
        self.terms = terms
        self.cat_mode = cat_mode
        self.step = 0   # the optimizer step being taken (0-based), set by the loop: terms that skip steps read it
        self.objective = model.objective   # the run's objective (its options set by the loop): per-row loss weights
        self.wrapped: dict[str, torch.nn.Module] = {}   # modules as accelerate prepared them
        self._dropouts = [m for n, m in model.denoiser.named_modules()
                          if isinstance(m, torch.nn.Dropout) and m.p > 0 and "lora_" not in n]

    # ------------------------------------------------------------------------------------ parameters
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def param_groups(self, optim) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups(optim)]

    def modules(self) -> dict[str, torch.nn.Module]:
        out: dict[str, torch.nn.Module] = {}
        for part in self.parts:
            out.update(part.modules())
        return out

    def set_wrapped(self, wrapped: dict[str, torch.nn.Module]) -> None:
        """The graded passes run through accelerate's wrappers of the prepared modules."""
        self.wrapped = wrapped
        self.model.set_graded(wrapped.get("denoiser"))

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    # ------------------------------------------------------------------------------------ base model
    @contextmanager
    def base(self) -> Iterator[None]:
        """Within the block the model is the base model: every part's change undone (no copy for LoRA)."""
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.base())
            yield

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The frozen pass of Eq. 3: base model, no gradient, dropout off (train mode elsewhere untouched)."""
        states = [m.training for m in self._dropouts]
        for m in self._dropouts:
            m.eval()
        try:
            with torch.no_grad(), self.base():
                yield
        finally:
            for m, s in zip(self._dropouts, states):
                m.train(s)

    # ------------------------------------------------------------------------------------ steps
    def forward_backward(self, batch, backward: BackwardFn) -> LossOutput:
        return run_terms(self, batch, backward)

    def after_step(self) -> None:
        for part in self.parts:
            part.after_step()

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{part.kind}.{k}": v for part in self.parts for k, v in part.state_dict().items()}

    def term_logs(self) -> dict[str, float]:
        """Figures the terms log beside the loss, read before a step: what it trains with (CAT's alpha)."""
        return {k: v for t in self.terms if hasattr(t, "log_values") for k, v in t.log_values().items()}

    def part_logs(self) -> dict[str, float]:
        """Figures the parts log beside the loss, read after a step (how far TI's rows moved)."""
        return {k: v for p in self.parts if hasattr(p, "log_values") for k, v in p.log_values().items()}

    def term_state(self) -> dict[str, dict]:
        """JSON-able state of the loss terms (constrained CAT's alpha), by term name."""
        return {t.name: t.state_dict() for t in self.terms if hasattr(t, "state_dict") and t.state_dict()}

    def load_term_state(self, state: dict[str, dict]) -> None:
        for t in self.terms:
            if hasattr(t, "state_dict") and t.state_dict():
                if t.name not in state:
                    raise CatAdapterError(f"--resume: the checkpoint holds no state of the {t.name} term "
                                          "(--cat-alpha auto's alpha); resume with the options it was written with")
                t.load_state_dict(state[t.name])

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict: a missing or unexpected key is an error naming it (a checkpoint of another run)."""
        kinds = {part.kind for part in self.parts}
        unexpected = [k for k in state if k.split(".", 1)[0] not in kinds]
        if unexpected:
            raise CatAdapterError(f"checkpoint holds state this method does not train: {unexpected[:3]}")
        for part in self.parts:
            prefix = part.kind + "."
            part.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def export(self, out_dir: Path, *, dtype: torch.dtype = torch.float32, export_format: str = "diffusers"
               ) -> list[Exported]:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return [part.export(Path(out_dir), dtype=dtype, export_format=export_format) for part in self.parts]

    @property
    def changes_trigger_free(self) -> bool:
        """Whether a prompt without the trigger can give other images than the base model's."""
        return any(part.kind != "tokens" for part in self.parts)


def check_state_keys(expected: set[str], got: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + ("; " if missing and unexpected else "") + \
                 (f"unexpected {unexpected[:3]}" if unexpected else "")
        raise CatAdapterError(f"checkpoint {what} state does not match this run ({detail})")


def build_method(cfg, model, *, need_base_copy: bool = False) -> Method:
    """The method of ``cfg``: its parts attached to ``model`` and its active terms, from the registry."""
    from cat_adapter.methods.registry import active_terms, get_spec, part_class, term_class

    spec = get_spec(cfg.method.method)
    terms = [term_class(name)(cfg) for name in active_terms(spec, cfg)]
    context = {"need_base_copy": need_base_copy or any(t.needs_base for t in terms)}
    parts = [part_class(name)(model, cfg, **context) for name in spec.parts]
    return Method(spec.name, model, parts, terms, cat_mode=cfg.preservation.cat_mode)
