"""Names that plugins add: model aliases such as ``toy``, registered through entry points.

A package adds names with an entry point in the group ``cat_adapter.plugins`` whose target is a
function called once with this module: ``register_alias(name, kind, resolver)``. The shipped
shapes world registers ``toy`` this way (see pyproject.toml), so the core modules (models,
evaluation, training) import nothing from ``cat_adapter.toy``.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

# (name, kind) -> resolver(option) -> path. kind: "pipeline" (a --model) or "clip" (a --clip).
_ALIASES: dict[tuple[str, str], Callable[[str], str]] = {}
_LOADED = False


def register_alias(name: str, kind: str, resolver: Callable[[str], str]) -> None:
    _ALIASES[(name.lower(), kind)] = resolver


def load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from importlib.metadata import entry_points

    import sys

    for ep in entry_points(group="cat_adapter.plugins"):
        try:
            ep.load()(sys.modules[__name__])
        except Exception as exc:  # a broken plugin must not break the core
            log.warning("plugin %s could not be loaded (%s)", ep.name, exc)


def resolve_alias(spec: str | None, kind: str, option: str) -> str | None:
    """``spec`` unchanged, or the path a plugin gives for the alias ``spec`` of this kind."""
    if spec is None:
        return None
    load_plugins()
    resolver = _ALIASES.get((spec.strip().lower(), kind))
    return resolver(option) if resolver else spec


def is_alias(spec: str | None, kind: str) -> bool:
    load_plugins()
    return spec is not None and (spec.strip().lower(), kind) in _ALIASES
