"""Package boundaries: what a service process loads, and no import cycles in flashgate.

tests/test_architecture.py holds the crypto layering rules; these are about the shape of
the rest of the package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import flashgate

PACKAGE = Path(flashgate.__file__).parent

#: What ``flashgate backend`` and ``flashgate bridge`` import to run a service (the CLI
#: modules import the service modules inside their commands).
SERVICE_ENTRY_POINTS = (
    "flashgate.cli.main",
    "flashgate.cli.backend",
    "flashgate.cli.bridge",
    "flashgate.backend.service",
    "flashgate.backend.db",
    "flashgate.backend.health",
    "flashgate.bridge",
    "flashgate.bridge.node",
)


def _loaded_after_importing(modules: tuple[str, ...]) -> list[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('\\n'.join(m for m in sys.modules if m.startswith('flashgate')))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.processes
def test_service_processes_do_not_load_the_nats_server_harness() -> None:
    """The harness starts nats-server processes and registers an atexit hook: tests and
    ``dev up`` need it, a backend or bridge process must not carry it."""
    loaded = _loaded_after_importing(SERVICE_ENTRY_POINTS)
    assert "flashgate.backend.service" in loaded and "flashgate.bridge.node" in loaded
    assert [m for m in loaded if m.split(".")[:2] == ["flashgate", "devcluster"]] == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, known: set[str], *, deferred: bool) -> set[str]:
    """The flashgate modules ``path`` imports: at module level (also inside ``try``/``if``/
    class bodies), and with ``deferred`` inside functions too; never under
    ``TYPE_CHECKING``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                # ``from package import module`` imports the submodule
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not deferred:
                continue
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.ExceptHandler | ast.match_case):
                        visit(child.body)
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c: each is an edge, except
    # the packages that hold ``module`` (they are imported before it, whatever it imports)
    ancestors = {".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1)}
    edges: set[str] = set()
    for name in found:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in known and prefix != module and prefix not in ancestors:
                edges.add(prefix)
    return edges


def _import_graph(*, deferred: bool) -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(paths)
    return {name: _imports(path, name, known, deferred=deferred) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_flashgate_has_no_import_cycles_at_module_level() -> None:
    """Imports inside functions and under TYPE_CHECKING do not count; a package's
    ``__init__`` counts (importing a submodule runs it)."""
    assert _cycles(_import_graph(deferred=False)) == []


def test_deferred_imports_close_no_circle_either() -> None:
    """An import inside a function keeps a heavy dependency out of a process until it is
    needed; it must not hide a circle (the CLI had one: main -> devup -> main)."""
    assert _cycles(_import_graph(deferred=True)) == []


def test_import_graph_reads_deferred_and_type_checking_imports_apart() -> None:
    graph = _import_graph(deferred=True)
    assert "flashgate.backend.service" not in graph["flashgate.backend.health"]
    assert "flashgate.backend.service" in graph["flashgate.cli.backend"]
    assert "flashgate.backend.service" not in _import_graph(deferred=False)["flashgate.cli.backend"]


def _reads_environment(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "getenv", "environb") for a in node.names)
        ):
            return True
    return False


def _variable_names(tree: ast.AST) -> list[str]:
    """String constants that are a FLASHGATE_* variable name and nothing else."""
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("FLASHGATE_")
        and node.value.replace("_", "").isalnum()
        and node.value.isupper()
    ]


def test_one_module_reads_the_environment_and_names_its_variables() -> None:
    readers, namers = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == "flashgate.environment":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if _reads_environment(tree):
            readers.append(name)
        namers.extend(f"{name}: {value}" for value in _variable_names(tree))
    assert readers == []
    assert namers == []
