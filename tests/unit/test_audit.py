"""The audit over real files: text and ELF files holding a foreign prefix are found, records are not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from swstack import proc
from swstack.audit import ELF_MAGIC, PLACEHOLDERS, Finding, audit, needles_for, report, scan_tree
from swstack.errors import BuildError

HOME = Path("/home/builder")


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    path = tmp_path / "build" / "sw"
    path.mkdir(parents=True)
    return path


def _write(prefix: Path, rel: str, data: bytes) -> Path:
    path = prefix / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _elf_holding(prefix: Path, rel: str, text: bytes) -> Path:
    """A real executable (coreutils' ``true``) with ``text`` in it, as a baked-in rpath would be."""
    true = shutil.which("true")
    assert true is not None
    path = prefix / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(true).read_bytes() + b"\x00" + text + b"\x00")
    path.chmod(0o755)
    proc.run([path], what="the patched executable")  # still a working ELF
    return path


def test_needles_are_the_real_build_path_the_placeholders_and_home_in_text(build_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(build_dir)
    needles = needles_for(link, HOME)
    assert needles.anywhere == (str(build_dir.resolve()).encode(), *PLACEHOLDERS)
    assert needles.in_text == (b"/home/builder/",)
    assert needles_for(build_dir, Path("/")).in_text == ()


def test_text_and_elf_files_with_a_foreign_prefix_are_found(build_dir: Path) -> None:
    prefix = build_dir / "demo"
    real = str(build_dir.resolve()).encode()
    _write(prefix, "bin/tool", b"#!" + real + b"/demo/bin/python\nprint('hi')\n")
    _elf_holding(prefix, "lib/libdemo.so", real + b"/demo/lib")
    _write(prefix, "etc/demo.conf", b"cache_dir = /home/builder/.cache/demo\n")
    _write(prefix, "share/demo/template.txt", b"prefix=" + PLACEHOLDERS[0] + b"/share\n")
    _write(prefix, "bin/clean", b"#!/data0/sw/demo/bin/python\n")

    findings = scan_tree(prefix, needles_for(build_dir, HOME))
    assert findings == [
        Finding("bin/tool", real.decode(), "text"),
        Finding("etc/demo.conf", "/home/builder/", "text"),
        Finding("lib/libdemo.so", real.decode(), "ELF"),
        Finding("share/demo/template.txt", PLACEHOLDERS[0].decode(), "text"),
    ]


def test_records_of_origin_other_binaries_and_home_in_elf_are_not_findings(build_dir: Path) -> None:
    prefix = build_dir / "demo"
    real = str(build_dir.resolve()).encode()
    _write(prefix, "conda-meta/demo-1.0-0.json", b'{"extracted_package_dir": "' + real + b'/pkgs/demo"}')
    site_packages = "lib/python3.11/site-packages"
    _write(prefix, f"{site_packages}/demo-1.0.dist-info/direct_url.json", b'{"url": "file://' + real + b'"}')
    _write(prefix, f"{site_packages}/__pycache__/demo.cpython-311.pyc", b"\x00\x00" + real)
    _write(prefix, "share/demo/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00" + real)  # binary, not ELF
    _write(prefix, "share/demo/empty", b"")
    _write(prefix, "etc/homeless.conf", b"path = /home/builderx/nothing\n")  # another directory
    _elf_holding(prefix, "bin/compiled", b"/home/builder/src/demo.c")  # debug strings are read by no one
    target = _write(build_dir, "outside.txt", real)
    (prefix / "share" / "link.txt").symlink_to(target)  # links are not followed
    assert scan_tree(prefix, needles_for(build_dir, HOME)) == []


def test_the_elf_magic_decides_an_elf_even_with_nul_bytes(build_dir: Path) -> None:
    prefix = build_dir / "demo"
    _write(prefix, "lib/raw.so", ELF_MAGIC + b"\x02\x01\x01\x00" + PLACEHOLDERS[1])
    assert scan_tree(prefix, needles_for(build_dir, HOME)) == [Finding("lib/raw.so", PLACEHOLDERS[1].decode(), "ELF")]


def test_audit_fails_the_build_with_a_report_naming_each_file(build_dir: Path) -> None:
    prefix = build_dir / "demo"
    _write(prefix, "bin/ok", b"#!/data0/sw/demo/bin/python\n")
    audit(prefix, "/data0/sw/demo", build_dir, home=HOME)  # a clean tree passes
    _write(prefix, "share/jupyter/kernels/demo/kernel.json", b'{"argv": ["/home/builder/.local/bin/python"]}')
    with pytest.raises(BuildError) as caught:
        audit(prefix, "/data0/sw/demo", build_dir, home=HOME)
    message = str(caught.value)
    assert message.startswith("/data0/sw/demo: 1 file(s) still hold a foreign prefix:\n")
    assert "text share/jupyter/kernels/demo/kernel.json: contains '/home/builder/'" in message
    assert message.endswith("then rebuild.")
    assert caught.value.exit_code == BuildError.exit_code


def test_the_report_is_capped(build_dir: Path) -> None:
    findings = [Finding(f"bin/f{i:02}", "/x", "text") for i in range(45)]
    lines = report("/data0/sw/demo", findings, limit=40).splitlines()
    assert lines[0] == "/data0/sw/demo: 45 file(s) still hold a foreign prefix:"
    assert lines[40] == "  text bin/f39: contains '/x'" and lines[41] == "  ... and 5 more"


def test_an_unreadable_file_is_skipped_not_a_crash(build_dir: Path) -> None:
    prefix = build_dir / "demo"
    path = _write(prefix, "bin/secret", str(build_dir.resolve()).encode())
    path.chmod(0)
    try:
        found = scan_tree(prefix, needles_for(build_dir, HOME))
    finally:
        path.chmod(0o644)
    # root reads it anyway; anyone else cannot, and the scan carries on
    assert found == ([Finding("bin/secret", str(build_dir.resolve()), "text")] if os.geteuid() == 0 else [])
