"""custom/ is grouped by role and its import graph has no loop: a package imports only the packages listed before it
in the README's layout (the same order as LAYERS), and no module imports itself through others."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("custom.io", "custom.data", "custom.models", "custom.lung", "custom.medsam", "custom.adaptation",
          "custom.evaluation", "custom.training", "custom.integrations")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path) -> set[str]:
    """custom.* modules imported anywhere in the file (top level or inside functions), relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("custom")}


MODULES = {module_name(p): p for p in (ROOT / "custom").rglob("*.py")}
GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    matches = [i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer of {LAYERS}: place it in one (and in the README layout)"
    return matches[0]


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "custom":
            layer(name)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "custom"))
def test_imports_point_to_earlier_layers(name):
    for target in GRAPH[name]:
        assert layer(target) <= layer(name), f"{name} imports {target}, which sits in a later layer"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, str] = {}

    def visit(name: str, stack: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target] if target in stack else [*stack, target]
            if target not in state and (cycle := visit(target, [*stack, target])):
                return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_cycle_finder_reports_a_loop():
    graph = {**GRAPH, "custom.io": {"custom.evaluation.report"}}  # io -> report -> ... -> io
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and "custom.io" in cycle
