"""A built ``.conda`` package -> the same package with the build's clock and machine taken out.

Input: a ``.conda`` file as rattler-build or conda-package-handling wrote it. Output: the
same file rewritten in place so that its bytes depend only on what is packaged: the
build timestamp in ``info/index.json`` (and in ``info/recipe/rendered_recipe.yaml``) is
set to a fixed epoch; tar members are sorted, with fixed mtimes, owner root:root (no
names) and modes 0644/0755; both tars are compressed with one zstd level, single
threaded; zip entries get a fixed date and mode.

The payload (``pkg-*.tar.zst``) keeps every byte of every file, so ``info/paths.json``
(sha256, size, prefix placeholders) stays true without being touched. Everything else
conda reads is left as it was. ``repack_conda`` is idempotent.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from ..errors import ChannelError
from ..fsutil import atomic_output
from ..tarwriter import TarStream, header

# 2024-01-01T00:00:00Z: the date every normalised package carries.
DEFAULT_EPOCH = 1704067200
ZSTD_LEVEL = 3
# Bump when the normalised form changes: part of the channel's package cache keys.
REPACK_FORMAT = "repack-1"

_INDEX_TIMESTAMP = re.compile(rb'("timestamp"\s*:\s*)\d+')
_RECIPE_TIMESTAMP = re.compile(rb"^(\s*timestamp:\s*)\S+$", re.MULTILINE)


@dataclass(frozen=True)
class Member:
    """One tar member, reduced to what a package means: name, kind, mode bits, content."""

    name: str
    type: bytes  # tarfile.REGTYPE, SYMTYPE, LNKTYPE, DIRTYPE
    mode: int
    data: bytes = b""
    linkname: str = ""


def normalized_mode(member_type: bytes, mode: int) -> int:
    """0777 for symlinks, 0755 for directories and anything executable, 0644 for the rest:
    the build machine's umask does not show."""
    if member_type == tarfile.SYMTYPE:
        return 0o777
    if member_type == tarfile.DIRTYPE or mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        return 0o755
    return 0o644


def fix_timestamps(name: str, data: bytes, epoch: int) -> bytes:
    """Set the build timestamps in the info files that carry one to ``epoch``."""
    if name == "info/index.json":
        return _INDEX_TIMESTAMP.sub(lambda m: m.group(1) + str(epoch * 1000).encode(), data)
    if name == "info/recipe/rendered_recipe.yaml":
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)).encode()
        return _RECIPE_TIMESTAMP.sub(lambda m: m.group(1) + iso, data)
    return data


def read_tar(raw: bytes) -> list[Member]:
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            if info.isreg():
                extracted = tar.extractfile(info)
                assert extracted is not None
                members.append(Member(info.name, tarfile.REGTYPE, info.mode, extracted.read()))
            elif info.issym() or info.islnk() or info.isdir():
                members.append(Member(info.name, info.type, info.mode, linkname=info.linkname))
            else:
                raise ChannelError(f"unexpected tar member {info.name!r} (type {info.type!r})")
    return members


def write_tar(members: list[Member], epoch: int) -> bytes:
    """An uncompressed tar of ``members``, sorted by name, with no trace of who made it."""
    buf = io.BytesIO()
    with TarStream(buf) as tar:
        for m in sorted(members, key=lambda m: m.name):
            info = header(
                m.name,
                kind=m.type,
                mode=normalized_mode(m.type, m.mode),
                mtime=epoch,
                size=len(m.data),
                linkname=m.linkname,
            )
            tar.add(info, io.BytesIO(m.data) if m.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def _zstd_compress(raw: bytes) -> bytes:
    # One thread and a one-shot frame (content size in the header): same input, same bytes.
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_content_size=True).compress(raw)


def _zstd_decompress(data: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read()


def repack_entry(name: str, data: bytes, epoch: int) -> bytes:
    """The normalised content of one zip entry of a ``.conda`` file."""
    if not name.endswith(".tar.zst"):
        return data  # metadata.json: a fixed document, nothing to normalise
    members = read_tar(_zstd_decompress(data))
    if name.startswith("info-"):
        members = [
            Member(m.name, m.type, m.mode, fix_timestamps(m.name, m.data, epoch), m.linkname) for m in members
        ]
    return _zstd_compress(write_tar(members, epoch))


def repack_conda(path: Path, epoch: int = DEFAULT_EPOCH) -> None:
    """Rewrite the ``.conda`` file at ``path`` in its normalised form (atomically)."""
    try:
        with zipfile.ZipFile(path) as zf:
            entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ChannelError(f"{path}: not a readable .conda file: {exc}") from exc
    names = [n for n, _ in entries]
    if "metadata.json" not in names or not any(n.startswith("info-") for n in names):
        raise ChannelError(f"{path}: not a .conda package (entries: {', '.join(names)})")
    date = time.gmtime(max(epoch, 315532800))[:6]  # zip dates start in 1980
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        # The entry order is kept: metadata.json first is what readers expect.
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=date)
            info.create_system = 3  # unix
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED
            out.writestr(info, repack_entry(name, data, epoch))
