"""The package's import structure, read with ``ast`` from the source (no module is imported): the toy world is a
leaf plugin, the demo an application nothing below imports, and no two modules import each other in a cycle.

Every form of import counts: ``import a.b``, ``from a import b``, relative imports, imports inside functions and
``importlib.import_module("a.b")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cat_adapter

ROOT = Path(cat_adapter.__file__).resolve().parent
PACKAGE = ROOT.name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imported_names(path: Path, name: str | None = None) -> set[str]:
    """Every dotted name the module ``name`` (by default: its name in the package) imports (for ``from a import b``:
    both ``a`` and ``a.b``)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value))
    return out


def internal_imports(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports (a name resolved to its longest module prefix)."""
    me = module_name(path)
    out = set()
    for name in imported_names(path):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != me:
            out.add(name)
    return out


GRAPH = {m: internal_imports(p) for m, p in MODULES.items()}


def test_the_reader_sees_every_form_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\nfrom . import world\nfrom ..plugins import world_for\n"
                     "def f():\n    import cat_adapter.toy.concept\n    importlib.import_module('cat_adapter.toy.demo')\n")
    assert imported_names(probe, "cat_adapter.toy.probe") >= {
        "cat_adapter.toy.world", "cat_adapter.plugins.world_for", "cat_adapter.toy.concept", "cat_adapter.toy.demo"}


def test_no_module_outside_the_toy_imports_it():
    toy = f"{PACKAGE}.toy"
    offenders = {m: sorted(n for n in imported_names(MODULES[m]) if n == toy or n.startswith(toy + "."))
                 for m in MODULES if not (m == toy or m.startswith(toy + "."))}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_demo_is_an_application_nothing_below_imports():
    demo = f"{PACKAGE}.toy.demo"
    assert {m for m, deps in GRAPH.items() if demo in deps} <= {f"{PACKAGE}.toy.cli_demo"}


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module graph: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_only_the_model_families_name_their_denoisers():
    """"unet" / "transformer" as string literals live in models/ (and the toy world's own build) only."""
    found = []
    for m, p in MODULES.items():
        if m.startswith((f"{PACKAGE}.models", f"{PACKAGE}.toy")):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("unet", "transformer"):
                found.append((m, node.lineno))
    assert found == []
