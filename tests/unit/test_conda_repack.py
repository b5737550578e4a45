"""Unit tests of the .conda normaliser: build noise goes, package content stays."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from swstack.errors import ChannelError
from swstack.offline_channel.conda_repack import DEFAULT_EPOCH, repack_conda

PAYLOAD = {
    "bin/tool": (b"#!/opt/prefix/bin/python\nprint('hi')\n", 0o775),
    "lib/python3.11/site-packages/pkg/__init__.py": (b"VALUE = 1\n", 0o664),
    "share/pkg/data.txt": (b"data\n", 0o600),
}


def index_json(timestamp: int) -> bytes:
    doc = {"name": "pkg", "version": "1.0", "build": "0", "subdir": "noarch", "timestamp": timestamp}
    return json.dumps(doc, indent=2).encode()


def paths_json() -> bytes:
    entries = [
        {
            "_path": p,
            "path_type": "hardlink",
            "sha256": hashlib.sha256(d).hexdigest(),
            "size_in_bytes": len(d),
        }
        for p, (d, _) in sorted(PAYLOAD.items())
    ]
    return json.dumps({"paths": entries, "paths_version": 1}, indent=2).encode()


def tar_zst(
    files: dict[str, tuple[bytes, int]], *, mtime: float, uid: int, reverse: bool, threads: int
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(files, reverse=reverse):
            data, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, mtime
            info.uid = info.gid = uid
            info.uname = info.gname = "builder" if uid else "root"
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/tool-link")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "tool", mtime
        tar.addfile(link)
    return zstandard.ZstdCompressor(level=19, threads=threads).compress(buf.getvalue())


def make_conda(path: Path, *, when: float, uid: int, reverse: bool, threads: int = 0) -> Path:
    """A small .conda package as a build at time ``when`` by user ``uid`` might write it."""
    info = {
        "info/index.json": (index_json(int(when * 1000)), 0o644),
        "info/paths.json": (paths_json(), 0o644),
        "info/recipe/rendered_recipe.yaml": (
            f"system_tools:\n  rattler-build: 0.73.0\ntimestamp: {when}Z\n".encode(),
            0o644,
        ),
    }
    date = (2026, 1, 2, 3, 4, int(when) % 60 // 2 * 2)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in (
            ("metadata.json", b'{"conda_pkg_format_version": 2}'),
            (
                "pkg-pkg-1.0-0.tar.zst",
                tar_zst(PAYLOAD, mtime=when, uid=uid, reverse=reverse, threads=threads),
            ),
            ("info-pkg-1.0-0.tar.zst", tar_zst(info, mtime=when, uid=uid, reverse=reverse, threads=threads)),
        ):
            zf.writestr(zipfile.ZipInfo(name, date_time=date), data)
    return path


def read_entry(pkg: Path, prefix: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The members of the package's ``prefix``-* tar: name -> (header, content)."""
    with zipfile.ZipFile(pkg) as zf:
        (name,) = [n for n in zf.namelist() if n.startswith(prefix)]
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zf.read(name))).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            fh = tar.extractfile(m) if m.isfile() else None
            out[m.name] = (m, fh.read() if fh else b"")
    return out


def members(pkg: Path, prefix: str) -> dict[str, tarfile.TarInfo]:
    return {name: m for name, (m, _) in read_entry(pkg, prefix).items()}


def contents(pkg: Path, prefix: str) -> dict[str, bytes]:
    return {name: data for name, (m, data) in read_entry(pkg, prefix).items() if m.isfile()}


def test_two_noisy_builds_of_the_same_content_become_identical(tmp_path: Path) -> None:
    a = make_conda(tmp_path / "a.conda", when=1795304118.17, uid=0, reverse=False)
    b = make_conda(tmp_path / "b.conda", when=1795309999.9, uid=1000, reverse=True, threads=2)
    assert a.read_bytes() != b.read_bytes()
    repack_conda(a)
    repack_conda(b)
    assert a.read_bytes() == b.read_bytes()


def test_payload_is_unchanged_and_paths_json_still_true(tmp_path: Path) -> None:
    pkg = make_conda(tmp_path / "p.conda", when=1795304118.5, uid=1000, reverse=True)
    repack_conda(pkg)
    payload = contents(pkg, "pkg-")
    assert payload == {name: data for name, (data, _) in PAYLOAD.items()}
    declared = json.loads(contents(pkg, "info-")["info/paths.json"])["paths"]
    for entry in declared:
        assert hashlib.sha256(payload[entry["_path"]]).hexdigest() == entry["sha256"]
    tar = members(pkg, "pkg-")
    assert list(tar) == sorted(tar)
    assert tar["bin/tool-link"].issym() and tar["bin/tool-link"].linkname == "tool"
    assert {m.mode for m in tar.values() if m.isfile()} == {0o755, 0o644}
    assert tar["bin/tool"].mode == 0o755 and tar["share/pkg/data.txt"].mode == 0o644
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar.values()} == {
        (DEFAULT_EPOCH, 0, 0, "", "")
    }


def test_build_timestamps_are_fixed(tmp_path: Path) -> None:
    pkg = make_conda(tmp_path / "p.conda", when=1795304118.5, uid=0, reverse=False)
    repack_conda(pkg, epoch=DEFAULT_EPOCH)
    info = contents(pkg, "info-")
    assert json.loads(info["info/index.json"])["timestamp"] == DEFAULT_EPOCH * 1000
    assert b"timestamp: 2024-01-01T00:00:00Z\n" in info["info/recipe/rendered_recipe.yaml"]
    with zipfile.ZipFile(pkg) as zf:
        assert [i.filename for i in zf.infolist()][0] == "metadata.json"
        assert {i.date_time for i in zf.infolist()} == {(2024, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_repacking_is_idempotent_and_readable_by_conda_tools(tmp_path: Path) -> None:
    from conda_package_handling import api as cph

    pkg = make_conda(tmp_path / "pkg-1.0-0.conda", when=1795304118.5, uid=0, reverse=False)
    repack_conda(pkg)
    once = pkg.read_bytes()
    repack_conda(pkg)
    assert pkg.read_bytes() == once
    cph.extract(str(pkg), dest_dir=str(tmp_path / "x"))
    assert (tmp_path / "x" / "bin" / "tool").read_bytes() == PAYLOAD["bin/tool"][0]
    assert json.loads((tmp_path / "x" / "info" / "index.json").read_text())["name"] == "pkg"


def test_a_file_that_is_not_a_package_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.conda"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ChannelError, match="not a readable .conda"):
        repack_conda(bogus)
    assert bogus.read_bytes() == b"not a zip"
