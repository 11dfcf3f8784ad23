"""The packages' public APIs: ``__all__`` everywhere, lazy re-exports that resolve."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlrec

PACKAGES = (
    "rlrec.data",
    "rlrec.models",
    "rlrec.envs",
    "rlrec.evaluation",
    "rlrec.analytics",
    "rlrec.agents",
    "rlrec.serving",
    "rlrec.workflows",
)


def all_modules() -> list[str]:
    root = Path(rlrec.__file__).parent
    names = ["rlrec"]
    for info in pkgutil.walk_packages([str(root)], prefix="rlrec."):
        names.append(info.name)
    return sorted(names)


def defined_names(module: str) -> set[str]:
    """Top-level names a module's source defines or imports (read, not imported)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node in tree.body:
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("module", all_modules())
def test_every_module_declares_its_public_names(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    declared = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert declared, f"{module} has no __all__"
    exported = ast.literal_eval(declared[0].value)
    assert len(exported) == len(set(exported)), f"{module}: __all__ repeats a name"
    missing = set(exported) - defined_names(module)
    assert not missing, f"{module}: __all__ names {sorted(missing)} it does not define"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_exports_resolve_to_their_definitions(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__all__, package
    for name in pkg.__all__:
        value = getattr(pkg, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("rlrec."):
            # The re-export is the very object its module defines (not a copy or a shim).
            assert getattr(importlib.import_module(home), name) is value, (package, name)
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = pkg.not_a_name


def test_package_imports_stay_light() -> None:
    """Importing the packages loads neither torch, Stable-Baselines3 nor DuckDB."""
    code = (
        "import sys\n"
        f"import {', '.join(PACKAGES)}\n"
        "print(sorted(m for m in ('torch', 'stable_baselines3', 'duckdb') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", all_modules())
def test_no_module_imports_another_modules_private_names(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlrec")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, f"{module} imports private names {private}"
