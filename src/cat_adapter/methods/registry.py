"""The method registry: each method is what is trained (parts) x which loss terms, plus its options.

Light on purpose (no torch, no import of the method folders): the config and the CLI read it to build
``--method``'s choices, the option sections and the per-method defaults. Each method folder registers itself in
its ``__init__.py``, which ``cat_adapter/methods/__init__.py`` imports; Python runs that package first whenever
this module is imported, so every built-in method is registered before anything here is read. Parts and terms
are imported only when a run builds them.

A method declares what it supports (``MethodSpec``); a term declares when it runs (``enabled``), its order and its
options section (``register_term``); what a term needs from the data stream it says itself (``Term.stream_options``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Option sections contributed by method folders: name -> dataclass (its fields are the flags).
_SECTIONS: dict[str, type] = {}
# Parts (what is trained): name -> "module:attribute", imported lazily.
_PARTS: dict[str, str] = {}


@dataclass(frozen=True)
class TermSpec:
    """A loss term: where its class lives, its place in a step (lower runs first) and, for a term a method lists as
    optional, the test of the options that switch it on."""

    name: str
    target: str                                           # "module:Class"
    order: int
    enabled: Callable[[Any], bool] | None = None          # (config) -> on; None: on whenever the method lists it


_TERMS: dict[str, TermSpec] = {}


@dataclass(frozen=True)
class MethodSpec:
    """``name`` = ``parts`` x ``terms``; ``optional_terms`` are switched on by options (their ``enabled``)."""

    name: str
    parts: tuple[str, ...]
    terms: tuple[str, ...]
    sections: tuple[str, ...]                  # option sections this method reads (others are rejected)
    defaults: dict[str, Any] = field(default_factory=dict)  # per-method defaults of any option
    optional_terms: tuple[str, ...] = ()       # terms that options may add (prior, preservation)
    description: str = ""
    check: Callable[[Any, set[str]], None] | None = None  # (config, explicitly given option names) -> raise
    # "module:function" that runs the whole method instead of the plain training loop (an orchestrator such as
    # The Chosen One, which generates its own data and trains several times; it lives above training/); None: the loop.
    runner: str | None = None
    needs_data: bool = True                    # False: the method makes its own images, --data is not read
    multi_concept: bool = False                # trains several concepts in one adapter (--concepts)
    quantizable_base: bool = True              # its base may be quantized (--quantize-base): it trains no base weight
    # A method that makes its own images (needs_data False): the option a prompt-only concept's prompt goes to,
    # and "module:function" (training output folder) -> the folder of images identity is measured against.
    prompt_option: str | None = None
    identity_reference: str | None = None


_METHODS: dict[str, MethodSpec] = {}


def register_section(name: str, cls: type) -> type:
    _SECTIONS[name] = cls
    return cls


def register_part(name: str, target: str) -> None:
    _PARTS[name] = target


def register_term(name: str, target: str, *, order: int, enabled: Callable[[Any], bool] | None = None) -> None:
    _TERMS[name] = TermSpec(name, target, order, enabled)


def register_method(spec: MethodSpec) -> MethodSpec:
    _METHODS[spec.name] = spec
    return spec


def method_names() -> list[str]:
    return list(_METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        from cat_adapter.errors import CatAdapterError

        raise CatAdapterError(f"--method must be one of {', '.join(_METHODS)} (got {name!r})")
    return _METHODS[name]


def sections() -> dict[str, type]:
    return dict(_SECTIONS)


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def term_names() -> list[str]:
    return list(_TERMS)


def part_class(name: str):
    return _load(_PARTS[name])


def term_class(name: str):
    return _load(_TERMS[name].target)


def runner(spec: MethodSpec):
    """The orchestrator function of a method that is not one pass of the training loop, or None."""
    return None if spec.runner is None else _load(spec.runner)


def identity_reference(spec: MethodSpec):
    """``(training output folder) -> images folder`` of a method that makes its own images, or None."""
    return None if spec.identity_reference is None else _load(spec.identity_reference)


def active_terms(spec: MethodSpec, cfg) -> list[str]:
    """The method's terms plus the optional ones its options switch on, in each term's declared order."""
    terms = list(spec.terms)
    for name in spec.optional_terms:
        enabled = _TERMS[name].enabled
        if name not in terms and (enabled is None or enabled(cfg)):
            terms.append(name)
    return sorted(terms, key=lambda n: _TERMS[n].order)
