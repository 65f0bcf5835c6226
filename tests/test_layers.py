"""The package's layers (pgqueue/__init__.py's docstring): a module imports only from
its own layer or below, and no imports form a circle.

Every import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (annotations only: they never run, so they cannot form a
circle at import time).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "pgqueue"

#: bottom to top; a module's layer is that of its longest listed prefix
LAYERS = [
    # SQL, serialization and the pieces that need nothing else of pgqueue
    ["pgqueue._sql", "pgqueue.serialization", "pgqueue.errors", "pgqueue.retry",
     "pgqueue.migrate", "pgqueue._positions", "pgqueue.embedded", "pgqueue.hooks",
     "pgqueue.roles"],
    # enqueue on any connection, the job handle, queue limits
    ["pgqueue._options", "pgqueue._connections", "pgqueue.job", "pgqueue.limits"],
    # the app and its tasks, workflows, batches, schedules, the task's context (which
    # can replace a workflow step)
    ["pgqueue.schedule", "pgqueue.workflow", "pgqueue.batch", "pgqueue.app",
     "pgqueue.context"],
    # what watches a worker: error hooks, logs, metrics
    ["pgqueue.observe", "pgqueue.metrics"],
    # the worker and its components
    ["pgqueue.worker"],
    # the public package, the CLI and bench, test helpers, integrations
    ["pgqueue", "pgqueue.cli", "pgqueue.bench", "pgqueue.testing", "pgqueue.contrib",
     "pgqueue.dashboard"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))
           if "migrations" not in p.relative_to(ROOT).parts}


def layer(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS and the docstring"
    return found


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(module: str) -> set[str]:
    """The pgqueue modules ``module`` imports when it runs."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import name`: the submodule pkg.name if there is one
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                       for a in node.names]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        out.update(t for t in targets if t in MODULES and t != module)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    up = sorted(t for t in GRAPH[module] if layer(t) > layer(module))
    assert not up, f"{module} (layer {layer(module)}) imports from a layer above: {up}"


def test_no_import_circles():
    state: dict[str, int] = {}     # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                circle = path[path.index(t):] + [t]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)
