"""Decompressed tar bytes -> members, with PAX records and GNU long names applied as tarfile applies them.

Our own header parser instead of tarfile's per-member machinery (a TarInfo, several
method calls and a copy of every block per member): one 512-byte header is checked
(checksum, numbers) and turned into a ``Member`` here; the data that follows is the
caller's to read. What it honours, the safety checks need to see: PAX ``path``,
``linkpath``, ``size`` and ``mtime`` (local and global headers), GNU long names and
long link targets, ustar prefixes and the old V7 form of a directory. A header that
tarfile would refuse (bad checksum, a number that is not octal or base-256, an
extended header at the end) raises ``BrokenTar``. Sparse members keep their type
(``S``) so the caller refuses them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512
REGULAR_TYPES = frozenset({b"0", b"\0", b"7"})  # regular, old regular, contiguous (tarfile: isreg)
DIRTYPE, SYMTYPE, LNKTYPE = b"5", b"2", b"1"
_PAX_LOCAL = frozenset({b"x", b"X"})  # X: Solaris' name for the same header
_PAX_GLOBAL = b"g"
_GNU_LONGNAME, _GNU_LONGLINK, _GNU_SPARSE = b"L", b"K", b"S"
_GNU_TYPES = frozenset({_GNU_LONGNAME, _GNU_LONGLINK, _GNU_SPARSE})
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_ZERO_BLOCK = bytes(BLOCK)
# A long name or PAX header is read whole: more than this is no software tree's.
_MAX_EXTENDED = 1 << 20


class BrokenTar(Exception):
    """The bytes are not a well-formed tar stream (a packing error or corruption)."""


@dataclass(slots=True)
class Member:
    """One archive member as the safety checks and the writer see it (the attributes tarfile.TarInfo has)."""

    name: str
    type: bytes
    mode: int
    mtime: float
    size: int  # bytes of data that follow the header (regular files only)
    linkname: str = ""

    def isreg(self) -> bool:
        return self.type in REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE


def padded(size: int) -> int:
    """Bytes a member's data occupies in the stream, padded to whole blocks."""
    return -(-size // BLOCK) * BLOCK


def is_end(block: bytes | memoryview) -> bool:
    """An all-zero header block: the end of the archive (tarfile stops at the first one)."""
    return bytes(block) == _ZERO_BLOCK


def _text(raw: bytes | memoryview) -> str:
    """A NUL-terminated field as tarfile decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    raw = bytes(raw)
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")


def _number(field: bytes | memoryview) -> int:
    """An octal or GNU base-256 number field (tarfile's ``nti``)."""
    field = bytes(field)
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    end = field.find(b"\0")
    digits = (field if end < 0 else field[:end]).strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise BrokenTar(f"invalid number {digits!r} in a tar header") from None


def _checksum_ok(block: bytes | memoryview) -> bool:
    stored = _number(block[148:156])
    unsigned = 256 + sum(block) - sum(block[148:156])
    if stored == unsigned:
        return True
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    return bool(stored == signed)


@dataclass(frozen=True, slots=True)
class _Header:
    name: str
    type: bytes
    mode: int
    mtime: int
    size: int
    linkname: str


def _header(view: bytes | memoryview) -> _Header:
    block = bytes(view)
    if not _checksum_ok(block):
        raise BrokenTar("bad checksum in a tar header")
    kind = bytes(block[156:157])
    name = _text(block[0:100])
    if kind == b"\0" and name.endswith("/"):  # the V7 form of a directory
        kind = DIRTYPE
    if kind == DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix and kind not in _GNU_TYPES:
        name = prefix + "/" + name
    return _Header(
        name, kind, _number(block[100:108]), _number(block[136:148]), _number(block[124:136]),
        _text(block[157:257]),
    )  # fmt: skip


def _pax_value(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def parse_pax(data: bytes) -> dict[str, str]:
    """``<length> <key>=<value>\\n`` records -> key -> value (tarfile's reading, stricter on lengths)."""
    out: dict[str, str] = {}
    pos = 0
    while (m := _PAX_RECORD.match(data, pos)) is not None:
        length = int(m.group(1))
        end = m.start(1) + length
        if length == 0 or end > len(data) or end <= m.end():
            raise BrokenTar("invalid PAX record length")
        out[_pax_value(m.group(2))] = _pax_value(data[m.end() : end - 1])
        pos = end
    return out


def _pax_number(headers: dict[str, str], key: str, default: float) -> float:
    if key not in headers:
        return default
    try:
        return float(headers[key]) if key == "mtime" else int(headers[key])
    except ValueError:
        raise BrokenTar(f"PAX {key} {headers[key]!r} is not a number") from None


def next_member(
    first: bytes | memoryview, read: Callable[[int], bytes | memoryview], global_pax: dict[str, str]
) -> Member:
    """The member whose header chain starts with the non-zero block ``first``; ``read(n)`` gives the next n bytes.

    Extended headers (PAX, GNU long names) before the member are consumed; the member's
    own data is not. ``global_pax`` collects PAX global headers across calls.
    """
    local: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    block = first
    while True:
        h = _header(block)
        if h.type in _PAX_LOCAL or h.type == _PAX_GLOBAL or h.type in (_GNU_LONGNAME, _GNU_LONGLINK):
            if not 0 <= h.size <= _MAX_EXTENDED:
                raise BrokenTar(f"an extended header of {h.size} bytes")
            data = bytes(read(padded(h.size)))[: h.size]
            if h.type in _PAX_LOCAL:
                local.update(parse_pax(data))
            elif h.type == _PAX_GLOBAL:
                global_pax.update(parse_pax(data))
            elif h.type == _GNU_LONGNAME:
                long_name = _text(data)
            else:
                long_link = _text(data)
            block = read(BLOCK)
            if is_end(block):
                raise BrokenTar("the archive ends after an extended header")
            continue
        break
    name, linkname, kind = h.name, h.linkname, h.type
    size: float = h.size
    mtime: float = h.mtime
    for headers in (global_pax, None, local):
        if headers is None:  # GNU long names sit between the global and the local PAX records
            name = long_name if long_name is not None else name
            linkname = long_link if long_link is not None else linkname
            continue
        if "path" in headers:
            name = headers["path"].rstrip("/")
        if "linkpath" in headers:
            linkname = headers["linkpath"]
        size = _pax_number(headers, "size", size)
        mtime = _pax_number(headers, "mtime", mtime)
        if any(k.startswith("GNU.sparse.") for k in headers):
            kind = _GNU_SPARSE
    if kind == DIRTYPE:
        name = name.rstrip("/")
    return Member(name, kind, h.mode, mtime, int(size), linkname)
