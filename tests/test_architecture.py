"""The import contract: medseg_mem's packages sit on floors, and each floor imports only the floors below it.

Every ``import`` of a ``medseg_mem`` module anywhere in a file counts, inside functions too (a lazy import that
goes upwards is a loop all the same). Two packages on one floor do not import each other. Files import one
another without a circle, and nothing sits at the package root but ``__init__``/``__main__``. The floors are
drawn in docs/architecture.md; a new package must be given a floor here.

Run alone: ``python -m pytest tests/test_architecture.py``; ``python tests/test_architecture.py`` prints the
back-edges and the circles it finds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "medseg_mem"

#: Lowest first. Packages on one floor may not import each other.
FLOORS: Tuple[Tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("models",),
    ("inference",),
    ("variants",),
    ("memory",),
    ("training",),
    ("report", "overlay"),
    ("runner", "export"),
    ("predict",),
    ("label",),
    ("cli", "bundle"),
)
ROOT_FILES = {"__init__.py", "__main__.py"}

Graph = Dict[str, Set[str]]


def modules(package: Path) -> Dict[str, Path]:
    """``{dotted name: file}`` of every module under ``package`` (a package by its ``__init__``)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(node: ast.AST, importer: str, is_package: bool, known) -> List[str]:
    """The modules an ``import`` / ``from ... import`` statement depends on: ``from package import module`` names
    the module, ``from module import name`` (or ``from package import name`` of its face) the module or package."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def import_graph(package: Path) -> Graph:
    """``{module: modules it imports}`` over ``package``, every import statement of each file included."""
    known = modules(package)
    graph: Graph = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = imported(node, name, path.name == "__init__.py", known)
                targets |= {owner for owner in map(lambda n: owning_module(n, known), names) if owner}
        graph[name] = targets - {name}
    return graph


def owning_module(dotted: str, known) -> Optional[str]:
    """The module ``dotted`` names or lives in (``medseg_mem.core.errors.MedsegError`` -> ``medseg_mem.core.errors``)."""
    while dotted and dotted not in known:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def floor_of(module: str) -> Optional[str]:
    """The package right under ``medseg_mem`` that ``module`` belongs to (``None`` for the root ``medseg_mem``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def levels() -> Dict[str, int]:
    return {package: index for index, floor in enumerate(FLOORS) for package in floor}


def back_edges(graph: Graph) -> List[str]:
    """``importer -> imported`` for every import of a package on the same floor or a higher one."""
    level = levels()
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = floor_of(importer), floor_of(target)
            if here in level and there in level and here != there and level[there] >= level[here]:
                found.append(f"{importer} -> {target}")
    return found


def circles(graph: Graph) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: Graph) -> Graph:
    """The import graph between the packages right under ``medseg_mem``."""
    packages: Graph = {}
    for importer, targets in graph.items():
        for target in targets:
            here, there = floor_of(importer), floor_of(target)
            if here and there and here != there:
                packages.setdefault(here, set()).add(there)
    return packages


def test_nothing_sits_at_the_package_root_but_init_and_main():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ROOT_FILES)
    assert not loose, f"modules at the package root: {loose}; give each a floor (docs/architecture.md)"


def test_every_package_has_a_floor():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in packages if name not in levels()]
    assert not missing, f"packages without a floor in FLOORS: {missing}"


def test_each_floor_imports_only_the_floors_below_it():
    found = back_edges(import_graph(PACKAGE))
    assert not found, "imports of a floor above or beside:\n" + "\n".join(found)


def test_no_package_loop_and_no_file_circle():
    graph = import_graph(PACKAGE)
    assert circles(package_graph(graph)) == []
    assert circles(graph) == []


def test_the_contract_catches_a_back_edge_a_lazy_import_and_a_circle(tmp_path):
    package = tmp_path / "medseg_mem"
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/names.py": "def late():\n    from medseg_mem.cli import main  # lazy, upwards\n",
        "cli/__init__.py": "from medseg_mem.core.names import late\n\n\ndef main():\n    pass\n",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "from medseg_mem.data.a import x\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = import_graph(package)
    assert back_edges(graph) == ["medseg_mem.core.names -> medseg_mem.cli"]
    assert circles(graph) == [["medseg_mem.cli", "medseg_mem.core.names"], ["medseg_mem.data.a", "medseg_mem.data.b"]]
    assert circles(package_graph(graph)) == [["cli", "core"]]


if __name__ == "__main__":
    whole = import_graph(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE)
    print("back-edges:", back_edges(whole) or "none")
    print("package loops:", circles(package_graph(whole)) or "none")
    print("file circles:", circles(whole) or "none")
