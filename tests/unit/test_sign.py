"""Keys and signature planning: encrypted keys, no key material in messages, cosign layers kept or replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swstack import sign, trust
from swstack.errors import ActivateError, SignError

DIGEST = "sha256:" + "ab" * 32


def test_encrypted_key_needs_its_password_and_messages_hold_no_key(tmp_path: Path) -> None:
    public = sign.generate_key(tmp_path / "k.key", password="s3cret")
    pem = (tmp_path / "k.key").read_text()
    assert "ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(SignError, match="encrypted; set SWSTACK_SIGNING_PASSWORD") as no_password:
        sign.load_key(tmp_path / "k.key", env={})
    with pytest.raises(SignError, match="wrong SWSTACK_SIGNING_PASSWORD") as wrong:
        sign.load_key(tmp_path / "k.key", env={sign.PASSWORD_ENV: "nope"})
    key = sign.load_key(tmp_path / "k.key", env={sign.PASSWORD_ENV: "s3cret"})
    body = pem.splitlines()[1]
    for text in (str(no_password.value), str(wrong.value), repr(key)):
        assert body not in text and "s3cret" not in text
    data = b"manifest bytes"
    assert trust.verifies(data, key.sign(data), public)
    assert not trust.verifies(data + b"!", key.sign(data), public)
    with pytest.raises(SignError, match="already there"):
        sign.generate_key(tmp_path / "k.key")


def test_plan_keeps_other_signatures_and_replaces_our_own(tmp_path: Path) -> None:
    sign.generate_key(tmp_path / "a.key")
    sign.generate_key(tmp_path / "b.key")
    a, b = sign.load_key(tmp_path / "a.key"), sign.load_key(tmp_path / "b.key")
    first = sign.plan_signature("reg/repo", DIGEST, a)
    assert first.tag == "sha256-" + "ab" * 32 + ".sig"
    both = sign.plan_signature("reg/repo", DIGEST, b, json.loads(first.manifest))
    assert len(json.loads(both.manifest)["layers"]) == 2
    again = sign.plan_signature("reg/repo", DIGEST, a, json.loads(both.manifest))
    layers = json.loads(again.manifest)["layers"]
    assert len(layers) == 2 and layers[0] == json.loads(both.manifest)["layers"][1]  # b's kept, a's renewed
    payload = json.loads(again.payload)
    assert payload["critical"]["identity"] == {"docker-reference": "reg/repo"}
    assert payload["critical"]["image"] == {"docker-manifest-digest": DIGEST}
    assert trust.parse_payload(again.payload, ActivateError)[:2] == ("reg/repo", DIGEST)


def test_a_missing_or_bad_trusted_key_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(ActivateError, match="no trusted key"):
        trust.check_keys([], ActivateError)
    with pytest.raises(ActivateError, match="missing"):
        trust.check_keys([tmp_path / "none.pub"], ActivateError)
    (tmp_path / "bad.pub").write_text("not a key\n")
    with pytest.raises(ActivateError, match="not a PEM public key"):
        trust.check_keys([tmp_path / "bad.pub"], ActivateError)
