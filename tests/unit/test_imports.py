"""Every relative import in the package names a module and a name that exist, the ones inside
functions too (imported lazily, so nothing else runs them until that code path does; mypy is
configured to ignore missing imports, so it would not say)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _relative_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((SRC / "swstack").rglob("*.py")):
        package = ".".join(path.relative_to(SRC).parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                found += [(str(path.relative_to(SRC)), target, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize(("where", "module", "name"), _relative_imports())
def test_relative_import_resolves(where: str, module: str, name: str) -> None:
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"{where}: from {module} import {name}"
    )
