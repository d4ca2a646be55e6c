"""No import circle in the package: every import of ``nnunetv2_segresmamba.*`` counted, at module
level and inside functions (``TYPE_CHECKING`` blocks too), read with ``ast`` without importing
anything.

The graph is at module granularity: ``import a.b`` and ``from a.b import X`` are edges to
``a.b``; ``from a import b`` is an edge to ``a.b`` where ``b`` is a submodule of ``a``, else to
``a`` (its ``__init__``), so a package ``__init__`` that imports its submodules has edges to
them. Relative imports are resolved against the importing module's package. The parent packages
that Python runs on the way to ``a.b`` are not counted: they are already being imported when a
module inside them imports a sibling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nnunetv2_segresmamba

PACKAGE = nnunetv2_segresmamba.__name__
ROOT = Path(nnunetv2_segresmamba.__file__).parent


def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file (a package as its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that the module ``name`` at ``path`` imports anywhere in its text."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of ``graph`` (Tarjan), each as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_in(sorted(group), graph) for group in groups]


def cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through ``group[0]`` inside ``group`` (a strongly connected set), by breadth first."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")


def test_the_package_has_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles (module -> module it imports):\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles)


@pytest.fixture
def toy_package(tmp_path: Path) -> Path:
    """A package ``toy`` with a circle through a function-level relative import and a submodule
    imported by ``from toy import sub``, and a line of imports with no circle."""
    files = {
        "__init__.py": "",
        "a.py": "from toy import b\n",
        "b.py": "def f():\n    from .sub.c import X\n",
        "sub/__init__.py": "from toy.sub.c import X\n",
        "sub/c.py": "import toy.a\nX = 1\n",
        "d.py": "from toy.sub import c\n",
        "e.py": "import toy.d\n",
    }
    for name, text in files.items():
        (tmp_path / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "toy" / name).write_text(text)
    return tmp_path / "toy"


def test_the_graph_counts_imports_in_functions_relative_and_submodules(toy_package: Path):
    graph = import_graph(toy_package, "toy")
    assert graph == {"toy": set(), "toy.a": {"toy.b"}, "toy.b": {"toy.sub.c"}, "toy.sub": {"toy.sub.c"},
                     "toy.sub.c": {"toy.a"}, "toy.d": {"toy.sub.c"}, "toy.e": {"toy.d"}}
    assert import_cycles(graph) == [["toy.a", "toy.b", "toy.sub.c", "toy.a"]]


def test_a_line_of_imports_is_no_cycle(toy_package: Path):
    (toy_package / "sub" / "c.py").write_text("X = 1\n")
    assert import_cycles(import_graph(toy_package, "toy")) == []
