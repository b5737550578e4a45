"""recordjson.dumps_indented_sorted writes what json.dumps(indent=True, sort_keys=True) writes.

The integration test ``test_plain_files_skip_the_packer_and_give_the_same_entries`` compares
the package records of a real python + numpy prefix with conda-pack's own; these are the corners.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from swstack.recordjson import ConvertingJson, dumps_indented_sorted

RECORD: dict[str, Any] = {
    "name": "numpy",
    "version": "1.26.4",
    "build_number": 0,
    "depends": ["libblas >=3.9.0,<4.0a0", "python >=3.11,<3.12.0a0"],
    "constrains": [],
    "files": [f"lib/python3.11/site-packages/numpy/m{i}.py" for i in range(50)],
    "paths_data": {
        "paths": [
            {"_path": "bin/f2py", "path_type": "hardlink", "sha256": "ab" * 32, "size_in_bytes": 321,
             "file_mode": "text", "prefix_placeholder": "/opt/conda/placeholder"},
            {"_path": "lib/libx.so", "path_type": "softlink", "size_in_bytes": 0, "no_link": True},
        ],
        "paths_version": 1,
    },
    "link": {"source": "/home/u/.cache/pkgs/numpy", "type": 1},
    "requested_spec": None,
    "timestamp": 1700000000123,
    "size": 7_000_000,
}

CORNERS: list[Any] = [
    RECORD,
    {},
    [],
    {"a": {}, "b": [], "c": [[]], "d": [{}], "e": {"f": {"g": []}}},
    {"ünïcode": "naïve — ☃ \U0001f600", "ctl": "tab\tnew\nline\x00\x1f \"quoted\" back\\slash"},
    {"floats": [0.1, -0.0, 1e100, 1.5e-7, 2.0, 123456789.125, math.inf, -math.inf, math.nan]},
    {"ints": [0, -1, 2**64, -(2**80), True, False, None]},
    {"z": 1, "a": 2, "M": 3, "_": 4, "é": 5, "10": 6, "9": 7},
    ("a", ("tuple", 1)),
    "just a string",
    3.25,
    None,
    [[[[["deep"]]]]],
    # Lists of dicts of plain values (one encoder call): what might pass for the breaks between them.
    [{"a": "}," + "\n  {", "b": 1}, {"c": '},  {"', "d": None}, {"e": "}\n },\n {"}],
    {"p": {"q": [{"z": 1, "a": [2]}, {"y": 2}], "r": [{"x": 1}, {}], "s": [{}, {"x": 1}], "t": [{"x": {}}]}},
    [{3: "int keys", 10: 1, 2.5: None}, {"k": 2}],
]


@pytest.mark.parametrize("value", CORNERS, ids=range(len(CORNERS)))
def test_same_text_as_the_standard_encoder(value: Any) -> None:
    assert dumps_indented_sorted(value) == json.dumps(value, indent=True, sort_keys=True)


def test_what_it_does_not_encode_goes_to_the_standard_encoder() -> None:
    # Non-string keys are converted by json; the fast path leaves them to it.
    mixed: dict[Any, Any] = {1: "one", 2.5: "x", None: "n"}
    assert dumps_indented_sorted({"k": {3: 4}}) == json.dumps({"k": {3: 4}}, indent=True, sort_keys=True)
    with pytest.raises(TypeError):  # unorderable keys: the same error json.dumps gives
        dumps_indented_sorted({**mixed, "s": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps_indented_sorted({"set": {1, 2}})
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps_indented_sorted(cycle)


def test_stands_in_for_the_json_module_only_for_that_call() -> None:
    module = ConvertingJson()
    assert module.loads('{"a": 1}') == {"a": 1}
    assert module.JSONDecodeError is json.JSONDecodeError
    assert module.dumps(RECORD, indent=True, sort_keys=True) == json.dumps(RECORD, indent=True, sort_keys=True)
    assert module.dumps(RECORD) == json.dumps(RECORD)
    assert module.dumps(RECORD, indent=2) == json.dumps(RECORD, indent=2)


def test_a_text_is_parsed_once_and_what_it_gives_stays_as_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    text = json.dumps(RECORD, indent=2)
    module = ConvertingJson()
    first = module.load(io.StringIO(text))
    assert first == json.loads(text)
    parses: list[str] = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, **kw: parses.append(s) or real_loads(s, **kw))
    # What conda-pack does to the record it packs (rewrite_conda_meta) reaches no later load.
    first["size"] = 0
    first["link"]["source"] = ""
    assert module.loads(text) == real_loads(text)
    assert parses == []  # given again: not parsed again
    assert module.loads('{"b": [1]}') == {"b": [1]}  # new: parsed
    assert module.loads("[1, 2]") == [1, 2] and module.loads("[1, 2]") == [1, 2]  # not a dict: parsed each time
    assert module.loads(text, parse_int=str)["size"] == "7000000"  # with options: parsed as asked
