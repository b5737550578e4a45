"""An artifact (directory, tarball path or OCI reference) -> who built what from which inputs, checked.

Reads the artifact's in-toto provenance (``provenance.intoto.json`` beside the tarball, or
the referrer of that type in the registry), checks that its subject is the tarball (by
sha256) and, given trusted keys, that a trusted key signed both the manifest (or the
registry artifact) and the provenance. Standard library and ``openssl`` only.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import load_manifest, reraise
from ..errors import ActivateError
from ..fsutil import sha256_file
from ..manifest import Manifest
from ..trust import check_keys, verify_blob, verify_registry_signature
from . import source

PROVENANCE_NAME = "provenance.intoto.json"
INTOTO_TYPE = "application/vnd.in-toto+json"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"


@dataclass(frozen=True)
class Report:
    """What ``swstack verify`` prints."""

    artifact: str
    stack: str
    version: str
    platform: str
    tarball: str
    tarball_sha256: str
    built_at: str
    builder: str
    tools: dict[str, str]
    builder_image: str | None
    inputs: dict[str, str]  # lockfile / stack file sha256, git commit
    signed_by: list[str] = field(default_factory=list)  # key file names; empty: not checked


def _statement(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if doc["predicateType"] != SLSA_PROVENANCE or not isinstance(doc["subject"], list):
            raise ValueError(f"predicateType {doc.get('predicateType')!r}")
        return dict(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise ActivateError(f"{where}: not an in-toto SLSA provenance statement ({exc})") from None


def _report(artifact: str, manifest: Manifest, statement: dict[str, Any], tarball_sha256: str) -> Report:
    # The statement is JSON anyone could have written: a field of the wrong type is a refusal.
    try:
        return _read_report(artifact, manifest, statement, tarball_sha256)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        raise ActivateError(
            f"{artifact}: the provenance is not an SLSA provenance statement as swstack writes it "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _read_report(artifact: str, manifest: Manifest, statement: dict[str, Any], tarball_sha256: str) -> Report:
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement["subject"]}
    if manifest.tarball is None or subjects.get(manifest.tarball.name) != tarball_sha256:
        raise ActivateError(
            f"{artifact}: the provenance's subject is not this tarball (sha256 {tarball_sha256[:12]}…); "
            "it describes another build"
        )
    predicate = statement.get("predicate") or {}
    definition = predicate.get("buildDefinition") or {}
    run = predicate.get("runDetails") or {}
    builder = run.get("builder") or {}
    inputs: dict[str, str] = {}
    for dep in definition.get("resolvedDependencies") or []:
        digest = dep.get("digest") or {}
        inputs[str(dep.get("name"))] = str(digest.get("sha256") or digest.get("gitCommit") or "")
    images = builder.get("builderDependencies") or []
    image = f"{images[0].get('name')}@sha256:{images[0]['digest']['sha256']}" if images else None
    return Report(
        artifact=artifact,
        stack=manifest.stack_id,
        version=manifest.version,
        platform=manifest.platform,
        tarball=manifest.tarball.name,
        tarball_sha256=tarball_sha256,
        built_at=str((run.get("metadata") or {}).get("finishedOn", manifest.build_time)),
        builder=str(builder.get("id", "")),
        tools={str(k): str(v) for k, v in (builder.get("version") or {}).items()},
        builder_image=image,
        inputs=inputs,
    )


def verify_path(spec: str, keys: list[Path]) -> Report:
    """A local artifact: provenance beside it, subject = tarball's real sha256, signatures when ``keys``."""
    artifact = source.from_path(spec)
    directory = artifact.tarball.parent
    provenance = directory / PROVENANCE_NAME
    if not provenance.is_file():
        raise ActivateError(f"{directory}: no {PROVENANCE_NAME}; the artifact was built before provenance was recorded")
    listed = {a.name: a.sha256 for a in artifact.manifest.attestations}
    if listed.get(PROVENANCE_NAME) not in (None, sha256_file(provenance)):
        raise ActivateError(f"{provenance}: its sha256 is not the one manifest.json lists; it was altered")
    signed_by: list[str] = []
    if keys:
        check_keys(keys, ActivateError)
        for name in ("manifest.json", PROVENANCE_NAME):
            path = directory / name
            signed_by.append(verify_blob(path.read_bytes(), path.with_name(name + ".sig"), keys, ActivateError).name)
    report = _report(
        spec, artifact.manifest, _statement(provenance.read_bytes(), str(provenance)), sha256_file(artifact.tarball)
    )
    return _with_signers(report, signed_by)


def verify_oci(spec: str, keys: list[Path]) -> Report:
    """A published artifact: its provenance referrer, subject = the tarball layer's digest, signatures when ``keys``."""
    from .. import oci
    from ..artifact import artifact_layout

    ref = oci.parse_reference(spec.removeprefix("oci://"), error=ActivateError)
    client = oci.RegistryClient(ref.registry, error=ActivateError)
    repo = ref.repository
    doc = client.get_manifest(repo, ref.reference)
    layout = artifact_layout(_json(doc, ref), error=ActivateError)
    index_tag = doc.digest.replace(":", "-", 1)
    if client.head_manifest(repo, index_tag) is None:
        raise ActivateError(f"{ref}: no attestations attached (no referrers tag {index_tag[:19]}…)")
    listed = _json(client.get_manifest(repo, index_tag), ref).get("manifests") or []
    entries = [
        m
        for m in (listed if isinstance(listed, list) else [])
        if isinstance(m, dict) and m.get("artifactType") == INTOTO_TYPE and "digest" in m
    ]
    if not entries:
        raise ActivateError(f"{ref}: no provenance among its referrers")
    referrer = client.get_manifest(repo, str(entries[-1]["digest"]))
    referrer_doc = _json(referrer, ref)
    subject = referrer_doc.get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != doc.digest:
        raise ActivateError(f"{ref}: the provenance referrer names another subject")
    layers = referrer_doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ActivateError(f"{ref}: the provenance referrer has no layer")
    blob = oci.Descriptor.from_json(layers[0], ActivateError)
    with tempfile.TemporaryDirectory(prefix="swstack-verify-") as tmp:
        manifest_path, statement_path = Path(tmp) / "manifest.json", Path(tmp) / "provenance"
        client.pull_blob(repo, layout.manifest.digest, manifest_path, layout.manifest.size)
        client.pull_blob(repo, blob.digest, statement_path, blob.size)
        with reraise(ActivateError, "the registry's manifest.json is unreadable"):
            manifest = load_manifest(manifest_path)
        statement = _statement(statement_path.read_bytes(), f"{ref} provenance")
    signed_by: list[str] = []
    if keys:
        check_keys(keys, ActivateError)
        reference = f"{ref.registry}/{repo}"
        for digest in (doc.digest, referrer.digest):
            signed_by.append(verify_registry_signature(client, reference, repo, digest, keys, ActivateError).key.name)
    report = _report(spec, manifest, statement, layout.tarball.digest.removeprefix("sha256:"))
    return _with_signers(report, signed_by)


def _json(doc: Any, ref: object) -> dict[str, Any]:
    """A manifest or index the registry served, as an object; anything else is one refusal."""
    try:
        return dict(doc.json())
    except ValueError as exc:
        raise ActivateError(f"{ref}: the registry served a manifest that is not a JSON object ({exc})") from None


def _with_signers(report: Report, signed_by: list[str]) -> Report:
    from dataclasses import replace

    return replace(report, signed_by=sorted(set(signed_by)))


def verify(spec: str, keys: list[Path]) -> Report:
    kind = source.kind_of(spec)
    if kind == "http":
        raise ActivateError(
            f"{spec}: verify reads an artifact directory, a tarball or an OCI reference, not a URL; "
            "download the artifact directory first"
        )
    if kind == "oci":
        return verify_oci(spec, keys)
    if not Path(spec).expanduser().exists():  # before source.from_path, whose message offers URLs, which verify refuses
        raise ActivateError(
            f"{spec}: no such file or directory (expected an artifact directory, a tarball or an OCI reference)"
        )
    return verify_path(spec, keys)
