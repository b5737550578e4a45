"""The artifact tarball, read as a stream: its members and each package's files (conda-meta
records, pip RECORDs), what the layer planner needs.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import zstandard

from ..errors import ImageError
from ..layers import TreeEntry, normalise_path
from ..manifest import Manifest, normalise_pip_name
from .plan import TreeIndex


def open_tarball(path: Path) -> contextlib.AbstractContextManager[tarfile.TarFile]:
    """The artifact tarball as a streamed tar (zstd or gzip)."""

    @contextlib.contextmanager
    def opened() -> Iterator[tarfile.TarFile]:
        with open(path, "rb") as raw:
            if path.name.endswith(".zst"):
                reader: Any = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            else:
                reader = gzip.GzipFile(fileobj=raw, mode="rb")
            with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
                yield tar

    return opened()


def member_path(name: str) -> str:
    return normalise_path(name)


def index_tarball(path: Path, manifest: Manifest) -> TreeIndex:
    """Members of the tarball and each package's files (conda-meta JSON, pip RECORD)."""
    entries: list[TreeEntry] = []
    files: dict[str, list[str]] = {}
    pip_names = {normalise_pip_name(p.name): p.name for p in manifest.packages if p.manager == "pip"}
    try:
        with open_tarball(path) as tar:
            for member in tar:
                rel = member_path(member.name)
                if not rel:
                    continue
                kind = "dir" if member.isdir() else "symlink" if member.issym() else "file"
                if kind == "file" and not member.isfile():
                    raise ImageError(f"{path}: {rel} is neither a file, a directory nor a symlink")
                entries.append(TreeEntry(rel, kind, member.size if kind == "file" else 0))  # type: ignore[arg-type]
                if kind != "file":
                    continue
                if re.fullmatch(r"conda-meta/[^/]+\.json", rel) and rel != "conda-meta/swstack-manifest.json":
                    _read_conda_record(tar, member, rel, files)
                elif rel.endswith(".dist-info/RECORD"):
                    _read_record(tar, member, rel, pip_names, files)
    except (OSError, tarfile.TarError, zstandard.ZstdError) as exc:
        raise ImageError(f"{path}: cannot read the artifact tarball ({exc}); pack it again") from exc
    return TreeIndex(tuple(entries), {k: tuple(v) for k, v in files.items()})


def _read_conda_record(
    tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str, files: dict[str, list[str]]
) -> None:
    handle = tar.extractfile(member)
    if handle is None:
        return
    try:
        record = json.loads(handle.read())
    except ValueError:
        return
    name = record.get("name")
    if isinstance(name, str):
        files.setdefault(name, []).extend([*(str(f) for f in record.get("files") or ()), rel])


def _read_record(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: str,
    pip_names: Mapping[str, str],
    files: dict[str, list[str]],
) -> None:
    dist_info = rel.rsplit("/", 1)[0]
    name = pip_names.get(normalise_pip_name(dist_info.rsplit("/", 1)[-1].split("-", 1)[0]))
    handle = tar.extractfile(member)
    if name is None or handle is None:
        return
    site_packages = dist_info.rsplit("/", 1)[0]
    owned = files.setdefault(name, [])
    for line in handle.read().decode(errors="replace").splitlines():
        record_path = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
        if record_path:
            owned.append(normalise_path(f"{site_packages}/{record_path}"))
    owned.append(rel)
