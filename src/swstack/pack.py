"""Installed prefix -> reproducible tarball (tar.zst or tar.gz) + ``.sha256`` + ``manifest.json``.

Input: a conda environment installed at its production path (e.g. ``/data0/sw/py3``),
with the package cache it was installed from still in place. Output, under the
artifacts root::

    <stack_id>/<version>/<stack_id>-<version>-<platform>.tar.zst
    <stack_id>/<version>/<stack_id>-<version>-<platform>.tar.zst.sha256
    <stack_id>/<version>/manifest.json          (written last: its presence means complete)

conda-pack decides which files belong to the environment and how they relocate (its
``bin/conda-unpack`` and prefix records): we run its ``Packer`` against a recording
archive (files it would archive unchanged skip it, see ``_pack_records``), then write the
recorded entries ourselves, sorted, with normalised metadata, cut into chunks at member
boundaries chosen by name (``starts_chunk``), each compressed as its own zstd frame by a
pool of threads (gzip: one stream), so a host can verify and fetch only the chunks that
changed. conda-pack's scan runs in a forked process while the chunks guessed from the
package records compress (``_speculate``). The same prefix packed twice gives the same bytes.

This module runs inside the build sandbox, so it imports only the standard library,
``conda_pack``, ``zstandard`` and swstack's light modules.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gzip
import hashlib
import json
import os
import platform as _platform
import queue
import re
import stat
import sys
import tarfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal, NoReturn, TypeVar

from . import __version__, log
from .artifact import checksum_line
from .errors import PackError, SwstackError
from .fsutil import atomic_output, atomic_write_text
from .manifest import (
    IN_TREE_PATH,
    MAX_ID,
    Manifest,
    PackageEntry,
    TarballChunk,
    TarballInfo,
    check_version,
    dist_info_name_version,
    normalise_pip_name,
)
from .recordjson import ConvertingJson

_T = TypeVar("_T")
Compression = Literal["zstd", "gzip"]
EntryKind = Literal["file", "dir", "symlink"]

# Chosen by benchmarks/pack.py on python + numpy + ipykernel: level 3 on every core packs
# 3.7x faster than conda-pack's fixed level 9 for 1.12x its size; level 1 is 1.28x its
# size, level 6 costs 1.7x the CPU for 7% less (docs/pack.md).
DEFAULT_ZSTD_LEVEL = 3
DEFAULT_GZIP_LEVEL = 6
SUFFIXES: dict[str, str] = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
MANIFEST_NAME = "manifest.json"
# Installers whose ``*.dist-info`` we list as pip packages (conda's own say "conda").
PIP_INSTALLERS = frozenset({"pip", "uv"})
_COPY_CHUNK = 1 << 20
# Chunks of a zstd tarball (see starts_chunk), in bytes of the tar stream. The mask gives
# one boundary candidate per 128 member names, ~2.3 MiB on py3, whose members average
# 18 KiB: chunks there average ~4 MiB (the candidate after the minimum, and big files).
CHUNK_MIN = 1 << 20
CHUNK_MAX = 16 << 20
CHUNK_MASK = (1 << 7) - 1
# Members that change in every version (the in-tree manifest holds the version,
# conda-unpack the file list): alone in their chunks, so they never drag neighbours along.
SOLO_MEMBERS = frozenset({IN_TREE_PATH, "bin/conda-unpack"})
# The largest time a tar header holds without a PAX record (year 2242).
MAX_EPOCH = 8**11 - 1
_TYPEFLAGS: dict[str, bytes] = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}


class _Uncached(Exception):
    """conda-pack could not find the package cache the prefix was linked from."""


# ---------------------------------------------------------------- options and results


@dataclass(frozen=True)
class PackOptions:
    """How to write the tarball. ``source_date_epoch`` is the clamp for every mtime."""

    source_date_epoch: int
    compression: Compression = "zstd"
    level: int | None = None  # None: DEFAULT_ZSTD_LEVEL or DEFAULT_GZIP_LEVEL
    threads: int = 0  # zstd worker threads; 0: every core
    owner: str | None = None  # "uid:gid" for every entry; None: 0:0
    overwrite: bool = False  # replace a finished artifact of the same version
    require_package_cache: bool = True  # see _pack_records

    def resolved_level(self) -> int:
        if self.level is None:
            return DEFAULT_ZSTD_LEVEL if self.compression == "zstd" else DEFAULT_GZIP_LEVEL
        top = 22 if self.compression == "zstd" else 9
        if not 1 <= self.level <= top:
            raise PackError(f"level {self.level}: {self.compression} takes levels 1 to {top}")
        return self.level

    def resolved_threads(self) -> int:
        if self.threads < 0:
            raise PackError(f"threads {self.threads}: give a number of threads, or 0 for every core")
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    def check_source_date_epoch(self) -> None:
        """Every mtime is at most the epoch and conda-pack's files are dated at it: it must fit a
        tar header (no PAX ``mtime`` record) and be a time (the manifests carry it as a date)."""
        if not 0 <= self.source_date_epoch <= MAX_EPOCH:
            raise PackError(
                f"source date epoch {self.source_date_epoch}: give epoch seconds from 0 to {MAX_EPOCH}, "
                "the lock time (e.g. 1767225600)"
            )


@dataclass(frozen=True)
class PipLock:
    """What the lockfile says about one pip package."""

    url: str
    sha256: str
    size: int = 0


@dataclass(frozen=True)
class ArtifactInfo:
    """What the manifest records about where the prefix came from (passed by the caller)."""

    stack: str
    variant: str = "default"
    default_variant: str = "default"  # the stack file's default: its artifacts are named by the bare stack
    version: str | None = None  # None: next_version() over the versions already packed
    platform: str | None = None  # None: the subdir of the installed packages
    lockfile_sha256: str = ""
    stackfile_sha256: str = ""
    git_commit: str = ""
    build_time: str | None = None  # None: when the prefix was installed (conda-meta mtimes)
    tools: Mapping[str, str] = field(default_factory=dict)
    kernels: tuple[str, ...] = ()
    pip_locks: Mapping[str, PipLock] = field(default_factory=dict)  # by normalised name


@dataclass(frozen=True)
class PackResult:
    tarball: Path
    checksum: Path
    manifest_path: Path
    manifest: Manifest
    seconds: float


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member: read from ``source``, or ``data`` when conda-pack rewrote the file."""

    name: str
    kind: EntryKind
    mode: int
    mtime: float | None  # None: generated now, dated at the epoch
    size: int = 0
    source: str | None = None
    data: bytes | None = None
    linkname: str = ""


# ---------------------------------------------------------------- pure planning


def next_version(existing: Sequence[str], today: date) -> str:
    """``YYYY.MM.DD`` for the first build of the day, then ``YYYY.MM.DD.1``, ``.2``..."""
    base = today.strftime("%Y.%m.%d")
    pattern = re.compile(re.escape(base) + r"(?:\.(\d+))?")
    taken = [m for m in (pattern.fullmatch(v) for v in existing) if m]
    if not taken:
        return base
    return f"{base}.{max(int(m.group(1) or 0) for m in taken) + 1}"


def tarball_name(stack_id: str, version: str, platform: str, compression: Compression) -> str:
    return f"{stack_id}-{version}-{platform}{SUFFIXES[compression]}"


def parse_owner(owner: str | None) -> tuple[int, int]:
    if owner is None:
        return 0, 0
    m = re.fullmatch(r"(\d+):(\d+)", owner)
    if not m:
        raise PackError(f"owner {owner!r}: expected 'uid:gid' with numbers, e.g. '899:899'")
    uid, gid = int(m.group(1)), int(m.group(2))
    if max(uid, gid) > MAX_ID:
        raise PackError(f"owner {owner!r}: user and group ids go from 0 to {MAX_ID}")
    return uid, gid


def normal_mode(kind: EntryKind, mode: int) -> int:
    """0755 for directories and anything executable, 0644 otherwise, 0777 for symlinks."""
    if kind == "symlink":
        return 0o777
    if kind == "dir" or mode & 0o111:
        return 0o755
    return 0o644


def normalised(e: Entry, source_date_epoch: int) -> Entry:
    """``e`` with its mode normalised and its mtime clamped to the epoch (None: at the epoch)."""
    mtime = source_date_epoch if e.mtime is None else min(int(e.mtime), source_date_epoch)
    mode = normal_mode(e.kind, e.mode)
    if mode == e.mode and mtime == e.mtime:
        return e
    return Entry(e.name, e.kind, mode, mtime, e.size, e.source, e.data, e.linkname)


def plan_entries(recorded: Iterable[Entry], source_date_epoch: int) -> list[Entry]:
    """Normalise and sort what conda-pack recorded; add every parent directory.

    Later records of a name win (conda-pack adds its own scripts last). mtimes are
    clamped, not set: files older than the epoch keep their mtime, because the
    ``.pyc`` files shipped in packages are validated against their source's mtime.
    """
    by_name: dict[str, Entry] = {}
    for e in recorded:
        by_name[e.name] = normalised(e, source_date_epoch)
    for parent in _parent_dirs(by_name) - by_name.keys():
        by_name[parent] = Entry(parent, "dir", 0o755, source_date_epoch)
    return [by_name[name] for name in sorted(by_name)]


def _name(entry: Entry) -> str:
    return entry.name


def tree_totals(entries: Iterable[Entry]) -> tuple[int, int]:
    """(files and symlinks, bytes of regular files) of the unpacked tree."""
    count = size = 0
    for e in entries:
        if e.kind != "dir":
            count += 1
            size += e.size
    return count, size


@functools.lru_cache(maxsize=1 << 16)
def name_hash(name: str) -> int:
    """A hash of a member name that is the same on every machine and Python run. Kept: a
    zstd pack cuts most names twice, for the guess and after the scan (``_speculate``)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def starts_chunk(name: str, previous: str | None, held: int, size: int) -> bool:
    """Whether the member ``name`` (``size`` bytes of tar stream, header and padding
    included) starts a new chunk, after ``previous`` when the current chunk holds ``held``.

    Content-defined on names: a boundary falls before a name whose hash has its low bits
    zero once the chunk holds ``CHUNK_MIN``, so a change to one package's files moves no
    boundary but those around them, and the chunks before and after keep their bytes.
    A chunk grows past ``CHUNK_MAX`` only by a single member larger than that. The
    ``SOLO_MEMBERS`` are chunks of their own.
    """
    if held == 0:
        return False
    if name in SOLO_MEMBERS or previous in SOLO_MEMBERS or held + size > CHUNK_MAX:
        return True
    return held >= CHUNK_MIN and name_hash(name) & CHUNK_MASK == 0


def chunk_groups(members: Iterable[tuple[str, int, _T]]) -> Iterator[tuple[list[_T], int]]:
    """Cut ``(name, size in the tar stream, item)`` triples, in order, into chunks
    (``starts_chunk``): each chunk's items and size, given as soon as the member after it
    is seen, so a caller can compress a chunk while it reads the members of the next."""
    group: list[_T] = []
    previous, held = None, 0
    for name, size, item in members:
        if group and starts_chunk(name, previous, held, size):
            yield group, held
            group, held = [], 0
        group.append(item)
        previous, held = name, held + size
    if group:
        yield group, held


def chunk_starts(members: Iterable[tuple[str, int]]) -> list[int]:
    """Indices of the members that start a chunk, for (name, size in the tar stream) pairs."""
    starts, index = [], 0
    for group, _ in chunk_groups((name, size, None) for name, size in members):
        starts.append(index)
        index += len(group)
    return starts


def tar_info(entry: Entry, uid: int, gid: int) -> tarfile.TarInfo:
    """A member header with nothing that varies between machines or runs."""
    info = tarfile.TarInfo(entry.name)
    info.type = _TYPEFLAGS[entry.kind]
    info.mode = entry.mode
    info.mtime = int(entry.mtime or 0)
    info.size = entry.size if entry.kind == "file" else 0
    info.linkname = entry.linkname
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    return info


def platform_of(subdirs: Iterable[str]) -> str:
    """The conda subdir of the installed packages, else of this machine."""
    native = sorted({s for s in subdirs if s and s != "noarch"})
    if len(native) == 1:
        return native[0]
    if len(native) > 1:
        raise PackError(f"the prefix mixes packages for several platforms: {', '.join(native)}")
    machine = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64"}.get(
        _platform.machine().lower(), _platform.machine().lower()
    )
    system = {"darwin": "osx"}.get(
        sys.platform, "linux" if sys.platform.startswith("linux") else sys.platform
    )
    return f"{system}-{machine}"


def merge_tools(given: Mapping[str, str]) -> dict[str, str]:
    """The versions of what packed the artifact; the caller's entries win."""
    import conda_pack
    import zstandard

    tools = {
        "swstack": __version__,
        "conda-pack": str(conda_pack.__version__),
        "zstandard": str(zstandard.__version__),
        "python": _platform.python_version(),
    }
    tools.update(given)
    return dict(sorted(tools.items()))


# ---------------------------------------------------------------- reading the prefix


@dataclass(frozen=True)
class CondaRecord:
    entry: PackageEntry
    subdir: str
    files: tuple[str, ...]
    meta_name: str  # the record's own file, conda-meta/<name>-<version>-<build>.json
    meta_size: int


def read_conda_records(prefix: Path) -> list[CondaRecord]:
    """The installed conda packages, from ``conda-meta/*.json``, sorted by name."""
    records = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        if path.name == os.path.basename(IN_TREE_PATH):
            continue
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
            entry = PackageEntry(
                name=data["name"],
                version=data["version"],
                build=data.get("build", ""),
                channel=data.get("channel", "") or "",
                sha256=data.get("sha256", "") or "",
                size=int(data.get("size", 0) or 0),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PackError(f"{path}: unreadable package record ({exc}); reinstall the prefix") from exc
        records.append(
            CondaRecord(
                entry,
                data.get("subdir", ""),
                tuple(data.get("files", ())),
                f"conda-meta/{path.name}",
                len(raw),
            )
        )
    return sorted(records, key=lambda r: r.entry.name)


def read_pip_packages(
    prefix: Path, conda_files: set[str], locks: Mapping[str, PipLock]
) -> list[PackageEntry]:
    """Packages pip installed: ``*.dist-info`` with a pip ``INSTALLER`` that no conda package owns."""
    found = []
    for dist_info in sorted(prefix.glob("lib/python*/site-packages/*.dist-info")):
        rel = dist_info.relative_to(prefix).as_posix()
        if f"{rel}/METADATA" in conda_files:
            continue
        installer = dist_info / "INSTALLER"
        if not installer.is_file() or installer.read_text().strip() not in PIP_INSTALLERS:
            continue
        name, version = dist_info_name_version(dist_info)
        lock = locks.get(normalise_pip_name(name))
        found.append(
            PackageEntry(
                name=name,
                version=version,
                build="",
                channel=lock.url if lock else "",
                sha256=lock.sha256 if lock else "",
                size=lock.size if lock else 0,
                manager="pip",
            )
        )
    return sorted(found, key=lambda p: normalise_pip_name(p.name))


def check_build_time(text: str) -> None:
    """A build time given must be ISO 8601 in UTC (``2026-11-21T08:00:00Z``): the manifest
    carries it into the image's ``created`` and the provenance, and an image of a release
    version takes its date tags from it, long after this pack."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() != timedelta(0):
        raise PackError(f"build time {text!r}: give ISO 8601 in UTC, e.g. 2026-11-21T08:00:00Z")


def default_build_time(prefix: Path) -> str:
    """When the prefix was installed: the newest package record, so repacking agrees."""
    meta = prefix / "conda-meta"
    stamps = [p.stat().st_mtime for p in meta.iterdir() if p.name != os.path.basename(IN_TREE_PATH)]
    newest = max(stamps, default=meta.stat().st_mtime)
    return datetime.fromtimestamp(int(newest), tz=timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- conda-pack as the file authority


class _RecordingArchive:
    """Stands in for conda-pack's archive classes (``add``/``add_bytes``) and records entries.

    Files are recorded by path and read when written, keeping memory small; only bytes
    conda-pack rewrote (package records, shebangs) are kept. Sources may lie outside the
    prefix: conda-pack takes files with a prefix placeholder from the package cache, so
    that ``conda-unpack`` can put any new prefix in.
    """

    def __init__(self, tool_dir: str) -> None:
        self.entries: list[Entry] = []
        self.tool_dir = tool_dir.rstrip("/") + "/"

    def add(self, source: str, target: str) -> None:
        entry = _entry_from_stat(source, target, os.lstat(source))
        if source.startswith(self.tool_dir):
            entry = _dated_at_epoch(entry)
        self.entries.append(entry)

    def add_bytes(self, source: str, data: bytes, target: str) -> None:
        st = os.lstat(source)
        entry = _entry_from_stat(source, target, st)
        if not _same_content(source, st, data):
            entry = replace(entry, size=len(data), source=None, data=bytes(data))
        self.entries.append(entry)

    def add_text(self, target: str, text: str, executable: bool) -> None:
        data = text.encode()
        self.entries.append(Entry(target, "file", 0o755 if executable else 0o644, None, len(data), data=data))


def _dated_at_epoch(entry: Entry) -> Entry:
    """A file of conda-pack's own (its ``activate`` scripts): its mtime is when conda-pack was
    installed on the build machine, which must not reach the tarball (None: the epoch)."""
    return replace(entry, mtime=None)


def _entry_from_stat(source: str, target: str, st: os.stat_result) -> Entry:
    if stat.S_ISLNK(st.st_mode):
        return Entry(target, "symlink", st.st_mode, st.st_mtime, linkname=os.readlink(source))
    if stat.S_ISDIR(st.st_mode):
        return Entry(target, "dir", st.st_mode, st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        return Entry(target, "file", st.st_mode, st.st_mtime, st.st_size, source=source)
    raise PackError(f"{source}: not a file, directory or symlink; remove it from the prefix")


def _same_content(source: str, st: os.stat_result, data: bytes) -> bool:
    if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
        return False
    with open(source, "rb") as fh:
        return fh.read() == data


def _pack_records(
    prefix: Path, require_package_cache: bool, source_date_epoch: int, installed: Mapping[str, Entry] | None = None
) -> list[Entry]:
    """What conda-pack would have archived, normalised (``_scan_prefix``). ``installed``: the
    entries of installed files already read (``guess_entries``), taken instead of an
    ``lstat`` of the same file."""
    plain, packed = _scan_prefix(prefix, require_package_cache, source_date_epoch)
    return _plain_entries(plain, str(prefix), source_date_epoch, installed or {}) + packed


def _scan_prefix(
    prefix: Path, require_package_cache: bool, source_date_epoch: int
) -> tuple[list[tuple[str, str]], list[Entry]]:
    """Run conda-pack's Packer over the prefix: ``(target, package cache source)`` of each
    file it would archive unchanged, and the normalised entries of everything else.

    Without the package cache conda-pack marks every file "unknown" and, on Linux, does
    not relocate binaries, so by default a missing cache is an error, not a warning.

    conda-pack's ``Packer.add`` does two things with a file of no prefix (``file_mode``
    None): a package record (``conda-meta/*.json``) is rewritten, anything else is handed
    to the archive as it is. Those plain files are most of a prefix, so they skip the
    Packer and the remapping to the installed tree and become entries straight from one
    ``lstat`` (``_plain_entry``: what ``_RecordingArchive.add`` would record); the Packer
    still sees every other file, in conda-pack's order, so ``conda-unpack``'s prefix
    records are its own. ``tests/integration/test_pack.py`` checks both ways give the
    same entries.
    """
    import conda_pack.core
    from conda_pack.core import CondaEnv, CondaPackException, Packer

    from . import scanhelpers

    class RecordingPacker(Packer):  # type: ignore[misc]
        # conda-pack writes its generated files (conda-unpack...) to temporary files it
        # deletes at once; take the text itself instead.
        def _write_text_file(self, fpath: str, ftext: str, executable: bool = False) -> None:
            archive.add_text(fpath, ftext, executable)

    archive = _RecordingArchive(os.path.dirname(conda_pack.core.__file__))
    plain: list[tuple[str, str]] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Its walk of the prefix and its File per package file, with less pure Python
            # (scanhelpers); each package record it reads twice, parsed once (ConvertingJson).
            json_module = ConvertingJson()
            with (
                _replaced(conda_pack.core, "load_files", scanhelpers.load_files),
                _replaced(conda_pack.core, "managed_file", scanhelpers.managed_file),
                _replaced(conda_pack.core, "json", json_module),
            ):
                env = CondaEnv.from_prefix(
                    str(prefix), on_missing_cache="raise" if require_package_cache else "warn"
                )
            packer = RecordingPacker(env.prefix, archive)
            # conda-pack turns scripts' shebangs into `#!/usr/bin/env python`, which runs
            # whatever python is first on PATH; keep the absolute production shebang and let
            # conda-unpack rewrite it like any other text prefix.
            # Its package records' rewrite encodes in pure Python: the same text, faster (recordjson).
            with (
                _replaced(conda_pack.core, "rewrite_shebang", _keep_shebang),
                _replaced(conda_pack.core, "json", json_module),
            ):
                for f in env.files:
                    if _is_plain(f.target, f.file_mode):
                        plain.append((f.target, f.source))
                    else:
                        packer.add(_from_installed_tree(f, env.prefix))
                packer.finish()
    except CondaPackException as exc:
        hint = (
            "; pack where the prefix was built, with its package cache mounted at the same path"
            if "cache" in str(exc).lower()
            else ""
        )
        raise PackError(f"conda-pack cannot pack {prefix}: {one_line(str(exc))}{hint}") from exc
    for w in caught:
        log.warn(str(w.message).strip())
    # The Packer's records come after the plain files: its generated files win a name clash.
    return plain, [normalised(e, source_date_epoch) for e in archive.entries]


def one_line(text: str) -> str:
    """conda-pack's message (paragraphs, a list of packages) on one line: an error is one line,
    and the build reports pack's by its last line (``build.own_errors``)."""
    out, in_list = "", False
    for line in filter(None, (" ".join(line.split()) for line in text.splitlines())):
        item = line.startswith("- ")
        out += ("; " if item and in_list else ". " if in_list else " ") + line.removeprefix("- ")
        in_list = item
    return out.strip()


def _is_package_record(target: str) -> bool:
    """conda-pack's ``fnmatch(target, 'conda-meta/*.json')`` (fnmatch's ``*`` also matches ``/``)."""
    return target.startswith("conda-meta/") and target.endswith(".json")


def _is_plain(target: str, file_mode: str | None) -> bool:
    """A file the Packer would archive unchanged: no prefix in it (``file_mode`` None), no
    package record, and not written over by the build after linking."""
    return file_mode is None and not _is_package_record(target) and not target.startswith(WRITTEN_AFTER_LINKING)


def _plain_entries(
    plain: Iterable[tuple[str, str]], prefix: str, source_date_epoch: int, installed: Mapping[str, Entry]
) -> list[Entry]:
    return [
        installed.get(target) or _plain_entry(target, source, prefix, source_date_epoch) for target, source in plain
    ]


def _plain_entry(target: str, cached: str, prefix: str, source_date_epoch: int) -> Entry:
    """The normalised entry of a plain file (``_is_plain``): as ``_from_installed_tree``
    does, read from the installed tree, or from the package cache (``cached``) if it is not
    installed."""
    installed = prefix + "/" + target
    try:
        st = os.lstat(installed)
        source = installed
    except FileNotFoundError:
        st, source = os.lstat(cached), cached
    mode = st.st_mode
    mtime = min(int(st.st_mtime), source_date_epoch)
    if stat.S_ISREG(mode):
        return Entry(target, "file", 0o755 if mode & 0o111 else 0o644, mtime, st.st_size, source)
    if stat.S_ISLNK(mode):
        return Entry(target, "symlink", 0o777, mtime, linkname=os.readlink(source))
    if stat.S_ISDIR(mode):
        return Entry(target, "dir", 0o755, mtime)
    raise PackError(f"{source}: not a file, directory or symlink; remove it from the prefix")


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block (unittest.mock's patch would import
    asyncio and email: 17 ms of every pack's start)."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _keep_shebang(data: bytes, target: str, prefix: str) -> tuple[bytes, bool]:
    return data, False


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _from_installed_tree(file: Any, prefix: str) -> Any:
    """Archive the installed file, not the package's original from the package cache.

    conda-pack takes every package-owned file from the package cache: a file with a prefix
    placeholder still holding the placeholder, so its archives only work after
    ``conda-unpack``, and a file the build changed after linking (a kernel spec written over
    the one a package ships) in its original form. Ours are built at the production path,
    so we archive the tree as installed and record the production prefix as what
    ``conda-unpack`` replaces: untarred at ``/data0/sw/<name>`` the tree works as it is, and
    untarred elsewhere ``conda-unpack`` relocates it (binary files only to a prefix no
    longer than the production one, as with any conda binary).
    """
    from conda_pack.core import File

    installed = os.path.join(prefix, file.target)
    if not os.path.lexists(installed):
        return file
    placeholder = file.prefix_placeholder
    if placeholder and file.file_mode in ("text", "binary"):
        placeholder = prefix
    mode = file.file_mode
    if not placeholder and file.target.startswith(WRITTEN_AFTER_LINKING) and _holds(installed, prefix):
        # A package's file the build replaced (the stack's own kernel.json over ipykernel's
        # python3 spec): the package's record knows no prefix in it, but it has one now.
        placeholder, mode = prefix, "text"
    return File(installed, file.target, is_conda=file.is_conda, file_mode=mode, prefix_placeholder=placeholder)


# Where the build writes over package files after linking (kernel specs).
WRITTEN_AFTER_LINKING = ("share/jupyter/kernels/",)


def _holds(path: str, prefix: str) -> bool:
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        return prefix.encode() in fh.read()


def in_tree_manifest_entry(manifest: Manifest, source_date_epoch: int) -> Entry:
    """The manifest inside the tree, dated at the epoch: the real build time would make two
    builds of one lockfile differ. ``manifest.json`` beside the tarball keeps the real time."""
    dated = replace(manifest.without_tarball(), build_time=_iso(source_date_epoch))
    data = dated.to_json().encode()
    return Entry(IN_TREE_PATH, "file", 0o644, source_date_epoch, len(data), data=data)


def _installed_entry(root: str, target: str, source_date_epoch: int) -> Entry | None:
    """``_plain_entry`` of an installed file or symlink; None if it is missing or neither."""
    source = root + "/" + target
    try:
        st = os.lstat(source)
    except OSError:
        return None  # conda-pack will say what is missing
    mtime = min(int(st.st_mtime), source_date_epoch)
    if stat.S_ISREG(st.st_mode):
        return Entry(target, "file", 0o755 if st.st_mode & 0o111 else 0o644, mtime, st.st_size, source)
    if stat.S_ISLNK(st.st_mode):
        return Entry(target, "symlink", 0o777, mtime, linkname=os.readlink(source))
    return None


def guess_entries(
    prefix: Path, records: Iterable[CondaRecord], source_date_epoch: int, installed: dict[str, Entry]
) -> Iterator[Entry]:
    """The entries conda-pack will most likely record, from the package records alone, in
    ``plan_entries``' order: each installed file is read (``lstat``) only when its turn
    comes, so the first chunks compress while later ones are read. The installed entries
    read are put in ``installed``, by name.

    The installed files, and in place of what conda-pack writes itself, stand-ins of the
    same names: the package records (their original size; conda-pack rewrites them) and
    the members that are chunks of their own, so the guessed chunks start where the real
    ones do. A stand-in has neither source nor data: a chunk holding one is never
    compressed on the guess (``_speculate``). Unmanaged files are missing: chunks holding
    those are guessed wrong, and compressed again.
    """
    root = str(prefix)
    # Later ones win a name, as in plan_entries; None: an installed file, read in its turn.
    by_name: dict[str, Entry | None] = {f: None for r in records for f in r.files}
    for script in _conda_pack_scripts(source_date_epoch):
        by_name[script.name] = script
    for name in SOLO_MEMBERS:
        by_name[name] = Entry(name, "file", 0o644, source_date_epoch)
    for r in records:
        by_name[r.meta_name] = Entry(r.meta_name, "file", 0o644, source_date_epoch, r.meta_size)
    for parent in _parent_dirs(by_name) - by_name.keys():
        by_name[parent] = Entry(parent, "dir", 0o755, source_date_epoch)
    for name in sorted(by_name):
        given = by_name[name]
        if given is not None:
            yield given
        elif (entry := _installed_entry(root, name, source_date_epoch)) is not None:
            installed[name] = entry
            yield entry


def _parent_dirs(names: Iterable[str]) -> set[str]:
    """Every directory above the given member names."""
    dirs: set[str] = set()
    for name in names:
        parent = name.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return dirs


def _conda_pack_scripts(source_date_epoch: int) -> list[Entry]:
    """The scripts conda-pack's ``Packer.finish`` adds besides ``conda-unpack``, as they
    will be recorded (a guess: conda-pack's private names, read if they are there)."""
    import conda_pack.core

    entries = []
    for source, target in getattr(conda_pack.core, "_scripts", []):
        with contextlib.suppress(OSError):
            entry = _dated_at_epoch(_entry_from_stat(source, target, os.lstat(source)))
            entries.append(normalised(entry, source_date_epoch))
    progress = os.path.join(getattr(conda_pack.core, "_current_dir", ""), "_progress.py")
    with contextlib.suppress(OSError), open(progress, "rb") as fh:
        data = fh.read()
        entries.append(Entry("bin/conda_unpack_progress.py", "file", 0o644, source_date_epoch, len(data), data=data))
    return entries


def _is_stand_in(entry: Entry) -> bool:
    return entry.kind == "file" and entry.source is None and entry.data is None


def _fields(e: Entry) -> tuple[Any, ...]:
    return (e.name, e.kind, e.mode, e.mtime, e.size, e.source, e.data, e.linkname)


def _scan_and_exit(answer_fd: int, prefix: Path, require_package_cache: bool, source_date_epoch: int) -> NoReturn:
    """The forked child: scan, send what it found (the plain files by name, the Packer's
    entries as plain tuples), the error's message or a bug's traceback, and exit at once.
    ``marshal``, not ``pickle``: plain values are all it sends, it is built in, and importing
    ``pickle`` cost each process 8 ms."""
    import marshal
    import traceback

    code = 0
    try:
        try:
            plain, packed = _scan_prefix(prefix, require_package_cache, source_date_epoch)
            answer: tuple[str, Any] = ("ok", (plain, [_fields(e) for e in packed]))
        except SwstackError as exc:
            answer = ("error", str(exc))
        except BaseException:
            answer = ("bug", traceback.format_exc())
        with os.fdopen(answer_fd, "wb") as fh:
            fh.write(marshal.dumps(answer))
    except BaseException:
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()  # conda-pack's warnings, logged here
        os._exit(code)  # no atexit handlers, no buffers of the parent's written twice


class _BackgroundScan:
    """``_pack_records`` in a forked process, so conda-pack's scan (pure Python, about a
    second of one core on a large prefix) runs while this one compresses what it guessed.
    The plain files come back by name: this process has most of their entries already
    (``guess_entries``), so neither does an ``lstat`` of each file twice.

    Plain ``fork`` and a pipe: nothing that needs ``/dev/shm`` or a fresh interpreter.
    """

    def __init__(self, prefix: Path, require_package_cache: bool, source_date_epoch: int):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _scan_and_exit(write_end, prefix, require_package_cache, source_date_epoch)
        os.close(write_end)
        self._pid: int | None = pid
        self._answer = os.fdopen(read_end, "rb")

    def result(self, installed: Mapping[str, Entry], prefix: Path, source_date_epoch: int) -> list[Entry]:
        """conda-pack's entries (``_pack_records``), or its error raised here."""
        import marshal

        with self._answer:
            data = self._answer.read()
        self._reap()
        if not data:
            raise PackError("conda-pack's scan of the prefix died without an answer")
        kind, value = marshal.loads(data)
        if kind == "error":
            raise PackError(value)
        if kind == "bug":
            raise RuntimeError(f"conda-pack's scan failed in its process:\n{value}")
        plain, packed = value
        return _plain_entries(plain, str(prefix), source_date_epoch, installed) + [Entry(*f) for f in packed]

    def _reap(self) -> None:
        if self._pid is not None:
            os.waitpid(self._pid, 0)
            self._pid = None

    def stop(self) -> None:
        """Kill the scan if it still runs (the parent failed first)."""
        if self._pid is not None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        self._answer.close()


# ---------------------------------------------------------------- writing


# Every this many bytes of tarball, what is written so far goes to the disk (_HashingFile).
SYNC_STEP = 32 << 20


class _HashingFile:
    """The output file as the compressor sees it: hashes and counts what passes through.

    Every ``SYNC_STEP`` bytes it has the disk write out what it holds so far (``fdatasync``),
    while the compressing threads go on: the ``fsync`` that ends the tarball then waits for
    its last part only, not for all of it (on py3, 111 MiB: 46-66 ms at the end).
    """

    def __init__(self, fh: BinaryIO, sync_step: int = SYNC_STEP):
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self._sync_step = sync_step
        self._synced = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        written = self.fh.write(data)
        if self.size - self._synced >= self._sync_step:
            self.fh.flush()
            os.fdatasync(self.fh.fileno())
            self._synced = self.size
        return written

    def flush(self) -> None:
        self.fh.flush()


class _TarSink:
    """What the tar stream goes to: fixed-size blocks, each handed to ``write`` once full.

    Files are read straight into the block (``copy_from``), so no ``bytes`` is made per
    read. ``write`` may keep no reference to the block it is given: compressors consume
    their input before they return, and the block is filled again.
    """

    def __init__(self, write: Callable[[memoryview], object], batch: int = _COPY_CHUNK):
        self._write = write
        self._batch = batch
        self._block = bytearray(batch)
        self._view = memoryview(self._block)
        self._pos = 0
        self.offset = 0

    def _emit(self, block: bytearray, length: int) -> bytearray:
        """Hand ``block[:length]`` on; return the block to fill next."""
        self._write(memoryview(block)[:length])
        return block

    def _next_block(self) -> None:
        self._block = self._emit(self._block, self._pos)
        self._view = memoryview(self._block)
        self._pos = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        self.offset += total
        while view:
            k = min(len(view), self._batch - self._pos)
            self._view[self._pos : self._pos + k] = view[:k]
            self._pos += k
            view = view[k:]
            if self._pos == self._batch:
                self._next_block()
        return total

    def copy_from(self, fd: int, size: int) -> int:
        """Read the regular file open as ``fd`` into the stream, up to ``size`` bytes and one
        more; return how many there were (``size + 1``: the file holds more than ``size``).

        Asking for one more byte than the file should hold finds its end in the read that
        reads its last bytes: a short read (what a regular file gives only at its end), not
        one more call that reads nothing.
        """
        left = size + 1
        while left > 0:
            k = min(left, self._batch - self._pos)
            got = os.readv(fd, [self._view[self._pos : self._pos + k]])
            self._pos += got
            self.offset += got
            left -= got
            if self._pos == self._batch:
                self._next_block()
            if got < k:
                break
        return size + 1 - left

    def flush(self) -> None:
        if self._pos:
            self._next_block()

    def reset(self) -> None:
        """Forget what was written and not flushed (the sink is used again)."""
        self._pos = 0
        self.offset = 0

    def close(self) -> None:
        self.flush()


class _ThreadedSink(_TarSink):
    """A ``_TarSink`` whose full blocks are compressed in another thread.

    The tar stream (headers, file reads: Python work) is built in the caller's thread while
    this one feeds the compressor, which releases the GIL, so building and compressing
    overlap instead of taking turns. The bytes are the same: one ordered stream of blocks.
    """

    def __init__(self, write: Callable[[memoryview], object], batch: int = _COPY_CHUNK, depth: int = 16):
        super().__init__(write, batch)
        import queue
        import threading

        self._full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(depth - 1):
            self._free.put(bytearray(batch))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name="pack-compress", daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while (item := self._full.get()) is not None:
            block, length = item
            if self._error is None:
                try:
                    self._write(memoryview(block)[:length])
                except BaseException as exc:  # handed to the producing thread
                    self._error = exc
            self._free.put(block)

    def _emit(self, block: bytearray, length: int) -> bytearray:
        if self._error is not None:
            raise self._error
        self._full.put((block, length))
        return self._free.get()

    def close(self) -> None:
        """Flush, wait for the compressor thread, and raise what it raised."""
        try:
            if self._error is None:
                self.flush()
        finally:
            self._full.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def _gzip_stream(out: _HashingFile, level: int) -> Iterator[_TarSink]:
    """A sink whose bytes reach ``out`` as one gzip stream, finished on exit."""
    # filename="" and mtime=0 keep the output's name and the clock out of the header.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=level, mtime=0)
    sink = _ThreadedSink(gz.write)
    try:
        yield sink
    finally:
        sink.close()
    gz.close()


@dataclass(frozen=True)
class PlannedChunk:
    """Whole tar members, or (the last chunk, alone) tar's end-of-archive blocks, to compress
    into one zstd frame. Equal plans give equal frames, whenever and wherever compressed."""

    entries: tuple[Entry, ...]
    raw_size: int  # bytes of tar stream, tail included
    tail: bytes = b""

    def file_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")

    def __hash__(self) -> int:
        # Not every member's hash: a chunk is looked up once per pack, and equal chunks
        # share their first and last names and their size anyway.
        first, last = (self.entries[0].name, self.entries[-1].name) if self.entries else ("", "")
        return hash((first, last, len(self.entries), self.raw_size, self.tail))


def member_header(entry: Entry, uid: int, gid: int) -> bytes:
    """The member's header, PAX records included."""
    header = ustar_header(entry, uid, gid)
    if header is None:
        header = tar_info(entry, uid, gid).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header


def member_size(entry: Entry, uid: int, gid: int) -> int:
    """Bytes of the member in the tar stream: header (PAX records included), data, padding."""
    size = entry.size if entry.kind == "file" else 0
    name, link = entry.name, entry.linkname
    one_block = len(name) < 100 and len(link) <= 100 and name.isascii() and link.isascii()
    if one_block and size < 8**11 and 0 <= int(entry.mtime or 0) < 8**11 and 0 <= uid < 8**7 and 0 <= gid < 8**7:
        return tarfile.BLOCKSIZE + size + -size % tarfile.BLOCKSIZE  # the common case: one ustar block
    name = entry.name + "/" if entry.kind == "dir" else entry.name
    plain = name.isascii() and entry.linkname.isascii() and size < 8**11 and 0 <= int(entry.mtime or 0) < 8**11
    if plain and 0 <= uid < 8**7 and 0 <= gid < 8**7:
        # What ustar_header makes, without making it: one block, or with PAX records
        # for long names, a PAX header block, the records padded, then the block.
        long = [(k, v.encode()) for k, v in ((b"path", name), (b"linkpath", entry.linkname)) if len(v) > 100]
        header = tarfile.BLOCKSIZE
        if long:
            records = len(_pax_records(long))
            header += tarfile.BLOCKSIZE + records + -records % tarfile.BLOCKSIZE
    else:
        header = len(member_header(entry, uid, gid))
    return header + size + -size % tarfile.BLOCKSIZE


def tar_end(length: int) -> bytes:
    """What ends a tar stream of ``length`` bytes of members: two zero blocks, then zeros
    up to a whole record, as tarfile writes."""
    end = 2 * tarfile.BLOCKSIZE
    return bytes(end + -(length + end) % tarfile.RECORDSIZE)


def cut_chunks(entries: Iterable[Entry], uid: int, gid: int) -> Iterator[PlannedChunk]:
    """The chunks of the members ``entries``, in order, each as soon as it is cut."""
    for group, size in chunk_groups((e.name, member_size(e, uid, gid), e) for e in entries):
        yield PlannedChunk(tuple(group), size)


def plan_chunks(entries: Iterable[Entry], uid: int, gid: int, *, last: bool = True) -> list[PlannedChunk]:
    """Cut the members into chunks (``cut_chunks``); the end of the archive follows as a chunk
    of its own unless ``last`` is false (a guess at the start of the list, see ``_speculate``)."""
    chunks = list(cut_chunks(entries, uid, gid))
    if last and chunks:
        # The end of the archive is a chunk of its own: its length follows the total size,
        # so in the last members' chunk it would change that chunk in every version.
        tail = tar_end(sum(c.raw_size for c in chunks))
        chunks.append(PlannedChunk((), len(tail), tail))
    return chunks


class _ChunkCompressor:
    """A pool of threads turning planned chunks into zstd frames (and their sha256).

    Each chunk is built (headers written directly, files read straight into the buffer)
    and compressed by one thread, single-threaded; zstandard and file reads release the
    GIL, so chunks compress in parallel. A frame's bytes depend only on the chunk and the
    level, never on the number of threads. A chunk up to ``CHUNK_MAX`` is built whole in a
    buffer the thread keeps and compressed in one call (faster, and smaller, than
    streaming); a larger one (a single large member) streams through 1 MiB blocks, so
    memory stays bounded. Both frames record the content size.
    """

    def __init__(self, level: int, threads: int, uid: int, gid: int):
        import threading

        self._level = level
        self._uid, self._gid = uid, gid
        self._local = threading.local()
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pack-zstd")

    def submit(self, chunk: PlannedChunk) -> Future[tuple[bytes, str]]:
        return self._pool.submit(self._compress, chunk)

    def _compress(self, chunk: PlannedChunk) -> tuple[bytes, str]:
        import zstandard

        local = self._local
        if not hasattr(local, "cctx"):
            local.cctx = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
            local.parts = []
            local.whole = _TarSink(lambda view: local.parts.append(local.cctx.compress(view)), batch=CHUNK_MAX)
            local.blocks = _TarSink(lambda view: local.parts.append(local.frame.compress(view)))
        parts: list[bytes] = local.parts
        sink: _TarSink = local.whole if chunk.raw_size <= CHUNK_MAX else local.blocks
        if sink is local.blocks:
            local.frame = local.cctx.compressobj(size=chunk.raw_size)
        try:
            headers = [member_header(e, self._uid, self._gid) for e in chunk.entries]
            write_members(chunk.entries, headers, sink)
            sink.write(chunk.tail)
            sink.flush()
            if sink is local.blocks:
                parts.append(local.frame.flush())
            data = b"".join(parts)
        finally:
            parts.clear()
            sink.reset()
        return data, hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        """Drop what has not started; wait for what has."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# How much of the tar stream, per thread and in all, may be compressed on a guess while
# conda-pack scans the prefix: bounds the memory the guessed frames hold (about a
# quarter of it) on a large stack.
SPECULATION_PER_THREAD = 128 << 20
SPECULATION_LIMIT = 1 << 30


def _speculate(
    guess: Iterable[Entry], uid: int, gid: int, compressor: _ChunkCompressor
) -> dict[PlannedChunk, Future[tuple[bytes, str]]]:
    """Compress the chunks of a guessed entry list as they are cut, up to ``SPECULATION_LIMIT``.

    Chunks are cut by name, so most guessed chunks equal real ones, whose frames are then
    taken as they are (``_write_chunks``). Chunks that certainly differ are skipped: the
    stand-ins (``guess_entries``) and the last (it ends the archive).
    """
    guessed: dict[PlannedChunk, Future[tuple[bytes, str]]] = {}
    budget = min(SPECULATION_PER_THREAD * compressor.threads, SPECULATION_LIMIT)
    held: PlannedChunk | None = None  # the chunk cut last: submitted once another follows it
    for chunk in cut_chunks(guess, uid, gid):
        if held is not None and budget >= held.raw_size and not any(_is_stand_in(e) for e in held.entries):
            budget -= held.raw_size
            guessed[held] = compressor.submit(held)
        held = chunk
    return guessed


def _write_chunks(
    out: _HashingFile,
    chunks: Sequence[PlannedChunk],
    compressor: _ChunkCompressor,
    guessed: dict[PlannedChunk, Future[tuple[bytes, str]]],
    window: int,
    advance: Callable[[int], None],
) -> tuple[TarballChunk, ...]:
    """Compress ``chunks`` (taking the frame of an equal guessed chunk instead, out of
    ``guessed``) and write them in order, with at most ``window`` compressed ahead of the file."""
    table: list[TarballChunk] = []
    pending: deque[tuple[PlannedChunk, Future[tuple[bytes, str]]]] = deque()
    real = set(chunks)
    for chunk, future in guessed.items():
        if chunk not in real:
            future.cancel()  # guessed wrong: if it has not started, it never will

    def write_oldest() -> None:
        chunk, future = pending.popleft()
        data, sha256 = future.result()
        table.append(TarballChunk(out.size, len(data), sha256))
        out.write(data)
        advance(chunk.file_bytes())

    for chunk in chunks:
        # Popped: the frame is freed once written.
        future = guessed.pop(chunk) if chunk in guessed else compressor.submit(chunk)
        pending.append((chunk, future))
        while len(pending) > window:
            write_oldest()
    while pending:
        write_oldest()
    return tuple(table)


_USTAR_TAIL = tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_CHKSUM_BASE = sum(b"        ") + sum(_USTAR_TAIL)


def _header_block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
                  link: bytes) -> bytes:  # fmt: skip
    """One 512-byte ustar header, laid out and checksummed as tarfile does."""
    name, link = name[:100], link[:100]  # longer ones travel in PAX records
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    chksum = _CHKSUM_BASE + sum(name) + sum(numbers) + sum(typeflag) + sum(link)
    return b"".join(
        (name.ljust(100, b"\0"), numbers, b"%06o\0 " % chksum, typeflag, link.ljust(100, b"\0"),
         _USTAR_TAIL)
    )  # fmt: skip


def _pax_records(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``<length> <key>=<value>\\n`` records; the length counts its own digits."""
    out = b""
    for key, value in pairs:
        base = len(key) + len(value) + 3
        length = base + len(str(base))
        length = base + len(str(length))
        out += b"%d %s=%s\n" % (length, key, value)
    return out


def ustar_header(entry: Entry, uid: int, gid: int) -> bytes | None:
    """The header tarfile's PAX writer makes for ``entry``, built directly (~10x faster).

    Names and link targets over 100 bytes get a PAX record, as tarfile gives them.
    None when tarfile itself must write it (non-ASCII names, huge sizes or ids).
    """
    name = entry.name + "/" if entry.kind == "dir" else entry.name
    try:
        bname, blink = name.encode("ascii"), entry.linkname.encode("ascii")
    except UnicodeEncodeError:
        return None
    size = entry.size if entry.kind == "file" else 0
    mtime = int(entry.mtime or 0)
    if size >= 8**11 or not 0 <= mtime < 8**11 or not (0 <= uid < 8**7 and 0 <= gid < 8**7):
        return None
    header = _header_block(bname, entry.mode & 0o7777, uid, gid, size, mtime, _TYPEFLAGS[entry.kind], blink)
    if len(bname) <= 100 and len(blink) <= 100:
        return header  # most members: no PAX records
    pairs = [(k, v) for k, v in ((b"path", bname), (b"linkpath", blink)) if len(v) > 100]
    records = _pax_records(pairs)
    pax = _header_block(b"././@PaxHeader", 0, 0, 0, len(records), 0, tarfile.XHDTYPE, b"")
    return pax + records + bytes(-len(records) % tarfile.BLOCKSIZE) + header


_ZEROS = memoryview(bytes(tarfile.BLOCKSIZE))


def write_members(entries: Sequence[Entry], headers: Sequence[bytes], sink: _TarSink) -> None:
    """Write each member, its header given, as a PAX tar stream does."""
    for entry, header in zip(entries, headers, strict=True):
        sink.write(header)
        if entry.kind == "file":
            if entry.data is not None:
                sink.write(entry.data)
            else:
                assert entry.source is not None
                _copy_file(entry.source, entry.size, sink)
            sink.write(_ZEROS[: -entry.size % tarfile.BLOCKSIZE])


def write_tar(
    entries: Sequence[Entry], sink: _TarSink, uid: int, gid: int, advance: Callable[[int], None]
) -> None:
    """Write ``entries`` in order as a PAX tar stream, as tarfile would, with less per-file work."""
    for entry in entries:
        write_members([entry], [member_header(entry, uid, gid)], sink)
        advance(entry.size)
    sink.write(tar_end(sink.offset))


def _copy_file(source: str, size: int, sink: _TarSink) -> None:
    # os.open, not open: no file object and no fstat for each of some 25,000 small files.
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if sink.copy_from(fd, size) != size:
            raise PackError(f"{source} changed while packing; nothing may write to the prefix")
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the stage


def pack_prefix(prefix: Path, out_dir: Path, *, options: PackOptions, info: ArtifactInfo) -> PackResult:
    """Pack ``prefix`` into ``out_dir/<stack_id>/<version>/`` (``out_dir`` is the artifacts root)."""
    with _collector_paused():
        return _pack_prefix(prefix, out_dir, options, info)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the pack (and so for the forked scan): nothing a pack
    makes is in a cycle, and on py3 the collector's 115 passes over its objects cost about
    0.06 s of CPU (half in the scan), 2% of the pack, on cores the compressors want.
    Restored as it was, whatever way the pack ends."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _pack_prefix(prefix: Path, out_dir: Path, options: PackOptions, info: ArtifactInfo) -> PackResult:
    started = time.monotonic()
    prefix = Path(os.path.abspath(prefix))
    if not (prefix / "conda-meta").is_dir():
        raise PackError(f"{prefix}: not a conda environment (no conda-meta/); build it first")
    uid, gid = parse_owner(options.owner)
    options.resolved_level()  # a bad level, thread count or epoch fails here, before anything is written
    options.resolved_threads()
    options.check_source_date_epoch()
    if info.version is not None:
        check_version(info.version, PackError)  # it names the directory and files written under out_dir
    if info.build_time is not None:
        check_build_time(info.build_time)

    log.step(f"pack {prefix}")
    # zstd: conda-pack scans in another process from the start, while this one reads the
    # package lists and compresses the chunks it can guess (see _speculate).
    scan = None
    if options.compression == "zstd":
        # Imported once, before the fork: the child inherits it.
        import conda_pack.core  # noqa: F401

        scan = _BackgroundScan(prefix, options.require_package_cache, options.source_date_epoch)
    compressor = _ChunkCompressor(options.resolved_level(), options.resolved_threads(), uid, gid)
    try:
        records = read_conda_records(prefix)
        manifest = _manifest_before_packing(prefix, out_dir, records, options, info)
        guessed: dict[PlannedChunk, Future[tuple[bytes, str]]] = {}
        if scan is not None:
            installed: dict[str, Entry] = {}
            guess = guess_entries(prefix, records, options.source_date_epoch, installed)
            guessed = _speculate(guess, uid, gid, compressor)
            recorded = scan.result(installed, prefix, options.source_date_epoch)
        else:
            recorded = _pack_records(prefix, options.require_package_cache, options.source_date_epoch)
        return _pack_recorded(recorded, manifest, out_dir, options, uid, gid, compressor, guessed, started)
    finally:
        if scan is not None:
            scan.stop()
        compressor.close()


def _manifest_before_packing(
    prefix: Path, out_dir: Path, records: Sequence[CondaRecord], options: PackOptions, info: ArtifactInfo
) -> Manifest:
    """The manifest but for what packing tells: file count, total size, the tarball."""
    conda_files = {f for r in records for f in r.files}
    manifest = Manifest(
        stack=info.stack,
        variant=info.variant,
        default_variant=info.default_variant,
        version=info.version or "",
        platform=info.platform or platform_of(r.subdir for r in records),
        prefix=str(prefix),
        lockfile_sha256=info.lockfile_sha256,
        stackfile_sha256=info.stackfile_sha256,
        tools=merge_tools(info.tools),
        packages=tuple(r.entry for r in records)
        + tuple(read_pip_packages(prefix, conda_files, info.pip_locks)),
        file_count=0,
        total_size=0,
        git_commit=info.git_commit,
        build_time=info.build_time or default_build_time(prefix),
        source_date_epoch=options.source_date_epoch,
        owner=options.owner,
        kernels=tuple(info.kernels),
    )
    if not manifest.version:
        stack_dir = out_dir / manifest.stack_id
        existing = [p.name for p in stack_dir.iterdir()] if stack_dir.is_dir() else []
        manifest = replace(manifest, version=next_version(existing, datetime.now(timezone.utc).date()))
    return manifest


def _pack_recorded(
    recorded: Sequence[Entry],
    manifest: Manifest,
    out_dir: Path,
    options: PackOptions,
    uid: int,
    gid: int,
    compressor: _ChunkCompressor,
    guessed: dict[PlannedChunk, Future[tuple[bytes, str]]],
    started: float,
) -> PackResult:
    """Write the tarball of what conda-pack recorded, then its checksum, then the manifest."""
    entries = [e for e in recorded if e.name != IN_TREE_PATH]
    entries = plan_entries(entries, options.source_date_epoch)
    file_count, total_size = tree_totals(entries)
    manifest = replace(manifest, file_count=file_count, total_size=total_size)
    # Already sorted: adding one entry to a sorted list is a linear merge for sorted().
    entries = sorted([*entries, in_tree_manifest_entry(manifest, options.source_date_epoch)], key=_name)

    version_dir = out_dir / manifest.stack_id / manifest.version
    tarball = version_dir / tarball_name(
        manifest.stack_id, manifest.version, manifest.platform, options.compression
    )
    manifest_path = version_dir / MANIFEST_NAME
    _claim_version_dir(manifest_path, options.overwrite)
    checksum = tarball.with_name(tarball.name + ".sha256")
    made_dir = not version_dir.exists()
    done: list[Path] = []  # what this run put under a final name
    try:
        written = _write_tarball(tarball, entries, options, uid, gid, compressor, guessed)
        done.append(tarball)
        _write_beside(checksum, checksum_line(written.sha256, tarball.name))
        done.append(checksum)
        manifest = replace(manifest, tarball=written)
        _write_beside(manifest_path, manifest.to_json())  # last: its presence means complete
    except BaseException:
        # No tarball without its manifest (a full disk stays full of it, and a next run of the
        # default version writes the next one beside it): what this run wrote goes.
        for path in done:
            with contextlib.suppress(OSError):
                path.unlink()
        if made_dir:
            with contextlib.suppress(OSError):
                version_dir.rmdir()
        raise
    seconds = time.monotonic() - started
    log.info(
        # Relative to --out: inside a build's sandbox that is a mount point, not a path the user has.
        f"packed {file_count} files, {log.human_bytes(total_size)} -> {tarball.relative_to(out_dir)} "
        f"({log.human_bytes(written.size)}, {len(written.chunks)} chunks) in {seconds:.1f}s"
    )
    return PackResult(tarball, checksum, manifest_path, manifest, seconds)


def _write_beside(path: Path, text: str) -> None:
    """Write a small file of the artifact atomically; a disk that fills up after the tarball
    fits is a ``PackError`` in one line too, not a traceback."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise PackError(_write_failed(path, exc)) from exc


def _write_failed(path: Path, exc: OSError) -> str:
    """What a failed write says, and, for a full disk, what to do."""
    remedy = "; free space on that file system (or write the artifacts elsewhere), then run again"
    return f"writing {path} failed: {exc}" + (remedy if exc.errno == errno.ENOSPC else "")


def _claim_version_dir(manifest_path: Path, overwrite: bool) -> None:
    """Refuse to replace a finished artifact unless asked; then un-finish it first."""
    if manifest_path.exists():
        if not overwrite:
            raise PackError(
                f"{manifest_path.parent} already holds a finished artifact; "
                "pick another version or pass overwrite to replace it"
            )
        manifest_path.unlink()


def _write_tarball(
    tarball: Path,
    entries: Sequence[Entry],
    options: PackOptions,
    uid: int,
    gid: int,
    compressor: _ChunkCompressor,
    guessed: dict[PlannedChunk, Future[tuple[bytes, str]]],
) -> TarballInfo:
    """Write the tarball atomically; return what the manifest says of it. ``guessed``: the
    frames started before the entries were known (``_speculate``), taken out when used."""
    total = tree_totals(entries)[1]
    chunks: tuple[TarballChunk, ...] = ()
    try:
        with (
            atomic_output(tarball) as partial,
            open(partial, "wb") as fh,
            log.progress(f"packing {tarball.name}", total=total, unit="B") as bar,
        ):
            out = _HashingFile(fh)
            if options.compression == "zstd":
                planned = plan_chunks(entries, uid, gid)
                window = 2 * options.resolved_threads() + 2
                chunks = _write_chunks(out, planned, compressor, guessed, window, bar.advance)
            elif options.compression == "gzip":
                with _gzip_stream(out, options.resolved_level()) as sink:
                    write_tar(entries, sink, uid, gid, bar.advance)
            else:
                raise PackError(f"compression {options.compression!r}: expected 'zstd' or 'gzip'")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise PackError(_write_failed(tarball, exc)) from exc
    return TarballInfo(tarball.name, out.digest.hexdigest(), out.size, options.compression, chunks)


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m swstack.pack",
        description="Pack an installed prefix into a reproducible tarball, its .sha256 and manifest.json.",
        epilog="Writes <stack_id>/<version>/ under --out; manifest.json last, so a directory without it is "
        "unfinished. Exit codes: 0 packed, 2 a command line it cannot read, 8 a pack error (one line saying "
        "what to do; nothing of this run is left under a final name). See docs/pack.md.",
    )
    p.add_argument("--prefix", required=True, type=Path, help="the installed environment, at its real path")
    p.add_argument(
        "--out", required=True, type=Path, help="artifacts root; writes <stack_id>/<version>/ in it"
    )
    p.add_argument("--stack", required=True, help="the stack's name (the artifact's, for the default variant)")
    p.add_argument("--variant", default="default", help="the variant packed (default: default)")
    p.add_argument(
        "--default-variant", default="default", help="the stack file's default variant (named by the bare stack)"
    )
    p.add_argument("--version", help="default: YYYY.MM.DD, then YYYY.MM.DD.N for further builds that day")
    p.add_argument("--platform", help="default: the subdir of the installed packages")
    p.add_argument("--format", choices=("tar.zst", "tar.gz"), default="tar.zst",
                   help="tar.zst (default: chunked, listed in the manifest) or tar.gz")
    p.add_argument(
        "--level", type=int, help=f"default: {DEFAULT_ZSTD_LEVEL} (zstd), {DEFAULT_GZIP_LEVEL} (gzip)"
    )
    p.add_argument("--threads", type=int, default=0, help="zstd threads; 0 (default): every core")
    p.add_argument("--source-date-epoch", type=int, default=None,
                   help="the lock time in epoch seconds, the newest mtime packed; default: $SOURCE_DATE_EPOCH")
    p.add_argument("--owner", help="'uid:gid' for every entry (default 0:0)")
    p.add_argument("--lockfile-sha256", default="", help="recorded in the manifest")
    p.add_argument("--stackfile-sha256", default="", help="recorded in the manifest")
    p.add_argument("--git-commit", default="", help="recorded in the manifest")
    p.add_argument("--build-time", help="ISO 8601 UTC; default: when the prefix was installed")
    p.add_argument("--tool", action="append", default=[], metavar="NAME=VERSION",
                   help="a tool that made the prefix, recorded in the manifest (repeatable)")
    p.add_argument("--kernel", action="append", default=[],
                   help="a kernel spec's name, recorded in the manifest (repeatable)")
    p.add_argument("--pip-locks", type=Path, help='JSON {"name": {"url": ..., "sha256": ..., "size": ...}}')
    p.add_argument("--overwrite", action="store_true", help="replace a finished artifact of the same version")
    p.add_argument(
        "--allow-missing-cache",
        action="store_true",
        help="pack even without the package cache (binaries may not relocate)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="do not print the manifest's path on stdout (a caller that mounted --out elsewhere knows it)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="say more of what it does")
    return p


def _read_pip_locks(path: Path | None) -> dict[str, PipLock]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
        return {
            normalise_pip_name(k): PipLock(v["url"], v["sha256"], int(v.get("size", 0)))
            for k, v in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackError(f"{path}: unreadable pip locks ({exc}); expected {{name: {{url, sha256}}}}") from exc


def _tools_given(given: Sequence[str]) -> dict[str, str]:
    """``--tool NAME=VERSION`` values; one without both parts is an error, not left out of the manifest."""
    tools = {}
    for text in given:
        name, sep, version = text.partition("=")
        if not (sep and name and version):
            raise PackError(f"--tool {text}: give NAME=VERSION, e.g. --tool rattler=0.30.0")
        tools[name] = version
    return tools


def options_from_args(args: argparse.Namespace) -> tuple[PackOptions, ArtifactInfo]:
    sde = args.source_date_epoch
    if sde is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "")
        if not env.isdigit():
            raise PackError(
                "no --source-date-epoch and no SOURCE_DATE_EPOCH; pass the lock time as epoch seconds"
            )
        sde = int(env)
    tools = _tools_given(args.tool)
    options = PackOptions(
        source_date_epoch=sde,
        compression="zstd" if args.format == "tar.zst" else "gzip",
        level=args.level,
        threads=args.threads,
        owner=args.owner,
        overwrite=args.overwrite,
        require_package_cache=not args.allow_missing_cache,
    )
    info = ArtifactInfo(
        stack=args.stack,
        variant=args.variant,
        default_variant=args.default_variant,
        version=args.version,
        platform=args.platform,
        lockfile_sha256=args.lockfile_sha256,
        stackfile_sha256=args.stackfile_sha256,
        git_commit=args.git_commit,
        build_time=args.build_time,
        tools=tools,
        kernels=tuple(args.kernel),
        pip_locks=_read_pip_locks(args.pip_locks),
    )
    return options, info


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.setup(args.verbose)
    try:
        options, info = options_from_args(args)
        result = pack_prefix(args.prefix, args.out, options=options, info=info)
    except SwstackError as exc:
        log.info(f"error: {exc}")
        return exc.exit_code
    if not args.quiet:
        sys.stdout.write(f"{result.manifest_path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
