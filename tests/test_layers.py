"""One-way imports: data -> models -> envs -> evaluation -> agents -> workflows -> cli."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlrec"

# What each subpackage may import from rlrec (besides itself and the shared top-level modules).
ALLOWED = {
    "data": set(),
    "models": {"data"},
    "envs": {"data", "models"},
    "agents": {"data", "models", "envs", "evaluation"},
    "evaluation": {"data", "models", "envs"},
    "workflows": {"data", "models", "envs", "evaluation", "agents"},
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
