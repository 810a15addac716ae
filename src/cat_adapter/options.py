"""The one options system: typed fields with a default, a help text (the flag's documentation), choices and a path
mark; flags built from them; values from flags or YAML coerced by one function.

Every command's options are a dataclass of ``opt()`` fields: ``train``'s sectioned ``TrainConfig`` (config.py),
``sample``'s ``SampleOptions``, ``evaluate``'s ``EvalOptions``, ``score``'s ``ScoreOptions``, ``report``'s
``ReportOptions``, ``compare``'s ``CompareOptions``. ``add_arguments`` turns a dataclass into flags,
``from_args`` the parsed flags back into it, and ``scripts/gen_cli_docs.py`` writes docs/cli.md from the parsers.

A field marked ``path="in"`` names a file or folder that must exist (or an alias such as ``toy``, or a hub id);
``path="out"`` a folder the command writes. The saved config's portability (``config.portable``) and compare's
re-basing of a plan's relative paths (``compare/plan.py``) both read the mark.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
from typing import Any, get_args, get_origin, get_type_hints

REQUIRED = object()  # marker for options without a default


def opt(default: Any = REQUIRED, help: str = "", *, choices: tuple[str, ...] | None = None, path: str | None = None,
        aliases: tuple[str, ...] = (), flag: str | None = None, append: bool = False, positional: bool = False) -> Any:
    """A config field: its default, its help text, for string enums its choices, and for paths their kind (``in``:
    read, must exist unless an alias or hub id; ``out``: written). ``aliases``: other flags for it; ``flag``: its
    flag when not ``--field-name``; ``append``: a repeatable flag collected into a list; ``positional``: an
    argument without a flag (one or more values)."""
    assert path in (None, "in", "out"), path
    meta = {"help": help, "choices": choices, "required": default is REQUIRED, "path": path, "aliases": aliases,
            "flag": flag, "append": append, "positional": positional}
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


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def path_kind(f: dataclasses.Field) -> str | None:
    """``in``, ``out`` or None: the field's path mark."""
    return f.metadata.get("path")


def path_fields(cls: type) -> dict[str, str]:
    """Option name -> path kind, for every marked field of ``cls`` (a sectioned config: of every section)."""
    out: dict[str, str] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(path_fields(hints[f.name]))
        elif path_kind(f):
            out[f.name] = path_kind(f)
    return out


def rebase_path(root, key: str, value: Any, kinds: dict[str, str]) -> Any:
    """The one rule for relative paths in a YAML file (a --config file, a compare plan, a concepts file): relative to
    the file's folder ``root``. A folder the run writes (``out``) always; a file or folder it reads (``in``) where it
    exists there, so aliases such as 'toy', hub ids and words such as 'auto' or 'concept' stay as they are."""
    from pathlib import Path

    if key not in kinds or not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    candidate = Path(root) / value
    return str(candidate) if kinds[key] == "out" or candidate.exists() else value


# --------------------------------------------------------------------------------------------
# Coercion of values from YAML or the command line into the field's type.
# --------------------------------------------------------------------------------------------


def coerce(name: str, value: Any, typ: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Convert ``value`` to ``typ``; raise a one-line error naming the option otherwise."""
    from cat_adapter.errors import CatAdapterError

    where = flag(name)
    args = get_args(typ)
    if value is None and type(None) not in args:
        raise CatAdapterError(f"{where}: a value is required (got null)")
    if set(args) == {float, str}:  # a number or a word (--cat-alpha 1.0 | auto)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            if choices is not None and value.strip() in choices:
                return value.strip()
            try:
                return float(value)
            except ValueError:
                pass
        raise CatAdapterError(f"{where}: a number or {' or '.join(choices or ())} (got {value!r})")
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in args if a is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
            if choices is not None and value not in choices:
                raise CatAdapterError(f"{where} must be one of {', '.join(choices)} (got {value!r})")
            return value
        if get_origin(typ) is list:   # list[str]: a YAML list, or comma-separated words
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        raise CatAdapterError(f"{where}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    raise TypeError(f"unsupported option type {typ} for {name}")


# --------------------------------------------------------------------------------------------
# Flags from fields, and fields from parsed flags.
# --------------------------------------------------------------------------------------------


def default_text(f: dataclasses.Field, extra: str = "") -> str:
    """`` (required)`` or `` (default: X)`` for the help text."""
    if f.metadata.get("required"):
        return " (required)"
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if default is None and not extra:
        return ""   # the help text says what happens when it is not given
    if isinstance(default, list):
        default = ",".join(map(str, default))
    return f" (default: {default}{extra})"


def add_field(group, f: dataclasses.Field, typ: Any, *, extra_default: str = "", argparse_required: bool = False
              ) -> None:
    """One flag for field ``f`` in ``group`` (a parser or an argument group); its default is SUPPRESSed, so only the
    flags given on the command line reach ``from_args``."""
    meta = f.metadata
    text = (meta.get("help", "") + default_text(f, extra_default)).replace("%", "%%")
    if meta.get("positional"):
        many = get_origin(typ) is list
        group.add_argument(f.name, nargs="+" if many else None, metavar=f.name.upper().rstrip("S") if many else "OUT"
                           if meta.get("path") else f.name.upper(), help=text)
        return
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
    if typ is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        name = (meta.get("flag") or f.name).lstrip("-").replace("-", "_")
        number_or_word = set(get_args(typ)) == {float, str}   # --cat-alpha 1.0 | auto
        choices = (("NUMBER",) if number_or_word else ()) + tuple(meta.get("choices") or ())
        kwargs["metavar"] = "{" + ",".join(choices) + "}" if meta.get("choices") else name.upper()
        if meta.get("append"):
            kwargs["action"] = "append"
    if argparse_required and meta.get("required"):
        kwargs["required"] = True
    group.add_argument(meta.get("flag") or flag(f.name), *meta.get("aliases", ()), **kwargs)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the flat options dataclass ``cls``; required fields are required flags."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        add_field(parser, f, hints[f.name], argparse_required=True)


def from_args(cls: type, args: argparse.Namespace, **fixed: Any):
    """``cls`` from the flags given (each coerced to its field's type) and ``fixed`` values; the rest default."""
    hints = get_type_hints(cls)
    given = vars(args)
    values = {f.name: coerce(f.name, given[f.name], hints[f.name], f.metadata.get("choices"))
              for f in dataclasses.fields(cls) if f.name in given}
    return cls(**{**values, **fixed})
