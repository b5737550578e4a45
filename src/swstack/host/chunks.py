"""A chunked tarball's chunk table + the live version's chunk record -> which chunks to read, which to replay.

A chunked tarball is a concatenation of chunks, each a complete zstd frame holding whole
tar members; ``manifest.tarball.chunks`` lists each one's offset, size and sha256. Every
tree extracted from one records which members each chunk held, in
``sw.<version>/.<tree>.chunks.json`` (written with the tree, a hint: not fsync-ed, and a
missing or torn record means every chunk is read). When the next version of the same
live path comes as a chunked tarball, a chunk whose sha256 that record holds is not read:
its members are replayed, files linked from the live tree, after checking that each of
them is still there as recorded (a regular file of the same mode and size). A chunk that
held a file relocation rewrote is left out of the record, so it is read again.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ActivateError
from .reuse import same_inode_data

RECORD_SCHEMA = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")

# One member of a chunk, as JSON:
#   ["f", name, mode, mtime, size]   regular file     ["d", name, mode, mtime]   directory
#   ["l", name, target, mtime]       symlink          ["h", name, source]        hardlink
Entry = list[object]


class ChunkLike(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class Segment:
    """A byte range of the tarball handled as one unit: the whole file, or one chunk (read or replayed)."""

    index: int
    offset: int
    size: int
    sha256: str
    replay: tuple[Entry, ...] | None = None  # the members to replay instead of reading the range


def check_table(chunks: Sequence[ChunkLike], file_size: int, where: str) -> None:
    """The chunks must cover the file exactly: contiguous from 0, no overlap, nothing outside it (pure)."""
    end = 0
    for i, chunk in enumerate(chunks):
        what = f"{where}: manifest.json tarball.chunks[{i}]"
        if not _SHA256.fullmatch(str(chunk.sha256)):
            raise ActivateError(f"{what}: sha256 {chunk.sha256!r} is not 64 lowercase hex digits")
        if chunk.size <= 0:
            raise ActivateError(f"{what}: size {chunk.size}; a chunk holds at least one byte")
        if chunk.offset < end:
            raise ActivateError(
                f"{what}: starts at byte {chunk.offset}, inside the chunk before it (which ends at {end}); "
                f"the chunk table is broken: rebuild the artifact"
            )
        if chunk.offset > end:
            raise ActivateError(
                f"{what}: starts at byte {chunk.offset}, leaving bytes {end}-{chunk.offset} in no chunk; "
                f"the chunk table must cover the tarball: rebuild the artifact"
            )
        end = chunk.offset + chunk.size
        if end > file_size:
            raise ActivateError(
                f"{what}: ends at byte {end}, past the end of the {file_size}-byte tarball; "
                f"the chunk table is broken: rebuild the artifact"
            )
    if end != file_size:
        raise ActivateError(
            f"{where}: manifest.json tarball.chunks cover {end} of the tarball's {file_size} bytes; "
            f"the chunk table must cover the tarball: rebuild the artifact"
        )


def plan(
    chunks: Sequence[ChunkLike], record: dict[str, list[Entry]], live: Path | None, live_copy: Path | None = None
) -> list[Segment]:
    """Each chunk in order: replayed when the live tree's record holds it and its files are in place, else read."""
    out = []
    for i, chunk in enumerate(chunks):
        entries = record.get(chunk.sha256) if live is not None else None
        replay = None
        copy = str(live_copy) if live_copy is not None else None
        if entries is not None and live is not None and in_place(entries, str(live), copy):
            replay = tuple(entries)
        out.append(Segment(i, chunk.offset, chunk.size, chunk.sha256, replay))
    return out


def in_place(entries: Iterable[Entry], live: str, live_copy: str | None) -> bool:
    """Every file the chunk held is in the live tree as recorded (a regular file of that mode and size)
    and, when the live version has a ramdisk copy, there too with the same attributes."""
    for entry in entries:
        if entry[0] != "f":
            continue
        try:
            st = os.lstat(f"{live}/{entry[1]}")
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != entry[2] or st.st_size != entry[4]:
                return False
            if live_copy is not None and not same_inode_data(os.lstat(f"{live_copy}/{entry[1]}"), st):
                return False
        except OSError:
            return False
    return True


def without(record: dict[str, list[Entry]], names: Iterable[str]) -> dict[str, list[Entry]]:
    """The record less the chunks that held any of ``names`` (files rewritten after extraction)."""
    drop = set(names)
    return {sha: entries for sha, entries in record.items() if not any(e[1] in drop for e in entries)}


# ---------------------------------------------------------------- the record beside the tree


def record_path(version_dir: Path, tree: str) -> Path:
    return version_dir / f".{tree}.chunks.json"


def write_record(path: Path, record: dict[str, list[Entry]]) -> None:
    """Renamed into place beside the tree; not fsync-ed (a lost or torn record only means chunks are read)."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps({"schema": RECORD_SCHEMA, "chunks": record}, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _valid_entry(e: object) -> bool:
    if not isinstance(e, list) or not e or not all(isinstance(x, str) for x in e[:2]):
        return False
    kind, rest = e[0], e[2:]
    if kind == "f":
        return len(rest) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rest)
    if kind == "d":
        return len(rest) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rest)
    if kind == "l":
        return len(rest) == 2 and isinstance(rest[0], str) and isinstance(rest[1], (int, float))
    return kind == "h" and len(rest) == 1 and isinstance(rest[0], str)


def read_record(path: Path) -> dict[str, list[Entry]]:
    """The live tree's chunk record; empty when missing, torn or of another shape (then every chunk is read)."""
    try:
        data = json.loads(path.read_text())
        chunks = data["chunks"] if data.get("schema") == RECORD_SCHEMA else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    if not isinstance(chunks, dict):
        return {}
    out: dict[str, list[Entry]] = {}
    for sha, entries in chunks.items():
        if not (_SHA256.fullmatch(sha) and isinstance(entries, list) and all(map(_valid_entry, entries))):
            return {}
        out[sha] = entries
    return out
