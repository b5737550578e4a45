"""TOML text -> the line on which a key path is defined, so errors can point at it.

The standard TOML parsers return plain dicts without positions. This scans the source
once, following table headers (``[a.b]``, ``[[a.b]]``), dotted keys and one-line inline
tables, and records the first line of every key path it sees. It only serves error
messages: when a path is not found the nearest enclosing path's line is used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def index_lines(source: str) -> dict[KeyPath, int]:
    """Map every key path found in ``source`` to its 1-based line number."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for number, raw in enumerate(source.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            path = tuple(_split_dotted(header.group(2)))
            if header.group(1) == "[[":
                index = array_counts.get(path, -1) + 1
                array_counts[path] = index
                table = (*path, index)
                lines.setdefault(path, number)
            else:
                table = path
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(raw)
        if not assign or raw.lstrip().startswith("#"):
            continue
        key = (*table, *_split_dotted(assign.group(1)))
        for depth in range(len(table) + 1, len(key) + 1):
            lines.setdefault(key[:depth], number)
        value = assign.group(2)
        if value.startswith("{"):
            for inner in _INLINE_KEY.findall(value):
                inner_key = inner[1:-1] if inner[:1] in "\"'" else inner
                lines.setdefault((*key, inner_key), number)
    return lines


def line_of(index: dict[KeyPath, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, or of its nearest enclosing path that has one."""
    probe = tuple(path)
    while probe:
        if probe in index:
            return index[probe]
        probe = probe[:-1]
    return None
