"""scanhelpers' stand-ins give what conda-pack's own helpers give.

The integration test ``test_plain_files_skip_the_packer_and_give_the_same_entries`` compares
a real python + numpy prefix's entries with conda-pack's own; these are the corners.
"""

from __future__ import annotations

import os
from pathlib import Path

import conda_pack.core
import pytest

from swstack import scanhelpers


def _tree(root: Path) -> Path:
    prefix = root / "env"
    for d in ["bin", "lib/python3.11/site-packages/pkg/sub", "empty/deeper/empty", "share/empty", "pkgs/x",
              "conda-meta", "locked/inside", "weird~dir/x"]:  # fmt: skip
        (prefix / d).mkdir(parents=True)
    for f in ["bin/python3.11", "lib/python3.11/site-packages/pkg/__init__.py",
              "lib/python3.11/site-packages/pkg/sub/m.py", "pkgs/x/ignored", "conda-meta/history", "top-file",
              "backup~", "x.DS_STORE", "locked/inside/f", "weird~dir/x/f", "ünïcode-ﬁle"]:  # fmt: skip
        (prefix / f).write_text(f)
    (prefix / "bin/python").symlink_to("python3.11")
    (prefix / "bin/broken").symlink_to("nowhere")
    (prefix / "lib/python3.11/site-packages/linked-dir").symlink_to("pkg")  # listed, not followed
    (prefix / "top-link-dir").symlink_to("lib")
    (prefix / "top-broken").symlink_to("nowhere")
    (prefix / "lib/loop").symlink_to("loop")
    os.mkfifo(prefix / "share/fifo")
    os.mkfifo(prefix / "top-fifo")
    (prefix / b"lib/bad-\xff-name".decode("utf-8", "surrogateescape")).write_text("x")
    return prefix


def test_load_files_lists_what_conda_packs_does(tmp_path: Path) -> None:
    prefix = _tree(tmp_path)
    expected = conda_pack.core.load_files(str(prefix))
    assert scanhelpers.load_files(str(prefix)) == expected
    assert {"empty/deeper/empty", "share/empty", "lib/python3.11/site-packages/linked-dir", "bin/broken"} <= expected


def test_load_files_skips_an_unlistable_directory_as_os_walk_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _tree(tmp_path)
    scandir = os.scandir

    def refusing(path: str) -> object:  # a directory of mode 0 (root lists it anyway)
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # os.walk's too
    expected = conda_pack.core.load_files(str(prefix))
    assert not any(p.startswith("locked") for p in expected)
    assert scanhelpers.load_files(str(prefix)) == expected


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((False, None, "/pkgs/a-1-0", "lib/libx.so"), {"path_type": "hardlink", "sha256": "ab"}),
        ((False, None, "/pkgs/a-1-0", "bin/x"), {"prefix_placeholder": "/opt/ph", "file_mode": "text"}),
        ((True, "lib/python3.11/site-packages", "/pkgs/n-1-0", "site-packages/n/__init__.py"), {}),
        ((True, "lib/python3.11/site-packages", "/pkgs/n-1-0", "python-scripts/n"), {"file_mode": "text"}),
        ((True, "lib/python3.11/site-packages", "/pkgs/n-1-0", "share/n.txt"), {}),
        ((False, None, "/pkgs/a-1-0/", "lib/x"), {}),
        ((False, None, "/pkgs/a-1-0", "/abs/x"), {}),
        ((False, None, "", "lib/x"), {}),
        ((False, None, "/pkgs/a-1-0", ""), {}),
        ((False, None, "/pkgs/a-1-0", "lib/x", "/opt/ph", "binary"), {}),
    ],
)
def test_managed_file_makes_the_file_conda_packs_does(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    def fields(f: conda_pack.core.File) -> tuple[object, ...]:
        return f.source, f.target, f.is_conda, f.file_mode, f.prefix_placeholder

    assert fields(scanhelpers.managed_file(*args, **kwargs)) == fields(conda_pack.core.managed_file(*args, **kwargs))
