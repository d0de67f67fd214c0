"""The package layout is the architecture: an import graph of distill/ (imports inside functions
counted, TYPE_CHECKING-only ones not) with no cycle and no import from a lower layer to a
higher one.

Layers, lowest first: core ← stage libraries (teach, student, train, eval; each imports only
core and its own stage) ← tasks ← stage runners (teach.run, train.run, eval.run, ship, …) ←
ops ← pipeline and cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distill"

RUNNERS = (
    "distill.teach.run",
    "distill.teach.active",
    "distill.teach.shard",
    "distill.train.run",
    "distill.train.recipe",
    "distill.train.validation",
    "distill.eval.run",
    "distill.eval.speed",
    "distill.ship",
)
LAYERS = (
    ("distill.core", 0),
    *((runner, 3) for runner in RUNNERS),
    ("distill.teach", 1),
    ("distill.student", 1),
    ("distill.train", 1),
    ("distill.eval", 1),
    ("distill.tasks", 2),
    ("distill.ops", 4),
    ("distill.pipeline", 3),
    ("distill.cli", 5),
    ("distill", 5),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == (
            "TYPE_CHECKING"
        ):
            skipped |= {id(n) for body in node.body for n in ast.walk(body)}
    return skipped


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The distill modules ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distill")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("distill"):
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer(name: str) -> tuple[int, str]:
    """(layer, stage package) of a module: the longest matching prefix in LAYERS."""
    for prefix, level in sorted(LAYERS, key=lambda item: -len(item[0])):
        if name == prefix or name.startswith(prefix + "."):
            stage = ".".join(name.split(".")[:2])
            return level, stage
    raise AssertionError(f"{name}: no layer (add it to LAYERS)")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in edges.items():
        level, stage = layer(source)
        for target in targets:
            t_level, t_stage = layer(target)
            same_stage_library = level == t_level == 1 and stage == t_stage
            if t_level < level or same_stage_library or (t_level == level != 1):
                continue
            wrong.append(f"{source} (layer {level}) imports {target} (layer {t_level})")
    return sorted(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    assert upward_imports(graph()) == []


def test_every_module_has_a_layer_and_no_file_passes_420_lines() -> None:
    long = []
    for name, path in modules().items():
        layer(name)
        lines = len(path.read_text().splitlines())
        if lines > 420:
            long.append(f"{name}: {lines} lines")
    assert long == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    # The detectors themselves, on a constructed graph: a ↔ b is a cycle; core → tasks is upward;
    # a stage library importing another stage's library is upward too.
    edges = {
        "distill.core.a": {"distill.core.b"},
        "distill.core.b": {"distill.core.a", "distill.tasks.base"},
        "distill.student.model": {"distill.train.losses"},
        "distill.train.run": {"distill.tasks.base", "distill.core.a"},
        "distill.tasks.base": set(),
        "distill.train.losses": set(),
    }
    assert cycles(edges) == [["distill.core.a", "distill.core.b"]]
    assert upward_imports(edges) == [
        "distill.core.b (layer 0) imports distill.tasks.base (layer 2)",
        "distill.student.model (layer 1) imports distill.train.losses (layer 1)",
    ]


@pytest.mark.parametrize(
    "source", ["import distill.core.x", "from ..core import x", "from distill.core import x"]
)
def test_imports_inside_functions_and_relative_ones_count(tmp_path: Path, source: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(f"def f():\n    {source}\n")
    assert imports_of("distill.eval.m", path, {"distill.core.x"}) == {"distill.core.x"}


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distill.ops import x\n")
    assert imports_of("distill.core.m", path, set()) == set()
