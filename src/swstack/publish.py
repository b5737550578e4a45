"""Publish a packed artifact to a registry as an OCI artifact.

Input: an artifact directory as ``pack`` leaves it (``<stack>-<version>-<platform>.tar.zst``,
its ``.sha256`` and ``manifest.json``) and a reference ``host[:port]/name[:tag]`` (the
tag defaults to the manifest's version). Output: the digest of the OCI manifest the
tag now points to. Blobs go first, the manifest last, so a failed push never moves
the tag; blobs the registry already holds are not sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log
from .errors import PushError
from .manifest import Manifest
from .oci import (
    ARTIFACT_TYPE,
    CREATED,
    OCI_MANIFEST,
    PLATFORM,
    STACK,
    STACK_MANIFEST_TYPE,
    TARBALL_TYPES,
    TITLE,
    VERSION,
    Descriptor,
    Reference,
    RegistryClient,
    RetryPolicy,
    canonical_json,
    digest_of,
    parse_reference,
)


@dataclass(frozen=True)
class Blob:
    """One blob to push: a file on disk or bytes in memory, and its descriptor."""

    descriptor: Descriptor
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class PublishPlan:
    ref: Reference
    blobs: tuple[Blob, ...]  # pushed in this order, before the manifest
    manifest: bytes  # the OCI manifest, canonical JSON
    digest: str


@dataclass(frozen=True)
class PublishResult:
    ref: Reference
    digest: str
    uploaded: tuple[str, ...]  # blob digests sent
    skipped: tuple[str, ...]  # blob digests the registry already had


def read_sha256_file(path: Path) -> str | None:
    """The hex digest in a ``sha256sum``-style file, or None when there is none."""
    try:
        first = path.read_text().split()
    except FileNotFoundError:
        return None
    return first[0].lower() if first else None


def plan_publish(artifact_dir: Path, ref: str) -> PublishPlan:
    """Describe the push: the blobs and the OCI manifest. Reads the artifact's small files only."""
    manifest_path = artifact_dir / "manifest.json"
    if not manifest_path.is_file():
        raise PushError(f"{artifact_dir}: no manifest.json; is this an artifact directory made by `pack`?")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = Manifest.from_json(manifest_bytes.decode())
    except (ValueError, TypeError, KeyError) as exc:
        raise PushError(f"{manifest_path}: not a swstack manifest ({exc}); pack the stack again") from exc
    info = manifest.tarball
    if info is None:
        raise PushError(f"{manifest_path}: has no 'tarball' section; pack the stack again")
    tarball = artifact_dir / info.name
    if not tarball.is_file():
        raise PushError(f"{tarball}: missing (named by {manifest_path}); pack the stack again")
    size = tarball.stat().st_size
    if size != info.size:
        raise PushError(f"{tarball}: {size} bytes but manifest.json says {info.size}; pack the stack again")
    side = read_sha256_file(tarball.with_name(info.name + ".sha256"))
    if side is not None and side != info.sha256:
        raise PushError(f"{tarball}.sha256 disagrees with manifest.json; pack the stack again")
    media_type = TARBALL_TYPES.get(info.compression)
    if media_type is None:
        raise PushError(f"{manifest_path}: unknown tarball compression {info.compression!r} (zstd or gzip)")
    reference = parse_reference(ref, default_tag=manifest.version)

    tar_blob = Blob(Descriptor(media_type, f"sha256:{info.sha256}", size, {TITLE: info.name}), path=tarball)
    manifest_desc = Descriptor(STACK_MANIFEST_TYPE, digest_of(manifest_bytes), len(manifest_bytes))
    man_blob = Blob(
        Descriptor(
            manifest_desc.media_type, manifest_desc.digest, manifest_desc.size, {TITLE: "manifest.json"}
        ),
        data=manifest_bytes,
    )
    oci_manifest = render_oci_manifest(
        config=manifest_desc,
        layers=(tar_blob.descriptor, man_blob.descriptor),
        annotations=artifact_annotations(manifest),
    )
    return PublishPlan(reference, (man_blob, tar_blob), oci_manifest, digest_of(oci_manifest))


def artifact_annotations(manifest: Manifest) -> dict[str, str]:
    return {
        STACK: manifest.stack_id,
        VERSION: manifest.version,
        PLATFORM: manifest.platform,
        CREATED: manifest.build_time,
    }


def render_oci_manifest(
    *, config: Descriptor, layers: tuple[Descriptor, ...], annotations: dict[str, str]
) -> bytes:
    """An OCI 1.1 image manifest carrying an artifact: ``artifactType`` set, config = our manifest."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
        "annotations": annotations,
    }
    return canonical_json(doc)


def push(plan: PublishPlan, client: RegistryClient) -> PublishResult:
    """Send the blobs the registry lacks, then the manifest (which moves the tag)."""
    repo = plan.ref.repository
    uploaded: list[str] = []
    skipped: list[str] = []
    for blob in plan.blobs:
        d = blob.descriptor
        source: Path | bytes
        if blob.data is not None:
            source = blob.data
        else:
            assert blob.path is not None
            source = blob.path
        sent = client.push_blob(repo, source, d.digest, d.size)
        (uploaded if sent else skipped).append(d.digest)
    tag = plan.ref.tag or plan.ref.reference
    digest = client.put_manifest(repo, tag, plan.manifest, OCI_MANIFEST)
    return PublishResult(plan.ref.with_tag(tag), digest, tuple(uploaded), tuple(skipped))


def publish_artifact(
    artifact_dir: Path, ref: str, *, retry: RetryPolicy | None = None, client: RegistryClient | None = None
) -> str:
    """Publish ``artifact_dir`` to ``ref``; return the manifest digest the tag points to."""
    plan = plan_publish(artifact_dir, ref)
    if plan.ref.digest:
        raise PushError(f"{ref}: publish to a tag, not a digest (the digest comes out of the push)")
    log.step(f"publish {plan.blobs[-1].descriptor.annotations[TITLE]} -> {plan.ref}")
    result = push(plan, client or RegistryClient(plan.ref.registry, retry=retry))
    log.info(
        f"{result.ref}@{result.digest} ({len(result.uploaded)} blob(s) sent, "
        f"{len(result.skipped)} already there)"
    )
    return result.digest
