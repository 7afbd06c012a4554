"""The package layout of DESIGN.md: files grouped by kind, no import cycle, small method files."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "nenya")
KINDS = ("io", "methods", "models", "losses", "metrics", "plots", "data", "options")
TOP_LEVEL = {"__init__", "registry", "errors", "params", "train", "train_util", "util", "launch", "distributed",
             "evaluate", "latents", "sweep", "split", "rechunk",
             "schedules", "stopping", "gradients"}  # small pieces of the loop that train_util uses


def module_files() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def imported_modules(path: str, modules: dict) -> set[str]:
    """The nenya modules a file imports anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("nenya"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nenya"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    """Module -> modules it imports (a package's own __init__ is not counted as imported by its members)."""
    modules = module_files()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if colour.get(target) == "grey":
                return stack[stack.index(target):] + [target]
            if target not in colour:
                cycle = visit(target)
                if cycle:
                    return cycle
        colour[node] = "black"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in colour:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_cycle():
    graph = import_graph()
    graph["nenya.methods.base"] = graph["nenya.methods.base"] | {"nenya.params"}  # params imports methods
    assert find_cycle(graph) is not None


def test_registry_and_options_import_nothing_else_from_nenya():
    graph = import_graph()
    assert graph["nenya.registry"] == set()
    for name, targets in graph.items():
        if name.startswith("nenya.options"):
            assert all(target.startswith("nenya.options") for target in targets), (name, targets)


def test_models_depend_on_torch_alone():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("nenya.models."):
            assert targets <= {"nenya.errors", "nenya.registry"} | {t for t in targets if t.startswith("nenya.models")}, \
                (name, targets)


def test_layout_is_by_kind():
    top = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py")}
    assert top <= TOP_LEVEL, sorted(top - TOP_LEVEL)
    for kind in KINDS:
        assert os.path.isfile(os.path.join(PACKAGE, kind, "__init__.py")), kind


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(PACKAGE, "methods")) if n.endswith(".py")))
def test_method_files_are_small(name):
    lines = open(os.path.join(PACKAGE, "methods", name), encoding="utf-8").read().count("\n")
    assert lines <= 200, f"methods/{name} has {lines} lines"
