"""install.py's byte-compile step against a real tree and the real compileall."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from swstack.errors import BuildError
from swstack.install import InstallPlan, compile_bytecode, compile_failure


def _tree(tmp_path: Path, files: dict[str, str]) -> InstallPlan:
    prefix = tmp_path / "sw" / "demo"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    for rel, text in files.items():
        path = prefix / "lib" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return InstallPlan(prefix=str(prefix), platform="linux-64", conda=[], pip=[], kernels=[], kernel_spec_dirs=[],
                       owner=None, package_cache=str(tmp_path / "pkgs"), extensions=[])


def test_a_tree_that_compiles_gets_hash_based_pycs(tmp_path: Path) -> None:
    plan = _tree(tmp_path, {"site-packages/good/__init__.py": "x = 1\n"})
    compile_bytecode(plan)
    (pyc,) = (Path(plan.prefix) / "lib/site-packages/good/__pycache__").glob("__init__.*.pyc")
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01  # hash-based, unchecked


def test_a_file_that_does_not_compile_fails_naming_it_and_its_line(tmp_path: Path) -> None:
    plan = _tree(tmp_path, {
        "site-packages/good/__init__.py": "x = 1\n",
        "site-packages/broken/__init__.py": "import os\n\ndef f(:\n    pass\n",
        "site-packages/broken/tabs.py": "if True:\n\tx = 1\n        y = 2\n",
    })
    with pytest.raises(BuildError) as info:
        compile_bytecode(plan)
    message = str(info.value)
    assert "failed for 2 file(s)" in message
    assert f"{plan.prefix}/lib/site-packages/broken/__init__.py:3: SyntaxError: invalid syntax" in message
    assert f"{plan.prefix}/lib/site-packages/broken/tabs.py:3: " in message and "Error" in message
    assert "\n" not in message  # one line


def test_compile_failure_without_compileall_blocks_says_what_it_printed() -> None:
    message = compile_failure("Traceback ...\nMemoryError\n", "/data0/sw/x/lib", 1)
    assert message == "byte-compiling /data0/sw/x/lib failed (exit 1): MemoryError"
