"""The method registry: each method is what is trained (parts) x which loss terms, plus its options.

Light on purpose (no torch): the config and the CLI read it to build ``--method``'s choices, the
option sections and the per-method defaults. Each method folder registers itself in its
``__init__.py``; its parts and terms are imported only when a run builds them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Option sections contributed by method folders: name -> dataclass (its fields are the flags).
_SECTIONS: dict[str, type] = {}
# Parts (what is trained) and terms (loss terms): name -> "module:attribute", imported lazily.
_PARTS: dict[str, str] = {}
_TERMS: dict[str, str] = {}


@dataclass(frozen=True)
class MethodSpec:
    """``name`` = ``parts`` x ``terms``; ``optional_terms`` are switched on by options (see ``active_terms``)."""

    name: str
    parts: tuple[str, ...]
    terms: tuple[str, ...]
    sections: tuple[str, ...]                  # option sections this method reads (others are rejected)
    defaults: dict[str, Any] = field(default_factory=dict)  # per-method defaults of any option
    optional_terms: tuple[str, ...] = ()       # terms that options may add (prior, preservation)
    description: str = ""
    check: Callable[[Any, set[str]], None] | None = None  # (config, explicitly given option names) -> raise
    # "module:function" that runs the whole method instead of the plain training loop (an orchestrator such as
    # The Chosen One, which generates its own data and trains several times); None: the loop.
    runner: str | None = None
    needs_data: bool = True                    # False: the method makes its own images, --data is not read


_METHODS: dict[str, MethodSpec] = {}


def register_section(name: str, cls: type) -> type:
    _SECTIONS[name] = cls
    return cls


def register_part(name: str, target: str) -> None:
    _PARTS[name] = target


def register_term(name: str, target: str) -> None:
    _TERMS[name] = target


def register_method(spec: MethodSpec) -> MethodSpec:
    _METHODS[spec.name] = spec
    return spec


def _ensure() -> None:
    import cat_adapter.methods  # noqa: F401  (the built-in method folders register themselves)


def method_names() -> list[str]:
    _ensure()
    return list(_METHODS)


def get_spec(name: str) -> MethodSpec:
    _ensure()
    if name not in _METHODS:
        from cat_adapter.errors import CatAdapterError

        raise CatAdapterError(f"--method must be one of {', '.join(_METHODS)} (got {name!r})")
    return _METHODS[name]


def sections() -> dict[str, type]:
    _ensure()
    return dict(_SECTIONS)


def _load(table: dict[str, str], name: str):
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def part_class(name: str):
    _ensure()
    return _load(_PARTS, name)


def term_class(name: str):
    _ensure()
    return _load(_TERMS, name)


def runner(spec: MethodSpec):
    """The orchestrator function of a method that is not one pass of the training loop, or None."""
    if spec.runner is None:
        return None
    module, attr = spec.runner.split(":")
    return getattr(importlib.import_module(module), attr)


def active_terms(spec: MethodSpec, cfg) -> list[str]:
    """The method's terms plus the optional ones its options switch on, in execution order."""
    terms = list(spec.terms)
    if "prior" in spec.optional_terms and cfg.prior.prior_preservation and "prior" not in terms:
        terms.append("prior")
    if "preservation" in spec.optional_terms and cfg.preservation.on and "preservation" not in terms:
        terms.append("preservation")
    order = ("identity", "prior", "preservation")
    return sorted(terms, key=order.index)
