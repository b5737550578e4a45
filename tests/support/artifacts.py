"""Artifact directories for tests, laid out as ``pack`` leaves them: the one ``make_artifact``.

``make_artifact`` writes ``<out>/<stack>-<version>-<platform>.tar.zst`` (or ``.tar.gz``,
``.tar``) + ``.sha256`` + ``manifest.json``, whose tree looks like a conda-pack one: text
files holding the prefix, an optional binary one, ``conda-meta/``, random payload files
(``payload`` bytes: big, incompressible blobs for registry tests), and a
``bin/conda-unpack`` shaped like conda-pack's (``update_prefix`` + ``_prefix_records``).
``write_artifact`` seals a tar the caller made into ``<root>/<stack>/<version>/``.
The host's helpers (``tests/support/host.py``) and the registry tests use these.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import zstandard

from swstack.fsutil import sha256_file
from swstack.manifest import IN_TREE_PATH, Manifest, PackageEntry, TarballInfo

PLATFORM = "linux-64"
MTIME = 1_700_000_000

CONDA_UNPACK = """\
#!/usr/bin/env python
import os


def update_prefix(path, new_prefix, placeholder, mode="text"):
    with open(path, "rb+") as fh:
        data = fh.read()
        if mode == "text":
            new = data.replace(placeholder.encode(), new_prefix.encode())
        else:
            old_b, new_b = placeholder.encode(), new_prefix.encode()
            if len(new_b) > len(old_b):
                raise ValueError("new prefix longer than placeholder in binary file")
            parts = data.split(b"\\0")
            new = b"\\0".join(
                p.replace(old_b, new_b) + b"\\0" * (p.count(old_b) * (len(old_b) - len(new_b))) for p in parts
            )
            assert len(new) == len(data)
        if new != data:
            fh.seek(0)
            fh.write(new)
            fh.truncate()


_prefix_records = [
{records}
]

if __name__ == "__main__":
    new_prefix = os.path.abspath(os.path.dirname(os.path.dirname(__file__)))
    for path, placeholder, mode in _prefix_records:
        update_prefix(os.path.join(new_prefix, path), new_prefix, placeholder, mode=mode)
"""


def base_manifest(
    stack: str,
    version: str,
    prefix: str,
    owner: str | None = None,
    packages: tuple[PackageEntry, ...] | None = None,
    platform: str = PLATFORM,
) -> Manifest:
    pkgs = (
        packages
        if packages is not None
        else (
            PackageEntry("python", "3.11.7", "h1_0", "https://conda.anaconda.org/conda-forge", "a" * 64, 100),
            PackageEntry(
                "numpy", "1.26.4", "py311_0", "https://conda.anaconda.org/conda-forge", "b" * 64, 200
            ),
        )
    )
    return Manifest(
        stack=stack,
        variant="default",
        version=version,
        platform=platform,
        prefix=prefix,
        lockfile_sha256="0" * 64,
        stackfile_sha256="1" * 64,
        tools={"swstack": "0.1.0"},
        packages=pkgs,
        file_count=0,
        total_size=0,
        git_commit="0" * 40,
        build_time="2026-11-21T00:00:00+00:00",
        source_date_epoch=MTIME,
        owner=owner,
    )


def tree_files(prefix: str, binary: bool, payload: int, manifest: Manifest) -> dict[str, tuple[bytes, int]]:
    """name -> (content, mode) of a small conda-pack-like tree."""
    records = [("etc/prefix.txt", prefix, "text"), ("bin/tool", prefix, "text")]
    files = {
        "bin/python": (f'#!/bin/sh\nexec {sys.executable} "$@"\n'.encode(), 0o755),
        "bin/tool": (f"#!/bin/sh\necho {prefix}\n".encode(), 0o755),
        "etc/prefix.txt": (f"prefix={prefix}\n".encode(), 0o644),
        "conda-meta/fake-1.0-0.json": (json.dumps({"name": "fake", "version": "1.0"}).encode(), 0o644),
        "conda-meta/history": (b"", 0o644),
        "share/version.txt": (f"{manifest.version}\n".encode(), 0o644),
    }
    if binary:
        files["lib/libfake.so"] = (b"\x7fELF\x00\x01" + prefix.encode() + b"/lib\x00" + b"\x00" * 16, 0o755)
        records.append(("lib/libfake.so", prefix, "binary"))
    if payload:
        chunk = 1 << 20
        for i in range((payload + chunk - 1) // chunk):
            files[f"share/payload/blob{i:04d}.bin"] = (os.urandom(min(chunk, payload - i * chunk)), 0o644)
    files["bin/conda-unpack"] = (
        CONDA_UNPACK.replace(
            "{records}", "\n".join(f"    ({p!r}, {ph!r}, {m!r})," for p, ph, m in records)
        ).encode(),
        0o755,
    )
    return files


def tar_member(name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, mode, MTIME, kind
    return info


def write_tar(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    compression: str = "zstd",
    fmt: int = tarfile.PAX_FORMAT,
) -> None:
    with path.open("wb") as raw:
        if compression == "zstd":
            with (
                zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as fh,
                tarfile.open(fileobj=fh, mode="w|", format=fmt) as tar,
            ):
                _add_all(tar, members)
        else:
            mode = "w|gz" if compression == "gzip" else "w|"
            with tarfile.open(fileobj=raw, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
                _add_all(tar, members)


def _add_all(tar: tarfile.TarFile, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    for info, data in members:
        tar.addfile(info, io.BytesIO(data) if data is not None else None)


def make_artifact(
    out: Path,
    stack: str = "py3",
    version: str = "2026.01.01",
    prefix: str | None = None,
    *,
    binary: bool = False,
    payload: int = 0,
    owner: str | None = None,
    compression: str = "zstd",
    packages: tuple[PackageEntry, ...] | None = None,
    understate: bool = False,
    small_files: int = 0,
    platform: str = PLATFORM,
) -> Path:
    """Write an artifact directory ``out`` and return it (``understate``: a manifest claiming 1 kB)."""
    prefix = prefix or f"/data0/sw/{stack}"
    manifest = base_manifest(stack, version, prefix, owner, packages, platform)
    files = tree_files(prefix, binary, payload, manifest)
    for i in range(small_files):  # a site-packages-like mass of small text files
        files[f"lib/python3.11/site-packages/pkg{i // 100:03d}/mod{i % 100:02d}.py"] = (
            (f"# module {i}\n" + "x = 1\n" * (50 + i % 400)).encode(),
            0o644,
        )
    total = sum(len(d) for d, _ in files.values())
    manifest = replace(manifest, file_count=len(files) + 2, total_size=total)
    if understate:
        manifest = replace(manifest, file_count=3, total_size=1000)
    files[IN_TREE_PATH] = (manifest.to_json().encode(), 0o644)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs = sorted({str(Path(n).parent) for n in files} - {"."})
    all_dirs = sorted({str(p) for d in dirs for p in [Path(d), *Path(d).parents] if str(p) != "."})
    for d in all_dirs:
        members.append((tar_member(d, mode=0o755, kind=tarfile.DIRTYPE), None))
    for name, (data, mode) in sorted(files.items()):
        members.append((tar_member(name, len(data), mode), data))
    members.append((tar_link("bin/python3", "python"), None))
    if binary:
        members.append((tar_link("lib/libfake.so.1", "libfake.so"), None))
    out.mkdir(parents=True, exist_ok=True)
    ext = {"zstd": "tar.zst", "gzip": "tar.gz", "none": "tar"}[compression]
    tarball = out / f"{manifest.stack_id}-{version}-{platform}.{ext}"
    write_tar(tarball, members, compression)
    seal(out, tarball, manifest, compression)
    return out


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tar_member(name, mode=0o777, kind=kind)
    info.linkname = target
    return info


def seal(out: Path, tarball: Path, manifest: Manifest, compression: str = "zstd") -> None:
    """Write the .sha256 and manifest.json for ``tarball`` as pack does."""
    digest = sha256_file(tarball)
    (out / f"{tarball.name}.sha256").write_text(f"{digest}  {tarball.name}\n")
    full = replace(
        manifest,
        tarball=TarballInfo(
            tarball.name, digest, tarball.stat().st_size, "gzip" if compression == "gzip" else "zstd"
        ),
    )
    (out / "manifest.json").write_text(full.to_json())


def write_artifact(root: Path, manifest: Manifest, tar_bytes: bytes) -> Path:
    """Compress ``tar_bytes`` and write ``root/<stack>/<version>/`` (tarball, .sha256, manifest.json)."""
    out = root / manifest.stack / manifest.version
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"{manifest.stack}-{manifest.version}-{PLATFORM}.tar.zst"
    tarball.write_bytes(zstandard.ZstdCompressor(level=3).compress(tar_bytes))
    seal(out, tarball, manifest)
    return out
