"""The artifact manifest: the stack id rule, the JSON round trip, manifests written before a field existed."""

from __future__ import annotations

import json
from dataclasses import replace

from tests.support.host import base_manifest

from swstack.manifest import Manifest, stack_id
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
