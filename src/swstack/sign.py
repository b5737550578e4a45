"""A site key + pushed digests / artifact files -> cosign-compatible signatures (build side).

Input: the site's private key (PEM, ECDSA P-256; encrypted when ``SWSTACK_SIGNING_PASSWORD``
is set), and what to sign: an image or artifact manifest digest in a registry, or a file
(``manifest.json``) of an artifact directory. Output: the ``sha256-<hex>.sig`` manifest in
the registry (formats in ``trust.py``) and ``<file>.sig`` beside the file. The private key
is read here and nowhere else; it never reaches a log line, an artifact or an image.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__, log, proc
from .errors import SignError
from .fsutil import atomic_write_bytes, atomic_write_text
from .oci import (
    OCI_MANIFEST,
    Blob,
    Descriptor,
    ManifestDoc,
    RegistryClient,
    canonical_json,
    digest_of,
    parse_reference,
    push_manifest,
)
from .trust import SIGNATURE_ANNOTATION, SIMPLE_SIGNING_TYPE, signature_tag, simple_signing_payload

PASSWORD_ENV = "SWSTACK_SIGNING_PASSWORD"
CREATOR = f"swstack {__version__}"
# cosign's signature image config: an empty image whose one "layer" is the payload.
_EMPTY_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
# Files of an artifact directory signed beside manifest.json (made by attest.py).
ATTESTATION_FILES = ("sbom.cdx.json", "provenance.intoto.json")


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key; ``repr`` shows the file, never the key."""

    path: Path
    _key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"SigningKey({self.path})"

    def sign(self, data: bytes) -> str:
        """Base64 of the DER ECDSA/SHA-256 signature of ``data`` (cosign's encoding)."""
        return base64.b64encode(self._key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()

    def made(self, signature_b64: str, data: bytes) -> bool:
        """True when ``signature_b64`` is this key's signature of ``data`` (re-signing replaces it)."""
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.public_key().verify(base64.b64decode(signature_b64), data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def public_key_path(private: Path) -> Path:
    """The public key is written beside the private one: ``<name>.pub``."""
    return private.with_suffix(".pub")


def generate_key(path: Path, password: str | None = None) -> Path:
    """Write a new P-256 private key at ``path`` (mode 0600) and its ``.pub``; return the public key's path."""
    if path.exists():
        raise SignError(f"{path}: a key is already there; remove it first if you really mean to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.replace(partial, path)
    public = public_key_path(path)
    atomic_write_bytes(public, SigningKey(path, key).public_pem())
    log.info(f"new signing key {path} (keep it private); public key {public} (give it to hosts)")
    return public


def load_key(path: Path, env: dict[str, str] | None = None) -> SigningKey:
    """The private key at ``path``, decrypted with ``$SWSTACK_SIGNING_PASSWORD`` when it is encrypted."""
    environ = os.environ if env is None else env
    password = environ.get(PASSWORD_ENV)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SignError(f"{path}: no signing key there; make one with `doit keygen`") from None
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SignError(f"{path}: the key is encrypted; set {PASSWORD_ENV}") from None
    except (ValueError, UnsupportedAlgorithm):
        # The exception text can quote key material: say what to do, nothing more.
        raise SignError(f"{path}: not a PEM private key, or a wrong {PASSWORD_ENV}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SignError(f"{path}: the signing key must be ECDSA P-256 (what cosign and containers/image verify)")
    return SigningKey(path, key)


# ----------------------------------------------------------------------------- files


def sign_file(path: Path, key: SigningKey) -> Path:
    """Write ``<path>.sig``: the signature of the file's bytes (``cosign verify-blob`` format)."""
    signature = path.with_name(path.name + ".sig")
    atomic_write_text(signature, key.sign(path.read_bytes()) + "\n")
    log.info(f"signed {path.name} -> {signature.name}")
    return signature


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SignaturePlan:
    """What goes to the registry: payload and config blobs, then the ``.sig`` manifest."""

    tag: str
    payload: bytes
    config: bytes
    manifest: bytes


def _layer(payload: bytes, signature: str) -> dict[str, Any]:
    return {
        "mediaType": SIMPLE_SIGNING_TYPE,
        "digest": digest_of(payload),
        "size": len(payload),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }


def _signature_of(layer: dict[str, Any]) -> str:
    return str((layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION, ""))


def plan_signature(
    reference: str, digest: str, key: SigningKey, existing: dict[str, Any] | None = None
) -> SignaturePlan:
    """The ``.sig`` manifest signing ``reference@digest``; signatures of other payloads already
    there (another identity, another key) are kept, as cosign does."""
    payload = simple_signing_payload(reference, digest, CREATOR)
    ours = _layer(payload, key.sign(payload))
    kept = [
        layer
        for layer in (existing or {}).get("layers") or []
        if isinstance(layer, dict)
        and not (layer.get("digest") == ours["digest"] and key.made(_signature_of(layer), payload))
    ]
    layers = [*kept, ours]
    config = canonical_json(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": _EMPTY_CONFIG_TYPE, "digest": digest_of(config), "size": len(config)},
            "layers": layers,
        }
    )
    return SignaturePlan(signature_tag(digest), payload, config, manifest)


def sign_in_registry(client: RegistryClient, repository: str, digest: str, key: SigningKey) -> str:
    """Sign ``<registry>/<repository>@<digest>`` where cosign looks; return the ``.sig`` manifest's digest."""
    reference = f"{client.registry}/{repository}"
    tag = signature_tag(digest)
    existing: dict[str, Any] | None = None
    if client.head_manifest(repository, tag) is not None:
        doc: ManifestDoc = client.get_manifest(repository, tag)
        existing = doc.json()
    plan = plan_signature(reference, digest, key, existing)
    # Kept signatures' payloads are in the registry already; ours and the config may not be.
    blobs = (
        Blob(Descriptor(SIMPLE_SIGNING_TYPE, digest_of(plan.payload), len(plan.payload)), plan.payload),
        Blob(Descriptor(_EMPTY_CONFIG_TYPE, digest_of(plan.config), len(plan.config)), plan.config),
    )
    sig_digest = push_manifest(client, repository, blobs, plan.manifest, tags=(plan.tag,)).digest
    log.info(f"signed {reference}@{digest[:19]} -> {plan.tag}")
    return sig_digest


# ----------------------------------------------------------------------------- OpenPGP (signedBy)
#
# containers/image's ``signedBy`` policy verifies an OpenPGP-signed "atomic container
# signature" read from a lookaside store: ``<lookaside>/<repository>@sha256=<hex>/signature-1``.
# Debian's skopeo and podman ship with sigstore verification disabled, so this is the
# format those clients check; the key is made and used by GnuPG in its own home directory.

ATOMIC_SIGNATURE_TYPE = "atomic container signature"


def _gpg(home: Path, *args: str, input: str | None = None) -> str:
    argv = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    return proc.run(argv, input=input, error=SignError, what=f"gpg {args[0]}").stdout


def _stop_agent(home: Path) -> None:
    proc.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, what="gpgconf")


def generate_openpgp_key(home: Path, public: Path, uid: str) -> str:
    """A new signing-only OpenPGP key (NIST P-256) in GnuPG home ``home``; its public key to ``public``."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    passphrase = os.environ.get(PASSWORD_ENV, "")
    try:
        _gpg(home, "--passphrase-fd", "0", "--quick-gen-key", uid, "nistp256", "sign", "never", input=passphrase)
        fingerprint = openpgp_fingerprint(home)
        atomic_write_text(public, _gpg(home, "--armor", "--export", fingerprint))
    finally:
        _stop_agent(home)
    return fingerprint


def openpgp_fingerprint(home: Path) -> str:
    """The fingerprint of the one secret key in ``home``."""
    listing = _gpg(home, "--with-colons", "--list-secret-keys")
    fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    if not fingerprints:
        raise SignError(f"{home}: no OpenPGP secret key; make one with `doit keygen`")
    return fingerprints[0]


def atomic_payload(reference: str, digest: str, timestamp: int) -> bytes:
    """The simple-signing document ``signedBy`` checks (same fields as cosign's, another type)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": ATOMIC_SIGNATURE_TYPE,
        },
        "optional": {"creator": CREATOR, "timestamp": timestamp},
    }
    return canonical_json(doc)


def lookaside_path(lookaside: Path, repository: str, digest: str) -> Path:
    """Where containers/image reads the first signature of ``repository@digest`` (repository without host)."""
    algorithm, _, hexdigest = digest.partition(":")
    return lookaside / f"{repository}@{algorithm}={hexdigest}" / "signature-1"


def sign_in_lookaside(home: Path, lookaside: Path, registry: str, repository: str, digest: str, timestamp: int) -> Path:
    """Write the OpenPGP signature of ``registry/repository@digest`` into the lookaside store."""
    payload = atomic_payload(f"{registry}/{repository}", digest, timestamp)
    passphrase = os.environ.get(PASSWORD_ENV, "")
    dest = lookaside_path(lookaside, repository, digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swstack-pgp-") as tmp:
        source, signed = Path(tmp) / "payload", Path(tmp) / "payload.gpg"
        source.write_bytes(payload)
        try:
            _gpg(
                home,
                "--passphrase-fd",
                "0",
                "--local-user",
                openpgp_fingerprint(home),
                "--output",
                str(signed),
                "--sign",
                str(source),
                input=passphrase,
            )
        finally:
            _stop_agent(home)
        atomic_write_bytes(dest, signed.read_bytes())
    log.info(f"signed {registry}/{repository}@{digest[:19]} (OpenPGP) -> {dest}")
    return dest


# ----------------------------------------------------------------------------- the site's keys


@dataclass(frozen=True)
class KeyDir:
    """A site's signing keys, in one directory kept off the artifacts and images.

    ``cosign.key`` / ``cosign.pub``: ECDSA P-256 (PEM) for cosign signatures in the registry and
    ``.sig`` files beside artifacts (what hosts check); ``gnupg/`` / ``openpgp.pub``: the
    OpenPGP key for containers/image's ``signedBy`` policy.
    """

    root: Path

    @property
    def cosign_key(self) -> Path:
        return self.root / "cosign.key"

    @property
    def cosign_pub(self) -> Path:
        return self.root / "cosign.pub"

    @property
    def gnupg(self) -> Path:
        return self.root / "gnupg"

    @property
    def openpgp_pub(self) -> Path:
        return self.root / "openpgp.pub"

    def exists(self) -> bool:
        return self.cosign_key.is_file()


def keygen(root: Path, uid: str) -> KeyDir:
    """Make both keys of a site in ``root`` (refusing to replace any)."""
    keys = KeyDir(root)
    if keys.cosign_key.exists() or keys.gnupg.exists():
        raise SignError(f"{root}: signing keys are already there; remove them first if you mean to replace them")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    generate_key(keys.cosign_key, os.environ.get(PASSWORD_ENV) or None)
    generate_openpgp_key(keys.gnupg, keys.openpgp_pub, uid)
    return keys


def sign_image(
    keys: KeyDir, lookaside: Path | None, registry: str, repository: str, digest: str, timestamp: int
) -> None:
    """Both signatures of a pushed manifest: cosign's in the registry, OpenPGP's in the lookaside store."""
    sign_in_registry(RegistryClient(registry, error=SignError), repository, digest, load_key(keys.cosign_key))
    if lookaside is not None and keys.gnupg.is_dir():
        sign_in_lookaside(keys.gnupg, lookaside, registry, repository, digest, timestamp)


# ----------------------------------------------------------------------------- what the tasks call


def site_keys(keys_dir: Path | None) -> KeyDir | None:
    """The site's keys when it names a directory holding them; None (nothing is signed) otherwise."""
    if keys_dir is None:
        return None
    keys = KeyDir(keys_dir)
    if not keys.exists():
        log.warn(f"{keys_dir}: no signing key there yet, nothing signed; `doit keygen` makes one")
        return None
    return keys


def sign_artifact_files(artifact_dir: Path, keys: KeyDir) -> list[Path]:
    """``<file>.sig`` for manifest.json (which names the tarball's sha256) and the attestations beside it."""
    key = load_key(keys.cosign_key)
    names = ["manifest.json", *ATTESTATION_FILES]
    return [sign_file(artifact_dir / name, key) for name in names if (artifact_dir / name).is_file()]


def sign_if_pushed(keys: KeyDir, lookaside: Path | None, ref: str) -> bool:
    """Sign what ``ref`` (host/repo:tag or @digest) points to in the registry, and the SBOM and
    provenance attached to it as referrers (as ``doit push`` / ``publish`` do); False when it is not there."""
    reference = parse_reference(ref, default_tag=None, error=SignError)
    client = RegistryClient(reference.registry, error=SignError)
    digest = client.head_manifest(reference.repository, reference.reference)
    if digest is None:
        return False
    now = int(time.time())
    for signed in (digest, *attached_attestations(client, reference.repository, digest)):
        sign_image(keys, lookaside, reference.registry, reference.repository, signed, now)
    return True


def attached_attestations(client: RegistryClient, repository: str, digest: str) -> list[str]:
    """The digests of our SBOM and provenance referrers of ``repository@digest`` (its referrers tag)."""
    from .attest import INTOTO_TYPE, SBOM_TYPE, referrers_tag

    tag = referrers_tag(digest)
    if client.head_manifest(repository, tag) is None:
        return []
    listed = client.get_manifest(repository, tag).json().get("manifests")
    return [
        m["digest"]
        for m in (listed if isinstance(listed, list) else [])
        if isinstance(m, dict)
        and m.get("artifactType") in (SBOM_TYPE, INTOTO_TYPE)
        and isinstance(m.get("digest"), str)
    ]
