"""Artifact directory -> its SBOM (CycloneDX) and provenance (in-toto SLSA), listed in manifest.json.

Input: what ``pack`` left (tarball + ``manifest.json``) and who built it (the builder image
digest, when the build ran in one). Output, beside them: ``sbom.cdx.json`` (every conda
and pip package: purl, version, sha256, licence when its metadata names one, made with
cyclonedx-python-lib) and ``provenance.intoto.json`` (an in-toto v1 statement, SLSA
provenance v1 predicate, whose subject is the tarball), and ``manifest.json`` rewritten
to list both with their sha256. Both documents are functions of the artifact alone (no
clock, no random serial), so rebuilding one lockfile gives the same bytes. ``push`` /
``publish`` attach them to the image and the artifact as OCI referrers.
"""

from __future__ import annotations

import json
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__, log
from .errors import BuildError
from .fsutil import atomic_write_text, sha256_file
from .manifest import AttestationInfo, Manifest, PackageEntry, normalise_pip_name

SBOM_NAME = "sbom.cdx.json"
PROVENANCE_NAME = "provenance.intoto.json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
INTOTO_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://swstack.dev/build/v1"  # names our build process; not fetched by anyone
BUILDER_ID = "https://swstack.dev/builder"
_NAMESPACE = uuid.UUID("6f1b0c4e-2c55-4d1a-9d3e-5a7f0b8e2d11")  # serial numbers: uuid5 under this


# ----------------------------------------------------------------------------- licences


def read_licences(tarball: Path) -> dict[tuple[str, str], str]:
    """(manager, lower-case name) -> licence, from ``conda-meta/*.json`` and ``*.dist-info/METADATA``."""
    from .image import open_tarball

    found: dict[tuple[str, str], str] = {}
    with open_tarball(tarball) as tar:
        for member in tar:
            path = PurePosixPath(member.name.lstrip("./"))
            if not member.isfile():
                continue
            if len(path.parts) == 2 and path.parts[0] == "conda-meta" and path.suffix == ".json":
                record = _json_member(tar, member)
                if record.get("name") and record.get("license"):
                    found[("conda", str(record["name"]).lower())] = str(record["license"])
            elif path.name == "METADATA" and path.parent.name.endswith(".dist-info"):
                name, licence = _wheel_licence(_text_member(tar, member))
                if name and licence:
                    found[("pip", normalise_pip_name(name))] = licence
    return found


def _json_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    try:
        data = json.loads(_text_member(tar, member))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    return handle.read().decode(errors="replace") if handle else ""


def _wheel_licence(metadata: str) -> tuple[str, str]:
    """Name and licence of a wheel: License-Expression, else License, else an OSI classifier."""
    headers = HeaderParser().parsestr(metadata, headersonly=True)
    name = headers.get("Name", "")
    licence = (headers.get("License-Expression") or headers.get("License") or "").strip()
    if not licence or "\n" in licence or len(licence) > 100:  # a whole licence text is no identifier
        classifiers = [c for c in headers.get_all("Classifier") or [] if c.startswith("License :: ")]
        licence = classifiers[0].rsplit(" :: ", 1)[-1] if classifiers else ""
    return name, licence


# ----------------------------------------------------------------------------- SBOM


def _channel_name(url: str) -> str:
    """A purl ``channel`` is a name: the last path part of the channel URL (conda-forge, offline-channel)."""
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def _real_hash(sha256: str) -> bool:
    return len(sha256) == 64 and set(sha256) != {"0"}


def purl_of(package: PackageEntry, platform: str) -> Any:
    from packageurl import PackageURL

    if package.manager == "pip":
        return PackageURL(type="pypi", name=normalise_pip_name(package.name), version=package.version)
    qualifiers = {"build": package.build, "channel": _channel_name(package.channel), "subdir": platform}
    return PackageURL(
        type="conda",
        name=package.name.lower(),
        version=package.version,
        qualifiers={k: v for k, v in qualifiers.items() if v},
    )


def render_sbom(manifest: Manifest, licences: Mapping[tuple[str, str], str]) -> str:
    """The CycloneDX 1.6 JSON document of the environment (deterministic)."""
    try:  # its home since cyclonedx-python-lib 11; the old path still works, deprecated
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # pragma: no cover - older cyclonedx-python-lib
        from cyclonedx.factory.license import LicenseFactory
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    factory = LicenseFactory()
    root = Component(
        name=manifest.stack_id,
        version=manifest.version,
        type=ComponentType.PLATFORM,
        bom_ref=f"stack:{manifest.stack_id}@{manifest.version}",
        properties=[
            Property(name="swstack:prefix", value=manifest.prefix),
            Property(name="swstack:platform", value=manifest.platform),
            Property(name="swstack:lockfile-sha256", value=manifest.lockfile_sha256),
        ],
    )
    bom = Bom(
        serial_number=uuid.uuid5(_NAMESPACE, f"{manifest.stack_id}:{manifest.version}:{manifest.lockfile_sha256}")
    )
    bom.metadata.component = root
    bom.metadata.timestamp = datetime.fromtimestamp(manifest.source_date_epoch).astimezone()
    components = []
    for package in sorted(manifest.packages, key=lambda p: (p.manager, p.name.lower(), p.version)):
        purl = purl_of(package, manifest.platform)
        licence = licences.get(
            (package.manager, package.name.lower() if package.manager == "conda" else normalise_pip_name(package.name))
        )
        component = Component(
            name=package.name,
            version=package.version,
            type=ComponentType.LIBRARY,
            purl=purl,
            bom_ref=purl.to_string(),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=package.sha256)] if _real_hash(package.sha256) else [],
            licenses=[factory.make_from_string(licence)] if licence else [],
        )
        components.append(component)
        bom.components.add(component)
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def validate_sbom(text: str) -> None:
    """cyclonedx-python-lib's own JSON schema check (strict, CycloneDX 1.6); raises BuildError."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise BuildError(f"{SBOM_NAME}: not valid CycloneDX 1.6 ({error}); this is a bug in swstack")


# ----------------------------------------------------------------------------- provenance


def render_provenance(manifest: Manifest, builder_image: str | None, builder_digest: str | None) -> str:
    """An in-toto v1 statement with a SLSA v1 provenance predicate for the tarball."""
    assert manifest.tarball is not None
    dependencies: list[dict[str, Any]] = [
        {"name": "lockfile", "digest": {"sha256": manifest.lockfile_sha256}},
        {"name": "stack file", "digest": {"sha256": manifest.stackfile_sha256}},
    ]
    if manifest.git_commit:
        dependencies.append({"name": "swstack checkout", "digest": {"gitCommit": manifest.git_commit}})
    builder: dict[str, Any] = {"id": BUILDER_ID, "version": dict(sorted(manifest.tools.items()))}
    if builder_digest:
        builder["builderDependencies"] = [
            {"name": builder_image or "builder image", "digest": {"sha256": builder_digest.removeprefix("sha256:")}}
        ]
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.tarball.name, "digest": {"sha256": manifest.tarball.sha256}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "stack": manifest.stack,
                    "variant": manifest.variant,
                    "version": manifest.version,
                    "platform": manifest.platform,
                    "prefix": manifest.prefix,
                },
                "internalParameters": {"sourceDateEpoch": manifest.source_date_epoch},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": builder,
                "metadata": {
                    "invocationId": f"{manifest.stack_id}@{manifest.version}",
                    "finishedOn": manifest.build_time,
                },
            },
        },
    }
    return json.dumps(statement, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------- the artifact


def attest_artifact(
    artifact_dir: Path, *, builder_image: str | None = None, builder_digest: str | None = None
) -> Manifest:
    """Write the SBOM and the provenance beside the tarball and list them in manifest.json."""
    manifest_path = artifact_dir / "manifest.json"
    manifest = Manifest.load(manifest_path)
    if manifest.tarball is None:
        raise BuildError(f"{manifest_path}: no tarball section; pack the stack again")
    sbom = render_sbom(manifest, read_licences(artifact_dir / manifest.tarball.name))
    validate_sbom(sbom)
    atomic_write_text(artifact_dir / SBOM_NAME, sbom)
    atomic_write_text(artifact_dir / PROVENANCE_NAME, render_provenance(manifest, builder_image, builder_digest))
    listed = tuple(
        AttestationInfo(name, sha256_file(artifact_dir / name), media_type)
        for name, media_type in ((SBOM_NAME, SBOM_TYPE), (PROVENANCE_NAME, INTOTO_TYPE))
    )
    updated = replace(manifest, attestations=listed)
    atomic_write_text(manifest_path, updated.to_json())
    log.info(
        f"{manifest.stack_id} {manifest.version}: {SBOM_NAME} ({len(manifest.packages)} packages), {PROVENANCE_NAME}"
    )
    return updated


def attestations_of(artifact_dir: Path) -> Iterator[tuple[AttestationInfo, Path]]:
    """The attestation files manifest.json lists, each checked against its recorded sha256."""
    manifest = Manifest.load(artifact_dir / "manifest.json")
    for info in manifest.attestations:
        path = artifact_dir / info.name
        if not path.is_file() or sha256_file(path) != info.sha256:
            raise BuildError(f"{path}: missing or changed since manifest.json listed it; build the stack again")
        yield info, path


def creator() -> str:
    return f"swstack {__version__}"


# ----------------------------------------------------------------------------- in the registry

EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag schema: registries without the referrers API list them here."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}"


def render_referrer(subject: Mapping[str, Any], info: AttestationInfo, size: int, created: str) -> bytes:
    """An OCI artifact manifest carrying one attestation file, whose ``subject`` is the image or artifact."""
    from .oci import CREATED, TITLE, Descriptor, digest_of, render_manifest

    return render_manifest(
        config=Descriptor(EMPTY_CONFIG_TYPE, digest_of(EMPTY_CONFIG), len(EMPTY_CONFIG)),
        layers=(Descriptor(info.media_type, f"sha256:{info.sha256}", size, {TITLE: info.name}),),
        annotations={CREATED: created},
        artifact_type=info.media_type,
        subject=subject,
    )


def attach_attestations(client: Any, repository: str, subject_digest: str, artifact_dir: Path) -> list[str]:
    """Push the artifact's attestations as referrers of ``repository@subject_digest``; their digests.

    The referrers index (tag ``sha256-<hex>``) keeps entries of other artifact types and is
    rewritten with ours, so pushing twice leaves one entry per type.
    """
    from .oci import OCI_INDEX, OCI_MANIFEST, Blob, Descriptor, canonical_json, digest_of, push_manifest

    manifest = Manifest.load(artifact_dir / "manifest.json")
    subject_doc = client.get_manifest(repository, subject_digest)
    subject = {"mediaType": subject_doc.media_type, "digest": subject_doc.digest, "size": len(subject_doc.data)}
    config = Blob(Descriptor(EMPTY_CONFIG_TYPE, digest_of(EMPTY_CONFIG), len(EMPTY_CONFIG)), EMPTY_CONFIG)
    entries: list[dict[str, Any]] = []
    for info, path in attestations_of(artifact_dir):
        size = path.stat().st_size
        referrer = render_referrer(subject, info, size, manifest.build_time)
        document = Blob(Descriptor(info.media_type, f"sha256:{info.sha256}", size), path)
        digest = push_manifest(client, repository, (config, document), referrer).digest
        entries.append(
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(referrer), "artifactType": info.media_type}
        )
    tag = referrers_tag(subject_digest)
    ours = {e["artifactType"] for e in entries}
    kept: list[dict[str, Any]] = []
    if client.head_manifest(repository, tag) is not None:
        kept = [
            m
            for m in client.get_manifest(repository, tag).json().get("manifests") or []
            if m.get("artifactType") not in ours
        ]
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": kept + entries})
    client.put_manifest(repository, tag, index, OCI_INDEX)
    log.info(f"{repository}@{subject_digest[:19]}: {len(entries)} attestation(s) attached (referrers tag {tag[:19]}…)")
    return [e["digest"] for e in entries]
