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

from . import log
from .artifact import (
    check_side_files,
    open_artifact,
    render_artifact_manifest,
    reraise,
    tarball_media_type,
)
from .errors import PushError
from .oci import (
    OCI_MANIFEST,
    TITLE,
    Descriptor,
    Reference,
    RegistryClient,
    RetryPolicy,
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


def plan_publish(artifact_dir: Path, ref: str) -> PublishPlan:
    """Describe the push: the blobs and the OCI manifest. Reads the artifact's small files only."""
    with reraise(PushError, "pack the stack again"):
        artifact = open_artifact(artifact_dir)
        check_side_files(artifact)
        media_type = tarball_media_type(artifact.manifest)
    manifest, info = artifact.manifest, artifact.manifest.tarball
    assert info is not None  # open_artifact checked it
    reference = parse_reference(ref, default_tag=manifest.version)
    manifest_bytes = artifact.manifest_path.read_bytes()
    tarball = Descriptor(media_type, f"sha256:{info.sha256}", info.size, {TITLE: info.name})
    manifest_layer, oci_manifest = render_artifact_manifest(manifest, manifest_bytes, tarball)
    blobs = (Blob(manifest_layer, data=manifest_bytes), Blob(tarball, path=artifact.tarball))
    return PublishPlan(reference, blobs, oci_manifest, digest_of(oci_manifest))


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
