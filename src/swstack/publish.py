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
    check_whole,
    open_artifact,
    render_artifact_manifest,
    reraise,
    tarball_media_type,
)
from .errors import PushError
from .oci import (
    TITLE,
    Blob,
    Descriptor,
    Reference,
    RegistryClient,
    RetryPolicy,
    digest_of,
    parse_reference,
    push_manifest,
)


@dataclass(frozen=True)
class PublishPlan:
    ref: Reference
    blobs: tuple[Blob, ...]  # pushed in this order, before the manifest
    manifest: bytes  # the OCI manifest, canonical JSON
    digest: str
    version: str  # the artifact's


@dataclass(frozen=True)
class PublishResult:
    ref: Reference
    digest: str
    uploaded: tuple[str, ...]  # blob digests sent
    skipped: tuple[str, ...]  # blob digests the registry already had


def plan_publish(artifact_dir: Path, ref: str) -> PublishPlan:
    """Describe the push: the blobs and the OCI manifest. Hashes the tarball first: a damaged
    artifact is refused here, before a byte is sent (a registry would only refuse it at the end)."""
    with reraise(PushError, "pack the stack again"):
        artifact = open_artifact(artifact_dir)
        check_whole(artifact)
        media_type = tarball_media_type(artifact.manifest)
    manifest, info = artifact.manifest, artifact.manifest.tarball
    assert info is not None  # open_artifact checked it
    reference = parse_reference(ref, default_tag=manifest.version)
    manifest_bytes = artifact.manifest_path.read_bytes()
    tarball = Descriptor(media_type, f"sha256:{info.sha256}", info.size, {TITLE: info.name})
    manifest_layer, oci_manifest = render_artifact_manifest(manifest, manifest_bytes, tarball)
    blobs = (Blob(manifest_layer, manifest_bytes), Blob(tarball, artifact.tarball))
    return PublishPlan(reference, blobs, oci_manifest, digest_of(oci_manifest), manifest.version)


def push(plan: PublishPlan, client: RegistryClient) -> PublishResult:
    """Send the blobs the registry lacks, then the manifest (which moves the tag)."""
    tag = plan.ref.tag or plan.ref.reference
    fixed = (tag,) if tag == plan.version else ()  # the version tag never moves; others ("stable") may
    outcome = push_manifest(client, plan.ref.repository, plan.blobs, plan.manifest, tags=(tag,), fixed=fixed)
    return PublishResult(plan.ref.with_tag(tag), outcome.digest, outcome.uploaded, outcome.skipped)


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
        f"published {result.ref}@{result.digest} ({len(result.uploaded)} blob(s) sent, "
        f"{len(result.skipped)} already there)"
    )
    return result.digest
