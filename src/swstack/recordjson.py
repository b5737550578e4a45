"""``json.dumps(obj, indent=True, sort_keys=True)``: the same text, with less pure Python.

conda-pack cleans every package record (``conda-meta/*.json``) it packs and writes it back
with exactly that call. With an indent the standard library encodes in pure Python, one
generator step per value: on a py3 prefix (110 records listing 24,600 files with their
sha256s) 0.12 s of the scan's 0.43 s, on a core the compressors want. Here each container
of plain values (a file's entry in ``paths_data``, the ``files`` list: most of a record) is
encoded by the standard library's C encoder, whose item separator carries the newline and
that depth's indent; only the containers around them are laid out in Python. A list of
such dicts (``paths_data.paths``, one per file) is one call, the breaks between its dicts
put in after. 0.055 s for the same records (one at a time: 0.105 s). Anything else (a key
that is not a string, a type JSON does not have, a cycle) goes to ``json.dumps`` itself,
so the text, or the error, is always json's.

``ConvertingJson`` stands in for the ``json`` module inside conda-pack during a pack
(``pack._scan_prefix``). ``tests/unit/test_recordjson.py`` compares it with ``json.dumps``
on the corners; ``tests/integration/test_pack.py`` compares the records of a real prefix
with conda-pack's own.
"""

from __future__ import annotations

import functools
import json
from typing import Any

_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Unknown(Exception):
    """A value the fast path does not encode (then ``json.dumps`` does)."""


@functools.lru_cache(maxsize=64)
def _flat_encoder(newline: str) -> json.JSONEncoder:
    """The standard (C) encoder laying out one container of scalars at this depth: with
    ``indent`` None it runs in C, and the item separator carries the newline and indent."""
    return json.JSONEncoder(sort_keys=True, separators=("," + newline, ": "), check_circular=False)


def _encode(value: Any, newline: str) -> str:
    """``value`` at the depth where ``newline`` (a newline and that depth's indent) starts its lines."""
    if type(value) in _SCALARS:
        return _flat_encoder(newline).encode(value)
    if type(value) not in (dict, list):
        raise _Unknown  # tuples, subclasses, what JSON has not: json.dumps knows what to do
    if not value:
        return "{}" if type(value) is dict else "[]"
    inner = newline + " "
    children = value.values() if type(value) is dict else value
    if _SCALARS.issuperset(map(type, children)):
        text: str = _flat_encoder(inner).encode(value)  # "{" + items + "}": only the outer breaks are missing
        return text[0] + inner + text[1:-1] + newline + text[-1]
    if type(value) is list:
        if all(map(_is_flat_dict, value)):
            return _encode_flat_dicts(value, newline)
        return "[" + inner + ("," + inner).join(_encode(item, inner) for item in value) + newline + "]"
    keys = sorted(value)
    if any(type(key) is not str for key in keys):
        raise _Unknown  # json turns such keys into strings; leave that to it
    items = (_flat_encoder(inner).encode(key) + ": " + _encode(value[key], inner) for key in keys)
    return "{" + inner + ("," + inner).join(items) + newline + "}"


def _is_flat_dict(value: Any) -> bool:
    return type(value) is dict and bool(value) and _SCALARS.issuperset(map(type, value.values()))


def _encode_flat_dicts(value: list[dict[Any, Any]], newline: str) -> str:
    """A list of non-empty dicts of plain values (a record's ``paths_data.paths``: one per
    file) in one call of the C encoder, its separator carrying the dicts' items' indent. Only
    the breaks around the braces are missing, and ``},`` + newline before ``{`` is found
    nowhere else: a string's newline is escaped, and a dict's items start with a key's quote."""
    inner = newline + " "
    items = inner + " "
    text: str = _flat_encoder(items).encode(value)  # "[{" + ... + "}," + items + "{" + ... + "}]"
    between = text[2:-2].replace("}," + items + "{", inner + "}," + inner + "{" + items)
    return "[" + inner + "{" + items + between + inner + "}" + newline + "]"


def dumps_indented_sorted(value: Any) -> str:
    """``json.dumps(value, indent=True, sort_keys=True)``."""
    try:
        return _encode(value, "\n")
    except (_Unknown, TypeError, ValueError, RecursionError):  # json.dumps raises its own for these
        return json.dumps(value, indent=True, sort_keys=True)


class ConvertingJson:
    """The ``json`` module, but for ``dumps(..., indent=True, sort_keys=True)``, which is
    ``dumps_indented_sorted``, and for ``load``/``loads``, which parse a text once: a text
    given again gives a copy of what it gave the first time (conda-pack parses each package
    record twice in its scan, in ``load_environment`` and in ``rewrite_conda_meta``)."""

    def __init__(self) -> None:
        self._parsed: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def dumps(value: Any, **options: Any) -> str:
        if options == {"indent": True, "sort_keys": True}:
            return dumps_indented_sorted(value)
        return json.dumps(value, **options)

    def load(self, fp: Any, **options: Any) -> Any:
        return self.loads(fp.read(), **options)  # what json.load does

    def loads(self, text: Any, **options: Any) -> Any:
        if options or type(text) is not str:
            return json.loads(text, **options)
        found = self._parsed.get(text)
        if found is None:
            found = json.loads(text)
            if type(found) is not dict:
                return found
            self._parsed[text] = found
        # A copy two levels deep: conda-pack blanks fields of the record it packs, and its
        # link's source (rewrite_conda_meta); what it is given next stays as parsed.
        return {k: dict(v) if type(v) is dict else v for k, v in found.items()}
