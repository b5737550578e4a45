"""TOML text -> the line on which a key path is defined, so errors can point at it.

The standard TOML parsers return plain dicts without positions. This scans the source
once, following table headers (``[a.b]``, ``[[a.b]]``), dotted keys and one-line inline
tables, and records the first line of every key path it sees. It only serves error
messages: when a path is not found the nearest enclosing path's line is used.

``decode_utf8`` is the one rule for the text of an input file (stack, site and host files, TOML
or JSON): UTF-8 without a byte-order mark, else one line naming the file, the line and the byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def decode_utf8(raw: bytes, where: str, what: str, error: type[Exception]) -> str:
    """The text of an input file (TOML, or JSON on the host) that must be UTF-8 without a
    byte-order mark; else ``error`` with one line naming ``where``:line, the byte and the fix."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise error(f"{where}:1: starts with a byte-order mark, which TOML and JSON do not allow; "
                    f"save {what} as UTF-8 without it")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save {what} as UTF-8") from None


KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"({_KEY})\s*=")


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(rf"{_BARE}|{_QUOTED}", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


@dataclass(frozen=True)
class _Statement:
    """One line that defines keys: a table header (``key`` empty) or an assignment in ``table``."""

    number: int
    table: KeyPath  # the table in force after this line (an array table's with its index)
    key: KeyPath = ()  # an assignment's dotted key, relative to ``table``
    array: KeyPath | None = None  # ``[[a.b]]``: ('a', 'b')
    value: str = ""

    @property
    def path(self) -> KeyPath:
        """The key path this line defines: the header's table, or the assignment's full key."""
        return (*self.table, *self.key)


def _statements(source: str) -> Iterator[_Statement]:
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for number, raw in enumerate(source.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            # A header under an array of tables ([kernels.env] after [[kernels]]) is in its last element.
            path = _in_arrays(tuple(_split_dotted(header.group(2))), array_counts)
            if header.group(1) == "[[":
                index = array_counts.get(path, -1) + 1
                array_counts[path] = index
                table = (*path, index)
                yield _Statement(number, table, array=path)
            else:
                table = path
                yield _Statement(number, table)
            continue
        assign = _ASSIGN.match(raw)
        if assign and not raw.lstrip().startswith("#"):
            yield _Statement(number, table, tuple(_split_dotted(assign.group(1))), value=assign.group(2))


def _in_arrays(path: KeyPath, array_counts: dict[KeyPath, int]) -> KeyPath:
    """``('kernels', 'env')`` -> ``('kernels', 0, 'env')`` when ``[[kernels]]`` came before: a header
    below an array of tables names a table in its last element (the header's last part stays as is)."""
    indexed: KeyPath = ()
    for depth, part in enumerate(path, start=1):
        indexed = (*indexed, part)
        if depth < len(path) and indexed in array_counts:
            indexed = (*indexed, array_counts[indexed])
    return indexed


def decode_error_at(exc: Exception) -> tuple[int | None, str]:
    """tomllib's error -> (its line, or None; its reason without the "(at line N, column M)" it ends with)."""
    match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    return (int(match.group(1)) if match else None), re.sub(r"\s*\(at line.*\)", "", str(exc))


def index_lines(source: str) -> dict[KeyPath, int]:
    """Map every key path found in ``source`` to its 1-based line number (its first definition)."""
    lines: dict[KeyPath, int] = {}
    for stmt in _statements(source):
        if not stmt.key:  # a header; [a.b.c] defines the tables a and a.b too, where no line did before
            for depth in range(1, len(stmt.table) + 1):
                lines.setdefault(stmt.table[:depth], stmt.number)
            if stmt.array is not None:
                lines.setdefault(stmt.array, stmt.number)
            continue
        key = stmt.path
        for depth in range(len(stmt.table) + 1, len(key) + 1):
            lines.setdefault(key[:depth], stmt.number)
        if stmt.value.startswith("{"):
            for inner in _INLINE_KEY.findall(stmt.value):
                inner_key = inner[1:-1] if inner[:1] in "\"'" else inner
                lines.setdefault((*key, inner_key), stmt.number)
    return lines


def path_defined_at(source: str, line: int) -> KeyPath | None:
    """The key path the header or assignment on ``line`` defines, or None when it defines none."""
    return next((stmt.path for stmt in _statements(source) if stmt.number == line), None)


def dotted(path: Sequence[str | int]) -> str:
    """A key path as a user writes it: ``variants.dev.dependencies``, ``pip[0].url``."""
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")


def line_of(index: dict[KeyPath, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, or of its nearest enclosing path that has one."""
    probe = tuple(path)
    while probe:
        if probe in index:
            return index[probe]
        probe = probe[:-1]
    return None
