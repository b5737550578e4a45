"""Signatures -> verified claims, with the standard library and ``openssl`` only (both sides use it).

Two kinds of signature, both the cosign formats that standard clients check:

* in a registry: a simple-signing payload (``critical.identity.docker-reference``,
  ``critical.image.docker-manifest-digest``) stored as a layer of the manifest tagged
  ``sha256-<hex>.sig`` beside the digest it signs, the base64 ECDSA P-256 signature in
  the layer's ``dev.cosignproject.cosign/signature`` annotation (what ``cosign verify``
  and containers/image's ``sigstoreSigned`` policy read);
* beside a file: ``<file>.sig``, the base64 signature of the file's bytes (what
  ``cosign verify-blob --key`` reads; we sign ``manifest.json``, which names the
  tarball's sha256).

Verification runs ``openssl dgst -sha256 -verify`` (present on every host) so the host
side needs no crypto library; signing lives in ``sign.py`` on the build side.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import proc
from .errors import SwstackError

SIMPLE_SIGNING_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
SIG_SUFFIX = ".sig"


@dataclass(frozen=True)
class Claim:
    """What a registry signature says: this repository's manifest of this digest."""

    reference: str  # host[:port]/repository, no tag (cosign's docker-reference)
    digest: str
    creator: str
    key: Path  # the trusted key that verified it


def signature_tag(digest: str) -> str:
    """Where cosign keeps the signatures of ``digest``: the tag ``sha256-<hex>.sig``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}{SIG_SUFFIX}"


def simple_signing_payload(reference: str, digest: str, creator: str) -> bytes:
    """The payload cosign signs for an image: identity, digest, type; ``optional`` names the tool."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": {"creator": creator},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_payload(data: bytes, error: type[SwstackError]) -> tuple[str, str, str]:
    """(docker-reference, docker-manifest-digest, creator) of a simple-signing payload."""
    try:
        doc = json.loads(data)
        critical = doc["critical"]
        if critical["type"] != COSIGN_SIGNATURE_TYPE:
            raise ValueError(f"type {critical['type']!r}")
        optional = doc.get("optional") or {}
        return (
            str(critical["identity"]["docker-reference"]),
            str(critical["image"]["docker-manifest-digest"]),
            str(optional.get("creator", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # any JSON: `optional` a string too
        raise error(f"a signature payload is not a cosign simple-signing document ({exc})") from None


def verifies(data: bytes, signature_b64: str, key: Path) -> bool:
    """True when ``signature_b64`` is ``key``'s ECDSA/SHA-256 signature of ``data`` (via openssl)."""
    try:
        der = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    with tempfile.TemporaryDirectory(prefix="swstack-verify-") as tmp:
        data_path, sig_path = Path(tmp) / "data", Path(tmp) / "sig"
        data_path.write_bytes(data)
        sig_path.write_bytes(der)
        result = proc.run(
            ["openssl", "dgst", "-sha256", "-verify", str(key), "-signature", str(sig_path), str(data_path)],
            check=False,
            what="openssl dgst -verify",
        )
    return result.returncode == 0


def check_keys(keys: Sequence[Path], error: type[SwstackError]) -> None:
    """Every trusted key must be a readable public key: a typo must not look like 'no valid signature'."""
    if not keys:
        raise error("a signature is required but no trusted key is configured: pass --trusted-key PUBKEY")
    for key in keys:
        if not key.is_file():
            raise error(f"{key}: trusted key file missing")
        result = proc.run(["openssl", "pkey", "-pubin", "-in", str(key), "-noout"], check=False, what="openssl")
        if result.returncode != 0:
            raise error(f"{key}: not a PEM public key (make one with `doit keygen`)")


def verify_blob(data: bytes, signature_file: Path, keys: Sequence[Path], error: type[SwstackError]) -> Path:
    """The trusted key whose signature ``signature_file`` holds for ``data``; else raise ``error``."""
    try:
        signature = signature_file.read_text().strip()
    except FileNotFoundError:
        raise error(f"{signature_file}: missing; the artifact is unsigned (sign it with `doit sign`)") from None
    for key in keys:
        if verifies(data, signature, key):
            return key
    raise error(
        f"{signature_file}: not a valid signature of {signature_file.name.removesuffix(SIG_SUFFIX)} "
        f"by any trusted key ({', '.join(k.name for k in keys)}); the artifact was altered or signed by another key"
    )


def signature_layers(manifest: dict[str, Any], error: type[SwstackError]) -> list[tuple[str, int, str]]:
    """(payload digest, size, base64 signature) of each simple-signing layer of a ``.sig`` manifest.

    The registry's JSON is anyone's: a field of the wrong type is ``error``, not a traceback."""
    found = []
    try:
        for layer in manifest.get("layers") or []:
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING_TYPE:
                continue
            signature = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
            if signature:
                found.append((str(layer["digest"]), int(layer["size"]), str(signature)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise error(f"a signature manifest is not cosign's ({exc!r})") from None
    return found


def verify_registry_signature(
    client: Any,
    reference: str,
    repository: str,
    digest: str,
    keys: Sequence[Path],
    error: type[SwstackError],
) -> Claim:
    """Check ``reference`` (host/repo) @ ``digest`` carries a signature by a trusted key, naming both.

    ``client`` is an ``oci.RegistryClient`` for the registry (passed in so the host's
    error class and retry policy apply).
    """
    tag = signature_tag(digest)
    if client.head_manifest(repository, tag) is None:
        raise error(f"{reference}@{digest[:19]}: unsigned (no {tag} in the registry); sign it with `doit sign`")
    try:
        doc = client.get_manifest(repository, tag).json()
    except ValueError as exc:
        raise error(f"{reference}:{tag}: the signature manifest is not a JSON object ({exc})") from None
    seen: list[str] = []
    try:
        layers = signature_layers(doc, error)
    except SwstackError as exc:
        raise error(f"{reference}:{tag}: {exc}") from None
    for payload_digest, size, signature in layers:
        with tempfile.TemporaryDirectory(prefix="swstack-sig-") as tmp:
            path = Path(tmp) / "payload"
            client.pull_blob(repository, payload_digest, path, size)
            payload = path.read_bytes()
        try:
            signed_ref, signed_digest, creator = parse_payload(payload, error)
        except SwstackError as exc:
            raise error(f"{reference}:{tag}: {exc}") from None
        for key in keys:
            if not verifies(payload, signature, key):
                continue
            if signed_digest != digest:
                seen.append(f"a signature for {signed_digest[:19]}")
            elif signed_ref != reference:
                seen.append(f"a signature for {signed_ref}")
            else:
                return Claim(signed_ref, signed_digest, creator, key)
    detail = f" (found {'; '.join(seen)})" if seen else ""
    raise error(f"{reference}@{digest[:19]}: no signature by a trusted key for this image{detail}")
