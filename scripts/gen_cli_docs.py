"""Write docs/cli.md, the options reference, from the CLI's parsers (which are built from the typed option fields).

    python scripts/gen_cli_docs.py          # rewrites docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 when docs/cli.md is stale (tests/test_cli_docs.py runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest.upper()}`"
    names = [s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")]
    names = names or action.option_strings
    metavar = ""
    if action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction):
        metavar = " " + (action.metavar if isinstance(action.metavar, str) else action.dest.upper())
    return ", ".join(f"`{n}{metavar}`" for n in names)


def _command(name: str, parser: argparse.ArgumentParser, summary: str, out: list[str]) -> None:
    out += [f"## cat-adapter {name}", "", _cell(parser.description or summary), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, (argparse._HelpAction,
                                                                         argparse._SubParsersAction))]
        if not actions:
            continue
        title = group.title if group.title not in ("options", "optional arguments") else "options"
        out += [f"**{title}**", "", "| option | meaning |", "|---|---|"]
        out += [f"| {_flag(a)} | {_cell((a.help or '').replace('%%', '%'))} |" for a in actions]
        out.append("")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for sub_name, sub in action.choices.items():
                _command(f"{name} {sub_name}", sub, helps.get(sub_name, ""), out)


def render() -> str:
    from cat_adapter.cli.main import build_parser

    parser = build_parser()
    out = ["# Command-line reference", "",
           "Generated from the option fields by `python scripts/gen_cli_docs.py` (a test fails when this page is "
           "stale); every flag's text is its field's help, the same as `cat-adapter COMMAND --help`. Options of "
           "`train` can also come from `--config FILE.yaml` (flat, or in the sections of `OUT/config.yaml`); "
           "relative paths in a YAML file are relative to that file. See [training.md](training.md) for the "
           "options in prose.", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out += ["| command | what it does |", "|---|---|"]
    out += [f"| [`{n}`](#cat-adapter-{n}) | {_cell(helps.get(n, ''))} |" for n in sub.choices]
    out.append("")
    for name, p in sub.choices.items():
        _command(name, p, helps.get(name, ""), out)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="Exit 1 when docs/cli.md differs from what would be written.")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(DOC)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
