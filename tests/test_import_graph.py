"""The import graph of ``glowlab/`` matches the design notes: no cycle between glowlab modules,
no glowlab import inside a function (the usual way to dodge a cycle), and no tool that imports
the train app.

Every module is parsed with ``ast`` (nothing is imported). An edge ``A -> B`` is a module-level
import in ``A`` that executes ``B``: ``import a.b.c`` and ``from a.b.c import x`` execute the
packages ``a`` and ``a.b`` and the module ``a.b.c`` (and ``a.b.c.x`` when that is a module), so
each of them is an edge, except ``A``'s own enclosing packages, which Python has started before
``A`` runs. Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "glowlab"

LAZY_IMPORTS: dict[tuple[str, str], str] = {}
"""``(module, imported glowlab module) -> reason`` for a glowlab import that must stay inside a
function (a genuinely lazy, optional dependency). Empty: none is needed today."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def executed(module: str, target: str) -> list[str]:
    """The glowlab modules that importing ``target`` from ``module`` runs (see the docstring)."""
    parts = target.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    own = {".".join(module.split(".")[: i + 1]) for i in range(module.count(".") + 1)}
    own |= {module} if is_package(module) else set()
    return [p for p in prefixes if p in MODULES and p not in own and p != module]


@functools.cache
def imports(module: str) -> tuple[tuple[str, int, bool], ...]:
    """``(target, line, inside_a_function)`` for every glowlab module that ``module`` imports."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            found.append((source, node.lineno, in_function))
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    found.append((f"{source}.{alias.name}", node.lineno, in_function))
        function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or function)

    visit(tree, False)
    return tuple(item for item in found if item[0].split(".")[0] == "glowlab")


@functools.cache
def module_graph() -> dict[str, frozenset[str]]:
    """``module -> the glowlab modules its module-level imports run``."""
    return {
        module: frozenset(
            executed_module
            for target, _, in_function in imports(module)
            if not in_function
            for executed_module in executed(module, target)
        )
        for module in MODULES
    }


def cycles(graph: dict[str, set[str]]) -> set[str]:
    """One shortest cycle through each strongly connected component of more than one module
    (or a module that imports itself), as ``a -> b -> a`` starting at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    found = set()
    for component in components:
        start = min(component)
        paths = {start: [start]}  # breadth-first: the shortest way back to start
        frontier = [start]
        while frontier and start not in {w for v in frontier for w in graph[v]}:
            following = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        following.append(w)
            frontier = following
        last = next(v for v in frontier if start in graph[v])
        found.add(" -> ".join([*paths[last], start]))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """``module -> the module that first imported it`` for every module ``start`` reaches."""
    parent = {start: start}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    return parent


def test_the_parser_sees_the_edges_python_runs() -> None:
    """Guards the rules above on known imports, so that a broken parser cannot pass."""
    graph = module_graph()
    assert "glowlab.bijections.base" in graph["glowlab.bijections.coupling"]
    assert "glowlab.bijections" not in graph["glowlab.bijections.coupling"]  # its own package
    assert {"glowlab.bijections", "glowlab.bijections.base"} <= graph["glowlab.priors"]
    assert "glowlab.models" in graph["glowlab"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == {"a -> b -> c -> a"}
    assert cycles({"a": {"a"}}) == {"a -> a"}


def test_no_cycle_between_glowlab_modules() -> None:
    assert cycles(module_graph()) == set(), "import cycles (break them; see DESIGN.md)"


def test_no_glowlab_import_inside_a_function() -> None:
    """A glowlab import inside a function is a cycle dodged, not removed; the allowed lazy
    imports (``LAZY_IMPORTS``) say why they are lazy."""
    found = {
        f"{module}:{line} -> {target}"
        for module in MODULES
        for target, line, in_function in imports(module)
        if in_function and (module, target) not in LAZY_IMPORTS
    }
    assert found == set(), "import at the top of the module instead"


@pytest.mark.parametrize("tool", sorted(m for m in MODULES if m.startswith("glowlab.tools.")))
def test_tools_do_not_import_the_train_app(tool: str) -> None:
    """Not directly and not through another module: shared pieces live in neutral modules
    (``glowlab.conf.CONFIG_DIR``, ``glowlab.images.image_grid``)."""
    parent = reachable(module_graph(), tool)
    direct = [line for target, line, _ in imports(tool) if target == "glowlab.train"]
    assert not direct, f"{tool} imports glowlab.train at line {direct}"
    chain = ["glowlab.train"]
    while chain[-1] in parent and parent[chain[-1]] != chain[-1]:
        chain.append(parent[chain[-1]])
    assert "glowlab.train" not in parent, " <- ".join(chain)
