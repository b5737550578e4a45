"""Deterministic tar: member headers and a streamed PAX writer whose bytes depend on the files alone.

Input: names, kinds, modes, times, owners and contents chosen by the caller. Output: tar
bytes with nothing of the machine, the user or the clock in them beyond what was given:
no owner or group names, numeric ids as given, PAX format, members in the order written,
each directory once. The image layers (``image/writer.py``) and the offline channel's
package repack (``offline_channel/conda_repack.py``) write their tars with it.

``pack.py`` keeps its own writer: it packs whole environments (hundreds of thousands of
files, gigabytes) and builds the common headers directly and copies file bodies in large
chunks into a multithreaded zstd stream, which ``tarfile`` cannot do at that speed; its
headers follow the same rules (see docs/architecture.md).
"""

from __future__ import annotations

import tarfile
from types import TracebackType
from typing import IO, Protocol


def header(
    name: str,
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    mtime: int,
    size: int = 0,
    linkname: str = "",
    uid: int = 0,
    gid: int = 0,
) -> tarfile.TarInfo:
    """A member header with only what is given: no owner names, ``size`` for regular files only."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(mtime)
    info.size = size if kind in tarfile.REGULAR_TYPES else 0
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    return info


def dir_header(name: str, mtime: int, uid: int = 0, gid: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
    return header(name, kind=tarfile.DIRTYPE, mode=mode, mtime=mtime, uid=uid, gid=gid)


def copy_header(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """``member``'s kind, mode, time, ids, size and link under ``name``; its owner names dropped."""
    return header(
        name,
        kind=member.type,
        mode=member.mode,
        mtime=int(member.mtime),
        size=member.size,
        linkname=member.linkname,
        uid=member.uid,
        gid=member.gid,
    )


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class TarStream:
    """A PAX tar written as a stream to ``fileobj`` (which only needs ``write``).

    Members go in the order they are added; a directory added twice is written once, so
    callers can add every file's parents without tracking them.
    """

    def __init__(self, fileobj: Writable) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT  # type: ignore[call-overload]
        )
        self._dirs: set[str] = set()

    def add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        if info.isdir():
            if info.name in self._dirs:
                return
            self._dirs.add(info.name)
        self._tar.addfile(info, data)

    def has_dir(self, name: str) -> bool:
        return name in self._dirs

    def close(self) -> None:
        """The end-of-archive blocks, padded to tar's record size."""
        self._tar.close()

    def __enter__(self) -> TarStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
