"""The dependency rule, checked on the source: layers import only downwards, siblings not each other, and no module
imports itself back through others. Function-level imports count too, so a cycle cannot hide inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = [{"models"}, {"contracts", "telemetry"}, {"activities", "workflows"}, {"channels"}, {"worker"}, {"cli"}]
"""Bottom to top. `workflows` (deterministic code) and `activities` (all I/O) are siblings: neither imports the other."""
LAYER_OF = {name: n for n, names in enumerate(LAYERS) for name in names}


PACKAGE = "threadline"
"""The one import namespace of the installed distribution; `pyproject.toml` maps it onto the repository root."""


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(REPO).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    return module.split(".")[1]


def source_modules() -> dict[str, Path]:
    files = sorted(REPO.glob("*.py"))  # the package's top-level modules (`package-dir = {"threadline" = "."}`)
    for package in ("models", "activities", "workflows", "channels", "cli"):
        files += sorted((REPO / package).rglob("*.py"))
    return {module_name(f): f for f in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (at any depth in the file), as the longest known module name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # A package's own `__init__` is not an import of the package by its modules.
        graph[name] = {m for m in imports_of(path, known) if m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_import_only_downwards() -> None:
    upward = []
    for source, targets in import_graph().items():
        own = LAYER_OF[layer(source)]
        for target in sorted(targets):
            top = layer(target)
            if LAYER_OF[top] > own or (LAYER_OF[top] == own and top != layer(source)):
                upward.append(f"{source} imports {target}")
    assert upward == [], "imports against the layers (" + " < ".join("|".join(sorted(x)) for x in LAYERS) + "):\n" \
        + "\n".join(upward)


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_modules_import_the_project_only_through_its_namespace() -> None:
    """A bare `import models` works from the repository root but not where the package is installed."""
    bare = {name.split(".")[1] for name in source_modules()}
    found = []
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            found += [f"{name} imports {t}" for t in targets if t.split(".")[0] in bare]
    assert found == []


def test_the_checks_see_function_level_imports_and_cycles() -> None:
    graph = import_graph()
    assert "threadline.activities.pg_store" in graph["threadline.activities.stores"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


UNTYPED_ACTIVITY_CALLS = {("workflow", "execute_activity"), ("workflow", "start_activity"), ("activity", "defn"),
                          ("workflow", "execute_local_activity"), ("workflow", "start_local_activity")}


def test_every_activity_is_one_typed_contract_with_one_implementation() -> None:
    """Workflows schedule activities only through `threadline.contracts`; each contract is implemented once."""
    from threadline import contracts

    implemented: dict[str, list[str]] = {c.name: [] for c in contracts.ALL}
    by_variable = {name: c.name for name, c in vars(contracts).items() if isinstance(c, contracts.ActivityContract)}
    untyped = []
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "defn" and isinstance(node.value, ast.Name) \
                    and node.value.id in by_variable:
                implemented[by_variable[node.value.id]].append(name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and name != "threadline.contracts" \
                    and isinstance(node.func.value, ast.Name) \
                    and (node.func.value.id, node.func.attr) in UNTYPED_ACTIVITY_CALLS:
                untyped.append(f"{name}: {node.func.value.id}.{node.func.attr}")
    assert untyped == []
    assert {wire: len(where) for wire, where in implemented.items()} == {c.name: 1 for c in contracts.ALL}


def test_a_contract_refuses_an_implementation_of_other_types() -> None:
    from threadline.contracts import CALL_MODEL
    from threadline.models.thread import ModelStep, ToolCallInput

    async def call_model(self, call) -> None: ...  # noqa: ANN001

    call_model.__annotations__ = {"call": ToolCallInput, "return": ModelStep}

    try:
        CALL_MODEL.defn(call_model)
    except TypeError as e:
        assert "does not match the 'call_model' contract" in str(e)
    else:
        raise AssertionError("a method taking ToolCallInput was accepted as call_model")


def test_every_store_backend_has_the_methods_of_its_protocol() -> None:
    """Backends vary by Protocol, not by luck: each one defines every method with the Protocol's parameters."""
    import inspect

    from threadline.activities import pg_store, stores
    from threadline.activities.stream_log import StreamLog
    from threadline.activities.thread_store import ThreadStore
    from threadline.channels.mail import registry, registry_pg

    mismatches = []
    for protocol, backends in ((stores.RoomThreadStore, (ThreadStore, pg_store.PgThreadStore)),
                               (stores.RoomStreamLog, (StreamLog, pg_store.PgStreamLog)),
                               (registry.MailRegistry, (registry.MailStore, registry_pg.PgMailStore))):
        for name, member in vars(protocol).items():
            if name.startswith("_") or not callable(member):
                continue
            wanted = list(inspect.signature(member).parameters)
            for backend in backends:
                method = getattr(backend, name, None)
                have = list(inspect.signature(method).parameters) if method else None
                if have != wanted:
                    mismatches.append(f"{backend.__name__}.{name}{tuple(have or ())} is not {protocol.__name__}'s "
                                      f"{tuple(wanted)}")
    assert mismatches == []
