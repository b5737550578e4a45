"""The artifact manifest: the stack id rule, the JSON round trip, manifests written before a field existed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from tests.support.host import base_manifest

from swstack.manifest import Manifest, TarballChunk, stack_id
from swstack.pack import _parser, options_from_args


def _manifest(variant: str, default_variant: str | None) -> Manifest:
    base = base_manifest("py3", "2026.11.21", "/data0/sw/py3")
    return replace(base, variant=variant, default_variant=default_variant)


def test_the_default_variant_is_the_bare_stack_whatever_its_name() -> None:
    assert stack_id("py3", "lts", "lts") == "py3"
    assert stack_id("py3", "stable", "lts") == "py3-stable"
    assert stack_id("py3", "default", "default") == "py3"
    assert _manifest("lts", "lts").stack_id == "py3"
    assert _manifest("default", "lts").stack_id == "py3-default"


def test_the_default_variant_survives_the_json_round_trip() -> None:
    text = _manifest("lts", "lts").to_json()
    assert json.loads(text)["default_variant"] == "lts"
    assert Manifest.from_json(text).stack_id == "py3"


def test_a_manifest_without_the_default_variant_keeps_the_id_it_was_built_under() -> None:
    """Artifacts packed before the field existed named "", "default" and "stable" by the bare stack."""
    for variant, expected in (("", "py3"), ("default", "py3"), ("stable", "py3"), ("dev", "py3-dev")):
        data = json.loads(_manifest(variant, None).to_json())
        del data["default_variant"]
        assert Manifest.from_dict(data).stack_id == expected


def test_the_pack_command_records_the_default_variant() -> None:
    argv = ["--prefix", "/data0/sw/py3", "--out", "artifacts", "--stack", "py3", "--source-date-epoch", "0"]
    _, info = options_from_args(_parser().parse_args([*argv, "--variant", "lts", "--default-variant", "lts"]))
    assert (info.variant, info.default_variant) == ("lts", "lts")
    _, info = options_from_args(_parser().parse_args(argv))
    assert (info.variant, info.default_variant) == ("default", "default")


def _with_chunks(chunks: list[dict[str, object]], size: int) -> dict[str, object]:
    base = _manifest("default", "default")
    data: dict[str, object] = json.loads(base.to_json())
    data["tarball"] = {"name": "py3.tar.zst", "sha256": "a" * 64, "size": size, "compression": "zstd",
                       "chunks": chunks}  # fmt: skip
    return data


def test_the_chunk_table_survives_the_json_round_trip() -> None:
    chunks = [{"offset": 0, "size": 10, "sha256": "b" * 64}, {"offset": 10, "size": 5, "sha256": "c" * 64}]
    manifest = Manifest.from_dict(_with_chunks(chunks, 15))
    assert manifest.tarball is not None
    assert manifest.tarball.chunks == (TarballChunk(0, 10, "b" * 64), TarballChunk(10, 5, "c" * 64))
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["tarball"]["chunks"] == chunks


def test_a_manifest_written_before_chunks_has_none() -> None:
    data = _with_chunks([], 15)
    del data["tarball"]["chunks"]  # type: ignore[attr-defined]
    manifest = Manifest.from_dict(data)
    assert manifest.tarball is not None and manifest.tarball.chunks == ()


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ("nope", r"tarball\.chunks: expected a list"),
        (["x"], r"tarball\.chunks\[0\]: expected a JSON object"),
        ([{"offset": 0, "size": 15}], r"tarball\.chunks\[0\]: missing sha256"),
        ([{"offset": 0, "size": "15", "sha256": "b" * 64}], r"tarball\.chunks\[0\]\.size: expected int"),
        ([{"offset": 0, "size": 15, "sha256": 7}], r"tarball\.chunks\[0\]\.sha256: expected str"),
        ([{"offset": 0, "size": 15, "sha256": "B" * 64}], r"tarball\.chunks\[0\]\.sha256: expected 64"),
        ([{"offset": 1, "size": 15, "sha256": "b" * 64}], r"tarball\.chunks\[0\]\.offset: expected 0"),
        ([{"offset": 0, "size": 10, "sha256": "b" * 64}, {"offset": 9, "size": 6, "sha256": "b" * 64}],
         r"tarball\.chunks\[1\]\.offset: expected 10"),
        ([{"offset": 0, "size": 0, "sha256": "b" * 64}, {"offset": 0, "size": 15, "sha256": "b" * 64}],
         r"tarball\.chunks\[0\]\.size: expected a positive size"),
        ([{"offset": 0, "size": 14, "sha256": "b" * 64}], r"cover 14 bytes, the tarball has 15"),
    ],
)  # fmt: skip
def test_a_malformed_chunk_table_is_one_clear_error(chunks: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Manifest.from_dict(_with_chunks(chunks, 15))  # type: ignore[arg-type]
