"""One-way imports: data -> models -> envs -> evaluation -> analytics -> agents -> serving
-> workflows."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlrec"

# What each subpackage may import from rlrec (besides itself and the shared top-level modules).
ALLOWED = {
    "data": set(),
    "models": {"data"},
    "envs": {"data", "models"},
    "agents": {"data", "models", "envs", "evaluation", "analytics"},
    "evaluation": {"data", "models", "envs"},
    "analytics": {"data", "models", "envs", "evaluation"},
    "serving": {"data", "models", "envs", "evaluation", "analytics", "agents"},
    "workflows": {"data", "models", "envs", "evaluation", "analytics", "agents", "serving"},
}


def _rlrec_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlrec."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rlrec."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_the_flow_allows(layer):
    shared = {"errors", "config", "fsutil", "lazy", layer}
    offenders = {
        f"{path.relative_to(PACKAGE.parent)} imports rlrec.{name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _rlrec_imports(path) - shared - ALLOWED[layer]
    }
    assert not offenders, sorted(offenders)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The rlrec modules ``path`` imports anywhere (function bodies too), but for type checks."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlrec"):
            assert node.module is not None
            for alias in node.names:  # `from rlrec.envs import sb3_vec_env` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rlrec"))
    return found & modules


def test_no_module_import_cycle():
    """No chain of imports between modules leads back to where it started (issue 18: the
    batched env's re-export of the SB3 adapter was one)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _module_imports(path, set(paths)) - {name} for name, path in paths.items()}
    # Importing a submodule runs its packages' __init__ first; that edge is not a cycle.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            assert cycle is None, " -> ".join(cycle)
