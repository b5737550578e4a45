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

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import log, toml
from ..errors import ActivateError
from ..fsutil import sha256_file
from ..manifest import Manifest
from ..tomlloc import decode_error_at, decode_utf8, dotted, index_lines, line_of
from ..trust import check_keys, verify_blob, verify_registry_signature
from . import source
from .source import Artifact

HOST_CONFIG = Path("/etc/swstack/host.toml")
CONFIG_ENV = "SWSTACK_HOST_CONFIG"


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
        file_required, file_keys = read_host_config(path)
        required = required or file_required
        trusted += file_keys
        if file_required and not trusted:  # the fix is in that file, not only on the command line
            raise ActivateError(
                f"{path}: signatures.require is true but the file names no trusted key; add "
                f"trusted_keys = [\"<key path>\"] to its [signatures] (relative to {path.parent}), "
                f"or pass --trusted-key PUBKEY"
            )
    return TrustPolicy(required, tuple(trusted))


_SECTION_KEYS = ("require", "trusted_keys")
_SHAPE = "require = true|false and trusted_keys = [\"<key path>\", ...]"


def _shown(value: object) -> str:
    """A TOML value as the file spells it (near enough): "false", [1], 5."""
    return json.dumps(value, default=str)


def read_utf8(path: Path, what: str) -> str:
    """A host input file's text; unreadable or not UTF-8 is one ``ActivateError`` line naming file:line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ActivateError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return decode_utf8(raw, str(path), what, ActivateError)


def read_host_config(path: Path) -> tuple[bool, list[Path]]:
    """The host config file -> (signatures required, trusted key paths); every mistake is one
    ``ActivateError`` line naming file:line and the key, never a Python error."""
    if not path.exists():
        raise ActivateError(f"{path}: host config file missing; create it or pass another --host-config")
    text = read_utf8(path, "the host config")
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        line, reason = decode_error_at(exc)
        where = f":{line}" if line else ""
        raise ActivateError(f"{path}{where}: not valid TOML: {reason}; fix the host config") from None
    lines = index_lines(text)

    def refuse(key: tuple[str | int, ...], what: str) -> ActivateError:
        line = line_of(lines, key)
        return ActivateError(f"{path}{f':{line}' if line else ''}: {dotted(key)}: {what}")

    for key in data:
        if key != "signatures":
            near = " (did you mean [signatures]?)" if difflib.get_close_matches(key, ["signatures"]) else ""
            raise refuse((key,), f"unknown key{near}; the host config holds one table, [signatures], with {_SHAPE}")
    section = data.get("signatures", {})
    if not isinstance(section, dict):
        raise refuse(("signatures",), f"expected a table, got {_shown(section)}; write [signatures] with {_SHAPE}")
    for key in section:
        if key not in _SECTION_KEYS:
            close = difflib.get_close_matches(key, _SECTION_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise refuse(("signatures", key), f"unknown key{hint}; [signatures] takes only {_SHAPE}")
    required = section.get("require", False)
    if not isinstance(required, bool):
        raise refuse(
            ("signatures", "require"),
            f"expected true or false (a TOML boolean, unquoted), got {_shown(required)}",
        )
    keys = section.get("trusted_keys", [])
    if not isinstance(keys, list):
        raise refuse(
            ("signatures", "trusted_keys"),
            f"expected a list of key paths, got {_shown(keys)}; write trusted_keys = [\"<key path>\", ...]",
        )
    for i, item in enumerate(keys):
        if not isinstance(item, str) or not item.strip():
            raise refuse(
                ("signatures", "trusted_keys", i),
                f"expected the path of a PEM public key (a non-empty string), got {_shown(item)}",
            )
    return required, [path.parent / k for k in keys]


def fetch(spec: str, downloads: Path, policy: TrustPolicy) -> Artifact:
    """``source.fetch`` when no signature is required; otherwise verify first, as the module says."""
    if not policy.require_signature:
        return source.fetch(spec, downloads)
    check_keys(policy.trusted_keys, ActivateError)
    kind = source.kind_of(spec)
    if kind == "oci":
        return source.fetch(_verified_oci(spec, policy), downloads)
    if kind == "http":
        # Beside the tarball with its query (a site's access token), as the fetch asks for them.
        parsed = source.check_url(spec)
        manifest_url = source.sibling_url(parsed, "manifest.json")
        signed = _read_url(manifest_url)
        manifest = _verify_manifest(signed, _read_url(source.sibling_url(parsed, "manifest.json.sig")), spec, policy)
        artifact = source.fetch(spec, downloads)
        # The fetch asks the server for manifest.json again: the tarball is checked against, and the
        # version activated from, that second answer, so it must be the bytes that were signed.
        if (artifact.tarball.parent / "manifest.json").read_bytes() != signed:
            raise ActivateError(
                f"{manifest_url}: served other bytes after its signature was checked; "
                "refused by the signature policy"
            )
        _check_parsed(artifact, manifest, manifest_url)
    else:
        artifact = source.fetch(spec, downloads)
        manifest_path = artifact.tarball.parent / "manifest.json"
        signature = manifest_path.with_name("manifest.json.sig")
        if not signature.is_file():
            raise ActivateError(f"{spec}: unsigned (no manifest.json.sig beside it); refused by the signature policy")
        manifest = _verify_manifest(manifest_path.read_bytes(), signature.read_bytes(), spec, policy)
        _check_parsed(artifact, manifest, str(manifest_path))
    _check_tarball(artifact)
    return artifact


def _check_parsed(artifact: Artifact, signed: Manifest, where: str) -> None:
    """The manifest the activation goes on with (parsed by the fetch) must be the one whose bytes
    were verified: the file is read twice, and whoever can write it may swap it in between."""
    if artifact.manifest != signed:
        raise ActivateError(
            f"{where}: changed while it was read (the manifest parsed is not the one signed); "
            "refused by the signature policy"
        )


def _verify_manifest(manifest: bytes, signature: bytes, spec: str, policy: TrustPolicy) -> Manifest:
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
    return signed


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
    # oci:// so the pinned reference is fetched from the registry: without it, a directory of
    # that name in the working directory (/tmp, say) is a path source, read unsigned.
    return f"oci://{reference.registry}/{reference.repository}@{digest}"


def _read_url(url: str) -> bytes:
    # Imported here: an activation from a local path never pays for the HTTP client
    # (about 15 ms of every host command's start-up).
    import urllib.error

    try:
        with source.open_url(url) as response:
            return bytes(response.read(1 << 24))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ActivateError(f"{url}: missing; the artifact is unsigned, refused by the signature policy") from None
        raise ActivateError(f"{url}: download failed ({exc})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ActivateError(f"{url}: download failed ({exc}); check the URL and the network") from None
