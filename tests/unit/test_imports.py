"""Every relative import in the package names a module and a name that exist, the ones inside
functions too (imported lazily, so nothing else runs them until that code path does; mypy is
configured to ignore missing imports, so it would not say)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

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


def test_every_relative_import_resolves() -> None:
    missing = []
    for where, module, name in _relative_imports():
        imported = importlib.import_module(module)
        if not hasattr(imported, name) and importlib.util.find_spec(f"{module}.{name}") is None:
            missing.append(f"{where}: from {module} import {name}")
    assert missing == []
    assert len(_relative_imports()) > 100  # the walk found the package's imports
