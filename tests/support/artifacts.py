"""Small but real artifact directories for registry tests: a tar.zst, its .sha256, manifest.json.

Input: a directory and a stack name/version. Output: the artifact directory, laid out as
``pack`` leaves it, whose tarball holds a tiny prefix (a script, the in-tree manifest).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import zstandard

from swstack.manifest import IN_TREE_PATH, Manifest, PackageEntry, TarballInfo

PLATFORM = "linux-64"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_artifact(
    root: Path, stack: str = "demo", version: str = "2026-11-21", payload: bytes = b"", extra_bytes: int = 0
) -> Path:
    """Write ``root/<stack>/<version>/`` and return it. ``extra_bytes`` of random data make it big."""
    base = Manifest(
        stack=stack,
        variant="default",
        version=version,
        platform=PLATFORM,
        prefix=f"/data0/sw/{stack}",
        lockfile_sha256="0" * 64,
        stackfile_sha256="1" * 64,
        tools={"swstack": "0.1.0"},
        packages=(PackageEntry("python", "3.11.9", "h0_0", "local", "2" * 64, 1, "conda"),),
        file_count=3,
        total_size=0,
        git_commit="0" * 40,
        build_time="2026-11-21T00:00:00Z",
        source_date_epoch=1_700_000_000,
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "bin/hello", b"#!/bin/sh\necho hello from " + stack.encode() + b"\n" + payload, 0o755)
        _add(tar, IN_TREE_PATH, base.without_tarball().to_json().encode())
        if extra_bytes:
            _add(tar, "share/blob.bin", os.urandom(extra_bytes))
    return write_artifact(root, base, raw.getvalue())


def write_artifact(root: Path, manifest: Manifest, tar_bytes: bytes) -> Path:
    """Compress ``tar_bytes`` and write ``root/<stack>/<version>/`` (tarball, .sha256, manifest.json)."""
    from dataclasses import replace

    compressed = zstandard.ZstdCompressor(level=3).compress(tar_bytes)
    out = root / manifest.stack / manifest.version
    out.mkdir(parents=True, exist_ok=True)
    name = f"{manifest.stack}-{manifest.version}-{PLATFORM}.tar.zst"
    (out / name).write_bytes(compressed)
    sha = hashlib.sha256(compressed).hexdigest()
    (out / f"{name}.sha256").write_text(f"{sha}  {name}\n")
    full = replace(manifest, tarball=TarballInfo(name=name, sha256=sha, size=len(compressed), compression="zstd"))
    (out / "manifest.json").write_text(full.to_json())
    return out
