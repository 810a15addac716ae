"""Typed option fields: a default, a help text (the flag's documentation) and, for enums, the choices."""

from __future__ import annotations

from dataclasses import field
from typing import Any

REQUIRED = object()  # marker for options without a default


def opt(default: Any = REQUIRED, help: str = "", *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, its help text and, for string enums, its choices."""
    meta = {"help": help, "choices": choices, "required": default is REQUIRED}
    if default is REQUIRED:
        return field(default=None, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check(ok: bool, option: str, message: str) -> None:
    """Raise the one-line error ``<option> <message>`` unless ``ok``."""
    if not ok:
        from cat_adapter.errors import CatAdapterError

        raise CatAdapterError(f"{option} {message}")


def require_package(package: str, extra: str, option: str) -> None:
    """A feature's optional extra: a one-line error naming the pip extra when ``package`` is not installed."""
    import importlib.util

    from cat_adapter.errors import CatAdapterError

    if importlib.util.find_spec(package) is None:
        raise CatAdapterError(f"{option} needs the {package} package, which is not installed: "
                              f"pip install 'cat-adapter[{extra}]'")
