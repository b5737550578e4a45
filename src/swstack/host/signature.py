"""A source + the host's trust policy -> an artifact whose signature a trusted key made, or a refusal.

The policy comes from ``--require-signature`` / ``--trusted-key`` and the host config file
(``/etc/swstack/host.toml``, or ``$SWSTACK_HOST_CONFIG``)::

    [signatures]
    require = true
    trusted_keys = ["/etc/swstack/keys/site.pub"]

What is checked, before anything is extracted or downloaded into the root:

* a path or http(s) source: ``manifest.json.sig`` must be a trusted key's signature of
  ``manifest.json``, the manifest must name the tarball's sha256, and the tarball must
  have that sha256 (hashed here, before extraction);
* an OCI reference: the tag is resolved to a digest, the registry's ``sha256-<hex>.sig``
  must hold a trusted key's cosign signature for this repository and digest, and the
  artifact is then fetched by that digest (so a tag moved meanwhile cannot slip in).

Verification is ``openssl`` through ``trust.py``: standard library only, like the rest
of the host side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import log, toml
from ..errors import ActivateError
from ..fsutil import sha256_file
from ..manifest import Manifest
from ..trust import check_keys, verify_blob, verify_registry_signature
from . import source
from .source import Artifact

HOST_CONFIG = Path("/etc/swstack/host.toml")
CONFIG_ENV = "SWSTACK_HOST_CONFIG"
_TIMEOUT = 60.0


@dataclass(frozen=True)
class TrustPolicy:
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()


def load_policy(config: Path | None, require: bool, keys: list[Path]) -> TrustPolicy:
    """Flags over the host config file; with no file and no flag, nothing is required."""
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None and HOST_CONFIG.is_file():
        path = HOST_CONFIG
    required, trusted = require, list(keys)
    if path is not None:
        try:
            data = toml.loads(path.read_text())
        except FileNotFoundError:
            raise ActivateError(f"{path}: host config file missing") from None
        except toml.TOMLDecodeError as exc:
            raise ActivateError(f"{path}: not valid TOML ({exc})") from None
        section = data.get("signatures") or {}
        unknown = sorted(set(section) - {"require", "trusted_keys"})
        if unknown or not isinstance(section.get("trusted_keys", []), list):
            raise ActivateError(f"{path}: [signatures] takes require = true|false and trusted_keys = [paths]")
        required = required or bool(section.get("require", False))
        trusted += [(path.parent / k) for k in section.get("trusted_keys", [])]
    return TrustPolicy(required, tuple(trusted))


def fetch(spec: str, downloads: Path, policy: TrustPolicy) -> Artifact:
    """``source.fetch`` when no signature is required; otherwise verify first, as the module says."""
    if not policy.require_signature:
        return source.fetch(spec, downloads)
    check_keys(policy.trusted_keys, ActivateError)
    kind = source.kind_of(spec)
    if kind == "oci":
        return source.fetch(_verified_oci(spec, policy), downloads)
    if kind == "http":
        base = spec.rsplit("/", 1)[0]
        _verify_manifest(_read_url(f"{base}/manifest.json"), _read_url(f"{base}/manifest.json.sig"), spec, policy)
        artifact = source.fetch(spec, downloads)
    else:
        artifact = source.fetch(spec, downloads)
        manifest_path = artifact.tarball.parent / "manifest.json"
        signature = manifest_path.with_name("manifest.json.sig")
        if not signature.is_file():
            raise ActivateError(f"{spec}: unsigned (no manifest.json.sig beside it); refused by the signature policy")
        _verify_manifest(manifest_path.read_bytes(), signature.read_bytes(), spec, policy)
    _check_tarball(artifact)
    return artifact


def _verify_manifest(manifest: bytes, signature: bytes, spec: str, policy: TrustPolicy) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="swstack-sig-") as tmp:
        sig_path = Path(tmp) / "manifest.json.sig"
        sig_path.write_bytes(signature)
        try:
            key = verify_blob(manifest, sig_path, policy.trusted_keys, ActivateError)
        except ActivateError:
            raise ActivateError(
                f"{spec}: manifest.json.sig is not a trusted key's signature of manifest.json "
                "(altered, or signed by another key); refused by the signature policy"
            ) from None
    try:
        signed = Manifest.from_json(manifest.decode())
    except (ValueError, TypeError, KeyError) as exc:
        raise ActivateError(f"{spec}: the signed manifest.json is not a swstack manifest ({exc})") from None
    if signed.tarball is None:
        raise ActivateError(f"{spec}: the signed manifest.json names no tarball sha256; pack the stack again")
    log.info(f"{signed.stack_id} {signed.version}: manifest.json signed by {key.name}")


def _check_tarball(artifact: Artifact) -> None:
    """The tarball must be the one the signed manifest names (hashed before any extraction)."""
    info = artifact.manifest.tarball
    assert info is not None  # _verify_manifest refused a manifest without one
    actual = sha256_file(artifact.tarball)
    if actual != info.sha256.lower():
        raise ActivateError(
            f"{artifact.tarball}: sha256 {actual[:12]}… is not the {info.sha256[:12]}… the signed manifest names; "
            "the tarball was tampered with or replaced"
        )


def _verified_oci(spec: str, policy: TrustPolicy) -> str:
    """The digest-pinned reference of ``spec`` after its registry signature checked out."""
    from .. import oci

    reference = oci.parse_reference(spec.removeprefix("oci://"), error=ActivateError)
    client = oci.RegistryClient(reference.registry, error=ActivateError)
    digest = reference.digest or client.head_manifest(reference.repository, reference.reference)
    if digest is None:
        raise ActivateError(f"{reference}: no such tag in the registry")
    claim = verify_registry_signature(
        client,
        f"{reference.registry}/{reference.repository}",
        reference.repository,
        digest,
        policy.trusted_keys,
        ActivateError,
    )
    log.info(f"{reference}: {digest[:19]} signed by {claim.key.name} ({claim.creator})")
    return f"{reference.registry}/{reference.repository}@{digest}"


def _read_url(url: str) -> bytes:
    # Imported here: an activation from a local path never pays for the HTTP client
    # (about 15 ms of every host command's start-up).
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            return bytes(response.read(1 << 24))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ActivateError(f"{url}: missing; the artifact is unsigned, refused by the signature policy") from None
        raise ActivateError(f"{url}: download failed ({exc})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ActivateError(f"{url}: download failed ({exc}); check the URL and the network") from None
