"""What plugins add: model aliases (``toy``), worlds (what the core may ask about a model's world) and subcommands.

A package adds them with an entry point in the group ``cat_adapter.plugins`` whose target is a function called
once with this module: it calls ``register_alias(name, kind, resolver)``, ``register_world(world)`` and
``register_command(name, register)``. The shipped shapes world registers ``toy`` this way (see pyproject.toml),
so no module outside ``cat_adapter/toy/`` imports ``cat_adapter.toy`` (``tests/test_layers.py`` reads every
import to hold that).

A **world** is a model whose images the core can read: the shapes world knows its vocabulary, writes concepts
from a spec and reads a concept's look from pixels. A real model has no world: every question below is then
answered by the core's general-purpose fallback (CLIP scores, a built-in noun list, the plain defaults).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

log = logging.getLogger(__name__)

# (name, kind) -> resolver(option) -> path. kind: "pipeline" (a --model) or "clip" (a --clip).
_ALIASES: dict[tuple[str, str], Callable[[str], str]] = {}
_WORLDS: dict[str, "World"] = {}          # alias of the world's pipeline -> the world
_COMMANDS: dict[str, Callable] = {}       # subcommand name -> register(subparsers)
_LOADED = False


@runtime_checkable
class World(Protocol):
    """What the core asks a model's world. ``name`` is also the ``--model`` alias of its pipeline."""

    name: str

    def class_nouns(self) -> list[str]:
        """Class nouns of the world, for ``--preserve-pool auto``."""

    def attributes(self) -> list[str]:
        """Attribute phrases with ``{noun}`` (``"red {noun}"``, ``"{noun} with a blue outline"``) for the auto pool."""

    def load_spec(self, source: str | Path | dict, where: str) -> dict:
        """A concept spec (a file or an inline mapping) checked, with its defaults filled in."""

    def write_concept(self, spec: dict, folder: Path) -> None:
        """The concept's images and captions, written from its spec into the new folder ``folder``."""

    def concept_prompts(self, spec: dict) -> dict[str, list[str]]:
        """``heldout`` trigger templates, trigger-free ``control`` prompts (never trained on) and a ``pool`` of
        other-class prompts for a preservation pool (sharing none with ``control``)."""

    def concept_look(self, spec: dict) -> dict:
        """What the concept looks like, in the form ``concept_rate`` and ``look_of`` use."""

    def look_of(self, images: list) -> dict | None:
        """The most common look read from ``images`` (PIL), None when none can be read."""

    def concept_rate(self, images: list, look: dict) -> float:
        """The share of ``images`` (PIL) that show ``look``, read from pixels."""

    def defaults(self, method: str) -> dict:
        """Option values tuned for this world per method (``tco_images`` for tco, ...); {} where none are."""


def register_alias(name: str, kind: str, resolver: Callable[[str], str]) -> None:
    _ALIASES[(name.lower(), kind)] = resolver


def register_world(world: World) -> None:
    _WORLDS[world.name.lower()] = world


def register_command(name: str, register: Callable) -> None:
    """A subcommand: ``register(subparsers)`` adds its parser, as the core's ``cli/*.py`` modules do."""
    _COMMANDS[name] = register


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


def world_for(model: str | None) -> World | None:
    """The world of ``--model`` (the one test of "is this the toy model?"), None for a real model."""
    if model is None:
        return None
    load_plugins()
    return _WORLDS.get(str(model).strip().lower())


def commands() -> dict[str, Callable]:
    load_plugins()
    return dict(_COMMANDS)
