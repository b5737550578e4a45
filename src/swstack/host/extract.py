"""Tarball (zstd, gzip or tar; whole or in verified chunks) -> a checked tree in a fresh staging directory.

Our own checks, not tarfile's ``data`` filter alone: no absolute names, no ``..``,
no symlink resolving outside the tree (checked again over the complete set of
links at the end, since a later link can change where an earlier one leads), no
write through a symlink, hardlinks only to regular files already extracted, no
devices, fifos, setuid or setgid bits. Writes never follow symlinks.

Threads share the work: a reader reads the tarball (the whole file, or the chunks
of a chunked tarball that must be read), hashes each verified range while it reads,
and decompresses (zstandard and hashlib release the GIL); the caller's thread parses
the headers (``tarstream``), checks each member and writes it to disk, or, with no live
version to share files with, queues the disk writes for a thread of their own; another
writes the ramdisk copy in the same order (``_InOrder``, each; a replayed chunk's links
the caller makes itself). Memory stays flat in the tarball's size: bounded queues of
decompressed blocks sit between them, and of calls (``_IN_FLIGHT`` bytes a writer, each
call counted at ``_CALL`` more than it writes). A chunk whose members the live version
already holds is not read at all: its members are replayed from the live version's
record (``chunks``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from .. import log
from ..errors import ActivateError
from ..manifest import IN_TREE_PATH
from . import faults
from .chunks import Entry, Segment
from .reuse import NO_LINK, Previous, link_if_possible, same_inode_data
from .tarstream import BLOCK, BrokenTar, Member, is_end, next_member, padded
from .verify import Expected

_CHUNK = 1 << 20  # compressed bytes per read
_BLOCK = 1 << 20  # decompressed bytes per queue item
_DEPTH = 4  # queue items in flight: memory stays at a few blocks
# Files up to this size are compared or hashed whole before they are linked or written;
# larger ones stream to disk and are swapped for a link when they turn out to be shared.
_BUFFER = 8 << 20
# Bytes a tree's writer thread may have queued: the parsing thread waits less with 16 MiB
# than with 4 (on the real py3 tree, with the disk writer's thread, 2.23 s against 2.67 s
# for a first activation), at about 25 MiB more peak RSS; memory stays bounded all the same.
_IN_FLIGHT = 16 << 20
# What a queued call holds beyond the bytes it writes, charged against that budget too: its
# arguments, and the tar headers and padding its views keep alive in the decompressed blocks.
# Without it a tree of tiny files or directories queued every member behind a slow disk
# (100,000 one-byte files: 215 MiB of RSS against 70); with it about 4,000 calls wait at most.
_CALL = 4 << 10
# Errors of the host, not of the archive: the same tarball extracts where they do not occur
# (a member the file system cannot hold, a name too long say, is the archive's).
_HOST_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LINK_DEPTH = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A member claiming more than the manifest's whole tree (and more than this floor, for
# manifests that under-report) is refused before its claimed data is read.
_MIN_MEMBER_LIMIT = 1 << 30
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeMember(ActivateError):
    """A member would write outside the tree or create something a software tree never needs."""


class _ReadFailed(Exception):
    """The reader thread could not decompress (or read) the tarball; ``cause`` says why."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class MemberLike(Protocol):
    """What the checks read of a member: ``tarstream.Member``, or tarfile's TarInfo."""

    name: str
    type: bytes
    mode: int
    size: int
    linkname: str

    def isreg(self) -> bool: ...
    def isdir(self) -> bool: ...
    def issym(self) -> bool: ...
    def islnk(self) -> bool: ...


@dataclass
class _Tree:
    """What has been created so far, keyed by normalised member name."""

    dirs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mode, mtime)
    files: set[str] = field(default_factory=set)
    symlinks: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # regular file -> sha256 of its content
    max_member: int = _MIN_MEMBER_LIMIT
    file_count: int = 0
    total_size: int = 0


@dataclass
class Mirror:
    """A second copy written in the same pass (the ramdisk's ``.partial``), so the tree is read once.

    ``previous`` is the previous version's ramdisk copy: a file linked on disk to the
    previous version is linked to that version's ramdisk file of the same name.
    """

    root: Path
    previous: Path | None = None
    linked: int = 0
    linked_bytes: int = 0


@dataclass(frozen=True)
class Extracted:
    file_count: int
    total_size: int
    in_tree_manifest: str | None
    sha256: str
    hashes: dict[str, str] = field(default_factory=dict)  # regular file -> sha256 (whole-file tarballs)
    chunks: dict[str, list[Entry]] | None = None  # chunk sha256 -> its members (chunked tarballs)
    replayed: int = 0  # chunks not read: their members came from the live version


def check_text(what: str, name: str) -> None:
    """Refuse control characters (newlines, escapes) and bytes that are not UTF-8 in names (pure).

    A newline in a file name forges lines in every log and listing that prints it; a name
    that is not UTF-8 cannot be shown or typed. Software trees hold neither.
    """
    if "\x00" in name:
        raise UnsafeMember(f"{what} {name!r}: NUL in name")
    if _CONTROL.search(name):
        raise UnsafeMember(f"{what} {name!r}: control character in name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeMember(f"{what} {name!r}: name is not valid UTF-8") from None


def normalize_name(name: str) -> str:
    """Member name -> relative POSIX path inside the tree, or raise (pure)."""
    check_text("member", name)
    if name.startswith("/"):
        raise UnsafeMember(f"member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"member {name!r}: '..' in path")
    return "/".join(parts)


def resolves_inside(start_dir: list[str], target: str, symlinks: dict[str, str]) -> bool:
    """Follow ``target`` from ``start_dir`` through the tree's own links; False if it leaves (pure)."""
    return _walk(start_dir, target, symlinks, 0, [])


def _walk(start: list[str], target: str, symlinks: dict[str, str], depth: int, out: list[str]) -> bool:
    if depth > _MAX_LINK_DEPTH:
        return False
    stack = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        candidate = "/".join([*stack, part])
        if candidate in symlinks:
            inner = symlinks[candidate]
            if inner.startswith("/"):
                return False
            sub: list[str] = []
            if not _walk(stack, inner, symlinks, depth + 1, sub):
                return False
            stack = sub
        else:
            stack.append(part)
    out[:] = stack
    return True


_KINDS = {b"3": "character device", b"4": "block device", b"6": "fifo"}


def check_member(member: MemberLike, tree: _Tree) -> str:
    """Validate one member against what is already extracted; return its normalised name (pure)."""
    name = normalize_name(member.name)
    what = f"member {member.name!r}"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()) or member.type == b"S":
        kind = _KINDS.get(member.type, f"type {member.type!r}")
        raise UnsafeMember(f"{what}: {kind}; a software tree holds only files, directories and links")
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise UnsafeMember(f"{what}: setuid/setgid bit set (mode {member.mode:o})")
    parts = name.split("/") if name else []
    for i in range(1, len(parts)):
        ancestor = "/".join(parts[:i])
        if ancestor in tree.symlinks:
            raise UnsafeMember(f"{what}: would write through the symlink {ancestor!r}")
        if ancestor in tree.files:
            raise UnsafeMember(f"{what}: parent {ancestor!r} is a file")
    if name in tree.symlinks or name in tree.files:
        raise UnsafeMember(f"{what}: appears twice (a second member would replace the first)")
    if name in tree.dirs and not member.isdir():
        raise UnsafeMember(f"{what}: replaces a directory")
    if member.issym() or member.islnk():
        check_text(f"{what}: link target", member.linkname)
    if not name and not member.isdir():
        raise UnsafeMember(f"{what}: would replace the root of the tree")
    if member.size < 0 or member.size > tree.max_member:
        raise UnsafeMember(
            f"{what}: claims {member.size} bytes, more than the whole tree the manifest describes"
        )
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            raise UnsafeMember(f"{what}: symlink to the absolute path {target!r}")
        if not resolves_inside(parts[:-1], target, tree.symlinks):
            raise UnsafeMember(f"{what}: symlink {target!r} points outside the tree")
    if member.islnk():
        try:
            source = normalize_name(member.linkname)
        except UnsafeMember:
            source = ""
        if source not in tree.files:
            raise UnsafeMember(f"{what}: hardlink to {member.linkname!r}, which is not a file of this tree")
    return name


# ---------------------------------------------------------------- the reader thread


class _Hashing:
    """Reads ``size`` bytes of ``raw`` from where it stands, hashing them."""

    def __init__(self, raw: BinaryIO, size: int):
        self._raw = raw
        self.left = size
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self._raw.read(n) if n else b""
        self.hash.update(data)
        self.left -= len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self, aborting: threading.Event) -> None:
        while not aborting.is_set() and self.read(_CHUNK):
            pass


def _decompressing(reader: _Hashing, compression: str) -> BinaryIO:
    raw = cast(BinaryIO, reader)
    if compression == "zstd":
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        return cast(BinaryIO, dctx.stream_reader(raw, read_size=_CHUNK, read_across_frames=True))
    if compression == "gzip":
        import gzip

        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    return raw


def _is_decompression_error(exc: BaseException) -> bool:
    import zlib

    if isinstance(exc, (OSError, EOFError, ValueError, zlib.error)):
        return True
    return type(exc).__module__.startswith("zstandard") or "zstd" in type(exc).__name__.lower()


# Queue items: ("data", bytes, compressed bytes so far) | ("end", Segment) | ("replay", Segment)
# | ("done", None) | ("failed", exception to raise: a checksum mismatch or a decompression error).
_Item = tuple[str, object, int]


class _Reader:
    """The reader thread: reads the segments to read in order, hashes and decompresses them."""

    def __init__(self, tarball: Path, segments: list[Segment], compression: str, chunked: bool):
        self.tarball = tarball
        self.segments = segments
        self.compression = compression
        self.chunked = chunked
        self.items: queue.Queue[_Item] = queue.Queue(_DEPTH)
        self.stopping = threading.Event()
        self.aborting = threading.Event()  # an interrupt: not even the hashing is finished
        self.count = 0
        self.final: _Item = ("done", None, 0)
        self._thread = threading.Thread(target=self._run, name="swstack-tar-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with open(self.tarball, "rb", buffering=0) as raw:
                for seg in self.segments:
                    if self.aborting.is_set():
                        break
                    if seg.replay is not None:
                        if not self.stopping.is_set():
                            self.items.put(("replay", seg, self.count))
                        self.count += seg.size
                        continue
                    raw.seek(seg.offset)
                    failure = self._segment(raw, seg)
                    if failure is not None:
                        self._finish(("failed", failure, self.count))
                        return
            self._finish(("done", None, self.count))
        except BaseException as exc:  # an I/O error reading the tarball itself
            self._finish(("failed", exc, self.count))

    def _finish(self, item: _Item) -> None:
        self.final = item
        self.items.put(item)

    def _segment(self, raw: BinaryIO, seg: Segment) -> BaseException | None:
        reader = _Hashing(raw, seg.size)
        broken: BaseException | None = None
        if not self.stopping.is_set():
            stream = _decompressing(reader, self.compression)
            try:
                while not self.stopping.is_set():
                    block = stream.read(_BLOCK)
                    if not block:
                        break
                    self.items.put(("data", block, self.count + seg.size - reader.left))
            except Exception as exc:
                if not _is_decompression_error(exc):
                    raise
                broken = exc
        reader.drain(self.aborting)  # the whole range is hashed, even past a decompression error
        self.count += seg.size
        digest = reader.hash.hexdigest()
        if digest != seg.sha256:
            return self._mismatch(seg, digest)
        if broken is not None:
            return broken
        if not self.stopping.is_set():
            self.items.put(("end", seg, self.count))
        return None

    def _mismatch(self, seg: Segment, digest: str) -> ActivateError:
        if self.chunked:
            return ActivateError(
                f"{self.tarball}: chunk {seg.index} (bytes {seg.offset}-{seg.offset + seg.size}): sha256 "
                f"mismatch (expected {seg.sha256}, got {digest}); the tarball is corrupt: re-download or "
                f"rebuild it"
            )
        return ActivateError(
            f"{self.tarball}: sha256 mismatch (expected {seg.sha256}, got {digest}); "
            f"the tarball is corrupt or truncated: re-download or rebuild it"
        )

    def stop(self, abort: bool = False) -> _Item:
        """Stop decompressing (the remaining ranges are still hashed, unless ``abort``); the final item
        once the thread ends."""
        if abort:
            self.aborting.set()
        self.stopping.set()
        while self._thread.is_alive() or not self.items.empty():
            with contextlib.suppress(queue.Empty):
                self.items.get(timeout=0.05)
        self._thread.join()
        return self.final


class _Feed:
    """Decompressed bytes from the reader, block by block; events between segments stop a read."""

    def __init__(self, reader: _Reader, advance: Callable[[int], None]):
        self._reader = reader
        self._buf = memoryview(b"")
        self._pos = 0
        self._seen = 0
        self._advance = advance
        self.event: _Item | None = None

    def _pull(self) -> bool:
        """The next block into the buffer (True), or an event held in ``event`` (False)."""
        if self.event is not None:
            return False
        item = self._reader.items.get()
        self._advance(item[2] - self._seen)
        self._seen = item[2]
        if item[0] == "data":
            self._buf = memoryview(item[1])  # type: ignore[arg-type]
            self._pos = 0
            return True
        self.event = item
        return False

    def at_boundary(self) -> _Item | None:
        """Between members: None if bytes follow, else the event that comes next (consumed)."""
        while self._pos >= len(self._buf):
            if not self._pull():
                event, self.event = self.event, None
                return event
        return None

    def read(self, n: int) -> bytes | memoryview:
        """Exactly ``n`` bytes of the current segment."""
        start, end = self._pos, self._pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[start:end]
        return b"".join(self.pieces(n))

    def pieces(self, n: int) -> Iterator[memoryview]:
        """``n`` bytes of the current segment as views into the blocks (no copy)."""
        while n:
            if self._pos >= len(self._buf) and not self._pull():
                raise BrokenTar(self._cut_off())
            take = min(n, len(self._buf) - self._pos)
            yield self._buf[self._pos : self._pos + take]
            self._pos += take
            n -= take

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def _cut_off(self) -> str:
        if self.event is not None and self.event[0] == "end" and self._reader.chunked:
            return "a member continues past the end of its chunk (each chunk must hold whole members)"
        return "unexpected end of data"

    def discard_segment(self) -> None:
        """Skip what is left of the current segment's bytes (past the end of the archive)."""
        self._pos = len(self._buf)


# ---------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes | memoryview | list[memoryview]) -> None:
    """All of ``data`` (a write to a regular file returns short only on errors, which then raise);
    a list of pieces in one ``writev``."""
    if isinstance(data, list):
        _writev_all(fd, data)
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writev_all(fd: int, parts: list[memoryview]) -> None:
    while parts:
        done = os.writev(fd, parts)
        while parts and done >= len(parts[0]):
            done -= len(parts[0])
            parts = parts[1:]
        if done:
            parts = [parts[0][done:], *parts[1:]]


def _mtime_ns(mtime: float) -> int:
    return int(mtime) * 1_000_000_000 if float(mtime).is_integer() else int(mtime * 1e9)


class _Always:
    """A call ``_InOrder`` makes even after an earlier one failed: closing a file an earlier call opened."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., object]):
        self.fn = fn

    def __call__(self, *args: object) -> object:
        return self.fn(*args)


class _InOrder:
    """One thread running submitted calls in order (one tree's writes), with bytes in flight bounded.

    Calls travel in batches (a queue hand-over per call would cost as much as the call). The
    first error stops the rest (but for ``cleanup`` calls) and is raised to the submitter at its
    next call or at ``close``.
    """

    _BATCH = 64

    def __init__(self, name: str, budget: int = _IN_FLIGHT):
        self._calls: queue.Queue[tuple[list[tuple[Callable[..., object], tuple[object, ...]]], int] | None] = (
            queue.Queue()
        )
        self._budget = budget
        self._inflight = 0
        self._room = threading.Condition()
        self._batch: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self._batch_size = 0
        self.error: BaseException | None = None
        self.inline = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., object], *args: object, size: int = 0) -> None:
        if self.error is not None:
            raise self.error
        if self.inline:
            fn(*args)
            return
        self._batch.append((fn, args))
        self._batch_size += size + _CALL
        if len(self._batch) >= self._BATCH or self._batch_size >= self._budget // 4:
            self._push()

    def cleanup(self, fn: Callable[..., object], *args: object) -> None:
        """``fn(*args)`` in turn, even after an earlier call failed; never raises that failure here
        (called from a ``finally``, it would replace what is being raised: an interrupt, say)."""
        if self.inline:
            fn(*args)
            return
        self._batch.append((_Always(fn), args))
        self._batch_size += _CALL

    def _push(self) -> None:
        batch, size = self._batch, self._batch_size
        if not batch:
            return
        self._batch, self._batch_size = [], 0
        with self._room:
            while self._inflight and self._inflight + size > self._budget:
                self._room.wait()
            self._inflight += size
        self._calls.put((batch, size))

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            batch, size = item
            for fn, args in batch:
                if self.error is None or isinstance(fn, _Always):
                    try:
                        fn(*args)
                    except BaseException as exc:
                        if self.error is None:
                            self.error = exc
            with self._room:
                self._inflight -= size
                self._room.notify_all()
            self._calls.task_done()

    def run_inline(self, inline: bool) -> None:
        """From now on run calls on the submitter's thread (after every queued one has run), or queue them again.

        Worth it where the calls are cheap syscalls, as links are: two threads taking turns
        at the interpreter lock for every few microseconds of work spend more on the hand-over
        than on the work (links of a replayed chunk ran at a quarter of their speed).
        """
        if inline and not self.inline:
            self._push()
            self._calls.join()
            if self.error is not None:
                raise self.error
        self.inline = inline

    def close(self) -> None:
        """Wait for every call; raise the first error."""
        self._push()
        self._calls.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


def _create(path: str, mode: int, umask: int) -> int:
    fd = os.open(path, _CREATE, mode)
    if mode & umask:
        os.fchmod(fd, mode)
    return fd


def _write_new(path: str, mode: int, umask: int, ns: int, data: bytes | memoryview | list[memoryview]) -> None:
    fd = _create(path, mode, umask)
    try:
        _write_all(fd, data)
        os.utime(fd, ns=(ns, ns))
    finally:
        os.close(fd)


def _hardlink(source: str, path: str) -> None:
    os.link(source, path, follow_symlinks=False)


def _symlink(path: str, target: str, ns: int) -> None:
    os.symlink(target, path)
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


class _Writer:
    """Creates the members in the staging tree and, on another thread, in the ramdisk copy; links what the
    live version has.

    The disk side decides (write, or link to the live version); the ramdisk side follows in
    the same order, so a directory exists before what goes in it and a link's source before
    the link. Without a live version the disk side's calls run in order on a thread of their
    own as well; every check (``check_member``) still runs here, before the call is queued.
    """

    def __init__(self, dest: Path, tree: _Tree, previous: Previous | None, mirror: Mirror | None, hashing: bool):
        self.dest = str(dest)
        self.tree = tree
        self.previous = previous
        self.mirror = mirror
        self.mroot = str(mirror.root) if mirror is not None else None
        self.bg = _InOrder("swstack-ramdisk-writer") if mirror is not None else None
        # With no live version to share with, the disk side only creates what this thread
        # decided, so it runs on a thread of its own too: this one parses and checks while the
        # kernel creates files (with a live version, what to link is decided by reading the
        # live files, on this thread).
        self.fg = _InOrder("swstack-disk-writer") if previous is None else None
        self.live = str(previous.tree) if previous is not None else ""  # paths as str: no Path per file
        self.live_copy = str(mirror.previous) if mirror is not None and mirror.previous is not None else None
        self.hashing = hashing
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask

    def close(self) -> None:
        if self.fg is not None:
            self.fg.close()
        if self.bg is not None:
            self.bg.close()

    def run_inline(self, inline: bool) -> None:
        """The ramdisk side on this thread (replayed chunks: links only) or on its own (members read)."""
        if self.bg is not None:
            self.bg.run_inline(inline)

    def abandon(self) -> None:
        """Stop the writer threads after a failure (their own errors, if any, are not the one to report)."""
        for writer in (self.fg, self.bg):
            if writer is not None:
                with contextlib.suppress(BaseException):
                    writer.close()

    def _both(self, fn: Callable[..., object], name: str, *args: object, size: int = 0) -> None:
        """``fn(<root>/<name>, *args)`` on disk and on the ramdisk, each in turn."""
        self._disk(fn, f"{self.dest}/{name}", *args, size=size)
        if self.bg is not None:
            self.bg.submit(fn, f"{self.mroot}/{name}", *args, size=size)

    def _disk(self, fn: Callable[..., object], *args: object, size: int = 0) -> None:
        """``fn(*args)`` on the disk tree: now, or in turn on the disk writer's thread."""
        if self.fg is not None:
            self.fg.submit(fn, *args, size=size)
        else:
            fn(*args)

    def _closing(self, disk: _Stream, mirror: _Stream | None, ns: int) -> None:
        """Close a streamed file on both sides, in turn, even after a writer failed (from a ``finally``:
        the writers' errors are raised at their next call, not here)."""
        if mirror is not None and self.bg is not None:
            self.bg.cleanup(mirror.close, ns)
        if self.fg is not None:
            self.fg.cleanup(disk.close, ns)
        else:
            disk.close(ns)

    def ensure_parents(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if not parent or parent in self.tree.dirs:
            return
        parts = name.split("/")
        for i in range(1, len(parts)):
            rel = "/".join(parts[:i])
            if rel not in self.tree.dirs:
                self._both(os.mkdir, rel, 0o755)
                self.tree.dirs[rel] = (0o755, 0)

    def directory(self, name: str, mode: int, mtime: float) -> None:
        if name and name not in self.tree.dirs:
            self.ensure_parents(name)
            self._both(os.mkdir, name, 0o755)
        self.tree.dirs[name] = (mode & 0o777 | 0o700, int(mtime))

    def symlink(self, name: str, target: str, mtime: float) -> None:
        self.ensure_parents(name)
        self._both(_symlink, name, target, _mtime_ns(mtime))
        self.tree.symlinks[name] = target
        self.tree.file_count += 1

    def hardlink(self, name: str, source: str) -> None:
        self.ensure_parents(name)
        self._disk(_hardlink, f"{self.dest}/{source}", f"{self.dest}/{name}")
        if self.bg is not None:
            self.bg.submit(_hardlink, f"{self.mroot}/{source}", f"{self.mroot}/{name}")
        self.tree.files.add(name)
        if source in self.tree.hashes:
            self.tree.hashes[name] = self.tree.hashes[source]
        self.tree.file_count += 1

    def _added(self, name: str, size: int, digest: str | None) -> None:
        self.tree.files.add(name)
        if digest is not None:
            self.tree.hashes[name] = digest
        self.tree.file_count += 1
        self.tree.total_size += size

    def regular(self, name: str, mode: int, mtime: float, size: int, feed: _Feed) -> None:
        """Write one regular member (or link it to the live version's identical file)."""
        self.ensure_parents(name)
        mode &= 0o777
        ns = _mtime_ns(mtime)
        if size <= _BUFFER and self.previous is None:
            parts = list(feed.pieces(size))
            feed.skip(padded(size) - size)
            self._new(name, mode, ns, size, parts)
        elif size <= _BUFFER:
            data = feed.read(size)
            feed.skip(padded(size) - size)
            self._small(name, mode, ns, data)
        else:
            self._large(name, mode, ns, size, feed)
            feed.skip(padded(size) - size)

    def _new(self, name: str, mode: int, ns: int, size: int, parts: list[memoryview]) -> None:
        """A file no live version can lend, written from views into the decompressed blocks as they
        come: a file across two blocks is not joined first (a copy of every byte on the main thread)."""
        digest = None
        if self.hashing:
            h = hashlib.sha256()
            for part in parts:
                h.update(part)
            digest = h.hexdigest()
        self._both(_write_new, name, mode, self.umask, ns, parts, size=size)
        self._added(name, size, digest)

    def _small(self, name: str, mode: int, ns: int, data: bytes | memoryview) -> None:
        path = f"{self.dest}/{name}"
        digest = None
        if self.previous is not None:
            same = self.previous.link_same(name, data, mode, path)
            if same is not None:  # the same name with the same bytes: no hashing needed
                digest = same or (hashlib.sha256(data).hexdigest() if self.hashing else None)
                self._mirror_shared(name, name, data)
                self._added(name, len(data), digest)
                return
        if self.hashing:
            digest = hashlib.sha256(data).hexdigest()
            linked = self.previous.link(digest, mode, len(data), Path(path)) if self.previous else None
            if linked is not None:  # a shared inode: never chmod-ed or touched
                self._mirror_shared(name, linked, data)
                self._added(name, len(data), digest)
                return
        self._both(_write_new, name, mode, self.umask, ns, data, size=len(data))
        self._added(name, len(data), digest)

    def _large(self, name: str, mode: int, ns: int, size: int, feed: _Feed) -> None:
        path = f"{self.dest}/{name}"
        h = hashlib.sha256() if self.hashing else None
        live = self.previous.same_name(name, mode, size) if self.previous is not None else None
        mirror = _Stream(f"{self.mroot}/{name}", mode, self.umask) if self.bg is not None else None
        if mirror is not None and self.bg is not None:
            self.bg.submit(mirror.open)
        disk = _Stream(path, mode, self.umask)
        self._disk(disk.open)
        try:
            for piece in feed.pieces(size):
                if h is not None:
                    h.update(piece)
                if live is not None and live.read(len(piece)) != piece:
                    live.close()
                    live = None
                self._disk(disk.write, piece, size=len(piece))
                if mirror is not None and self.bg is not None:
                    self.bg.submit(mirror.write, piece, size=len(piece))
        finally:
            self._closing(disk, mirror, ns)
        digest = h.hexdigest() if h is not None else None
        linked: str | None = None
        if self.previous is not None:
            shared = Path(f"{self.dest}/{os.path.dirname(name)}/.{os.path.basename(name)}.shared")
            if live is not None:
                live.close()
                if link_if_possible(self.previous.tree / name, shared):
                    self.previous.count(size)
                    linked = name
                    digest = digest or self.previous.files.get(name)
            elif digest is not None:
                linked = self.previous.link(digest, mode, size, shared)
            if linked is not None:
                os.replace(shared, path)
                if self.bg is not None:
                    self.bg.submit(os.unlink, f"{self.mroot}/{name}")
                    self._mirror_shared(name, linked, None)
        self._added(name, size, digest)

    def _mirror_shared(self, name: str, linked_to: str, data: bytes | memoryview | None) -> None:
        """The ramdisk copy of a file linked on disk (in turn, on the ramdisk writer's thread)."""
        if self.bg is not None:
            self.bg.submit(self._shared_copy, name, linked_to, data, size=len(data) if data is not None else 0)

    def _shared_copy(self, name: str, linked_to: str, data: bytes | memoryview | None) -> None:
        """A link to the live version's ramdisk file when it has the disk file's attributes, else a copy."""
        disk = f"{self.dest}/{name}"
        st = os.lstat(disk)
        if not self._link_live_copy(name, linked_to, st):
            self._copy_disk_file(name, st, data)

    def _link_live_copy(self, name: str, linked_to: str, st: os.stat_result) -> bool:
        """Link the live ramdisk copy's ``linked_to`` in as ``name`` if it has the disk file's type,
        size, mode, mtime and owner.

        Compared by attributes, as rsync compares, not by bytes: any write through the file
        system moves its mtime, so a copy changed after it was written does not lend its inode
        to the new version. A change with its mtime set back (only a deliberate one) is found
        by ``restore`` and ``active --verify``, which compare sha256s; reading every shared byte
        here would make an update cost as much as the tree's size (0.66 s instead of 0.3 s for
        the benchmark's 256 MiB tree).
        """
        assert self.mirror is not None
        if self.live_copy is None:
            return False
        source = f"{self.live_copy}/{linked_to}"
        try:
            live = os.lstat(source)
        except OSError:
            return False
        if not same_inode_data(live, st):
            log.warn(
                f"{source}: differs from the verified file (size, mode, mtime or owner); not shared, written again"
            )
            return False
        if not link_if_possible(source, f"{self.mroot}/{name}"):
            return False
        self.mirror.linked += 1
        self.mirror.linked_bytes += st.st_size
        return True

    def _copy_disk_file(self, name: str, st: os.stat_result, data: bytes | memoryview | None) -> None:
        """The ramdisk copy of a disk file, with its attributes: from ``data``, or read from the disk file."""
        disk = f"{self.dest}/{name}"
        fd = _create(f"{self.mroot}/{name}", stat.S_IMODE(st.st_mode), self.umask)
        try:
            if data is None:
                with open(disk, "rb", buffering=0) as fh:
                    while piece := fh.read(_CHUNK):
                        _write_all(fd, piece)
            else:
                _write_all(fd, data)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)

    def replayed_file(self, name: str, size: int) -> None:
        """A file of a chunk not read: links to the live version's file and to its ramdisk copy.

        ``chunks.plan`` checked both are as recorded; where a link is impossible the file is copied.
        """
        assert self.previous is not None
        self.ensure_parents(name)
        path = f"{self.dest}/{name}"
        source = f"{self.live}/{name}"
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
            self._copy_live(name, source, size)
            return
        self.previous.count(size)
        self._added(name, size, None)
        if self.bg is not None:
            self.bg.submit(self._replayed_copy, name, size)

    def _replayed_copy(self, name: str, size: int) -> None:
        """The ramdisk side of a replayed file: a link to the live copy's file, else a copy of the disk file.

        ``chunks.plan`` found that file with the disk file's attributes when it chose to
        replay the chunk, moments ago and under the host lock; comparing again here would
        only narrow a window that stays open as long as the inode is shared, at two more
        lstats per file (a tenth of the benchmark's update).
        """
        assert self.mirror is not None
        if self.live_copy is not None and link_if_possible(f"{self.live_copy}/{name}", f"{self.mroot}/{name}"):
            self.mirror.linked += 1
            self.mirror.linked_bytes += size
            return
        self._copy_disk_file(name, os.lstat(f"{self.dest}/{name}"), None)

    def _copy_live(self, name: str, source: str, size: int) -> None:
        try:
            st = os.lstat(source)
            with open(source, "rb", buffering=0) as fh:
                data = fh.read(size + 1)
        except FileNotFoundError:
            data = b""
        if len(data) != size:
            raise ActivateError(
                f"{source}: changed while the next version was extracted; nothing live changed, run again"
            )
        self._both(_write_new, name, stat.S_IMODE(st.st_mode), self.umask, st.st_mtime_ns, data, size=size)
        self._added(name, size, None)


class _Stream:
    """A file filled piece by piece (a member too large to hold whole), on a writer's thread or this one."""

    def __init__(self, path: str, mode: int, umask: int):
        self.path, self.mode, self.umask = path, mode, umask
        self.fd = -1

    def open(self) -> None:
        self.fd = _create(self.path, self.mode, self.umask)

    def write(self, piece: memoryview) -> None:
        _write_all(self.fd, piece)

    def close(self, ns: int) -> None:
        if self.fd >= 0:
            try:
                os.utime(self.fd, ns=(ns, ns))
            finally:
                os.close(self.fd)
                self.fd = -1


# ---------------------------------------------------------------- the extraction


def _final_link_check(tree: _Tree) -> None:
    for name, target in tree.symlinks.items():
        if not resolves_inside(name.split("/")[:-1], target, tree.symlinks):
            raise UnsafeMember(
                f"member {name!r}: symlink {target!r} points outside the tree "
                f"(through other links of the archive)"
            )


def _finish_dirs(dest: Path, tree: _Tree) -> None:
    # Deepest first so setting a parent's mtime is not undone by touching a child.
    for name in sorted(tree.dirs, key=lambda n: n.count("/"), reverse=True):
        mode, mtime = tree.dirs[name]
        path = dest / name if name else dest
        os.chmod(path, mode)
        if mtime:
            os.utime(path, (mtime, mtime))


def compression_of(tarball: Path) -> str:
    with open(tarball, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "none"


def _nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _BUFFER or st.f_favail == 0


class _Extraction:
    """One pass over the tarball: members read from the feed or replayed, checked, then written."""

    def __init__(self, writer: _Writer, feed: _Feed, chunked: bool):
        self.w = writer
        self.tree = writer.tree
        self.feed = feed
        self.chunked = chunked
        self.global_pax: dict[str, str] = {}
        self.ended = False
        self.current: list[Entry] = []
        self.chunks: dict[str, list[Entry]] = {}
        self.replayed = 0

    def run(self) -> None:
        while True:
            event = self.feed.at_boundary()
            if event is None:
                if self.ended:
                    self.feed.discard_segment()
                    continue
                self._member()
                continue
            kind, payload, _ = event
            if kind == "end":
                assert isinstance(payload, Segment)
                self.chunks[payload.sha256] = self.current
                self.current = []
            elif kind == "replay":
                assert isinstance(payload, Segment) and payload.replay is not None
                if not self.ended:
                    self.w.run_inline(True)
                    self._replay(payload.replay)
                self.chunks[payload.sha256] = list(payload.replay)
                self.replayed += 1
            elif kind == "done":
                return
            else:
                assert isinstance(payload, BaseException)
                raise payload if isinstance(payload, ActivateError) else _ReadFailed(payload)

    def _member(self) -> None:
        self.w.run_inline(False)
        first = self.feed.read(BLOCK)
        if is_end(first):
            self.ended = True
            return
        member = next_member(first, self.feed.read, self.global_pax)
        if self.chunked and self.global_pax:
            raise BrokenTar("a PAX global header in a chunked tarball (each chunk must stand alone)")
        name = check_member(member, self.tree)
        if member.isdir():
            self.w.directory(name, member.mode, member.mtime)
            self.current.append(["d", name, member.mode & 0o777, member.mtime])
        elif member.issym():
            self.w.symlink(name, member.linkname, member.mtime)
            self.current.append(["l", name, member.linkname, member.mtime])
        elif member.islnk():
            source = normalize_name(member.linkname)
            self.w.hardlink(name, source)
            self.current.append(["h", name, source])
        else:
            self.w.regular(name, member.mode, member.mtime, member.size, self.feed)
            self.current.append(["f", name, member.mode & 0o777, member.mtime, member.size])
        if self.tree.file_count == 3:  # mid-way: some files written, most not
            faults.hit("extracting")

    def _replay(self, entries: tuple[Entry, ...]) -> None:
        """Members of a chunk not read, as the live version's record lists them, under the same checks."""
        for entry in entries:
            kind, name = entry[0], str(entry[1])
            if kind == "d":
                mode, mtime = int(entry[2]), float(entry[3])  # type: ignore[call-overload,arg-type]
                check_member(Member(name, b"5", mode, mtime, 0), self.tree)
                self.w.directory(name, mode, mtime)
            elif kind == "l":
                target = str(entry[2])
                check_member(Member(name, b"2", 0o777, 0, 0, target), self.tree)
                self.w.symlink(name, target, float(entry[3]))  # type: ignore[arg-type]
            elif kind == "h":
                check_member(Member(name, b"1", 0, 0, 0, str(entry[2])), self.tree)
                self.w.hardlink(name, str(entry[2]))
            else:
                mode, size = int(entry[2]), int(entry[4])  # type: ignore[call-overload]
                check_member(Member(name, b"0", mode, 0, size), self.tree)
                self.w.replayed_file(name, size)


def extract(
    tarball: Path,
    dest: Path,
    expected: Expected,
    previous: Previous | None = None,
    mirror: Mirror | None = None,
    segments: list[Segment] | None = None,
    prune: str = "`swstack prune --keep N`",
) -> Extracted:
    """Extract ``tarball`` into the empty directory ``dest``; every byte read is verified before returning.

    Without ``segments`` the whole file is read and its sha256 compared with ``expected``;
    with them (a chunked tarball, ``chunks.plan``), each chunk read is compared with its
    own sha256 and a chunk marked ``replay`` is not read: its members are linked from
    ``previous``. With ``previous``, a file whose content and mode the live tree already
    has is hardlinked to it instead of written. With ``mirror``, the same tree is written
    into ``mirror.root`` too (the ramdisk), in the same pass. ``prune``: the command a full disk's
    message names (with the host's ``--root``).
    """
    tree = _Tree(max_member=max(expected.tree_size or 0, _MIN_MEMBER_LIMIT))
    size = tarball.stat().st_size
    chunked = segments is not None
    plan = segments if segments is not None else [Segment(0, 0, size, expected.sha256)]
    reader = _Reader(tarball, plan, compression_of(tarball), chunked)
    writer = _Writer(dest, tree, previous, mirror, hashing=not chunked)
    failure: BaseException | None = None
    read_failed = False
    with log.progress(f"extracting {tarball.name}", size, "B") as bar:
        feed = _Feed(reader, bar.advance)
        job = _Extraction(writer, feed, chunked)
        reader.start()
        try:
            job.run()
            writer.close()
            _final_link_check(tree)
        except ActivateError as exc:
            failure = exc
        except _ReadFailed as exc:
            failure = exc.cause
            read_failed = True
        except (BrokenTar, OSError) as exc:
            failure = exc
        except BaseException:
            writer.abandon()
            reader.stop(abort=True)
            raise
        if failure is not None:
            writer.abandon()
            final = reader.stop()
            if final[0] == "failed" and isinstance(final[1], ActivateError):
                failure = final[1]  # a corrupt tarball explains whatever went wrong reading it
    if isinstance(failure, ActivateError):
        raise failure
    if isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT):
        if mirror is not None and _nearly_full(mirror.root):
            raise ActivateError(
                f"loading {tarball.name} onto the ramdisk {mirror.root.parent} failed: {failure.strerror}; "
                f"nothing live changed; free ramdisk space or grow it"
            ) from failure
        raise ActivateError(
            f"extracting {tarball.name} into {dest.parent} failed: {failure.strerror}; "
            f"nothing live changed; free disk space ({prune})"
        ) from failure
    if isinstance(failure, OSError) and (read_failed or failure.errno in _HOST_ERRORS):
        doing = f"reading {tarball}" if read_failed else f"extracting {tarball.name}"
        raise ActivateError(
            f"{doing} failed: {failure}; nothing live changed; the host's file system refused it, "
            f"not the artifact: fix that and run again"
        ) from failure
    if failure is not None:
        matches = "every chunk read matches its sha256" if chunked else "its sha256 matches"
        raise ActivateError(
            f"{tarball}: cannot be unpacked ({type(failure).__name__}: {failure}); "
            f"{matches}, so it was packed broken: rebuild it"
        ) from failure
    _finish_dirs(dest, tree)
    if mirror is not None:
        _finish_dirs(mirror.root, tree)
    manifest_text = None
    if IN_TREE_PATH in tree.files:
        manifest_text = (dest / IN_TREE_PATH).read_text()
    return Extracted(
        tree.file_count,
        tree.total_size,
        manifest_text,
        expected.sha256,
        tree.hashes if not chunked else {},
        job.chunks if chunked else None,
        job.replayed,
    )

