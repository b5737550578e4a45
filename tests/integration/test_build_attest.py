"""A real build ends with its SBOM and provenance: valid CycloneDX for the real packages, the real inputs."""

from __future__ import annotations

import json
from pathlib import Path

from swstack import attest
from swstack.fsutil import sha256_file
from swstack.manifest import Manifest


def test_real_build_has_a_valid_sbom_and_provenance(py3_artifact: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    manifest = Manifest.load(py3_artifact / "manifest.json")
    listed = {a.name: a.sha256 for a in manifest.attestations}
    assert listed == {
        attest.SBOM_NAME: sha256_file(py3_artifact / attest.SBOM_NAME),
        attest.PROVENANCE_NAME: sha256_file(py3_artifact / attest.PROVENANCE_NAME),
    }
    text = (py3_artifact / attest.SBOM_NAME).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    components = json.loads(text)["components"]
    assert len(components) == len(manifest.packages)
    purls = {c["purl"].split("@")[0] for c in components}
    conda = {p.name for p in manifest.packages if p.manager == "conda"}
    assert {f"pkg:conda/{name.lower()}" for name in conda} <= purls
    python = next(c for c in components if c["name"] == "python")
    assert python["hashes"][0]["alg"] == "SHA-256" and len(python["hashes"][0]["content"]) == 64
    with_licence = [c for c in components if c.get("licenses")]
    assert with_licence, "the offline channel's packages record licences"
    statement = json.loads((py3_artifact / attest.PROVENANCE_NAME).read_text())
    assert manifest.tarball is not None
    assert statement["subject"][0]["digest"]["sha256"] == manifest.tarball.sha256
    deps = {d["name"]: d["digest"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["lockfile"] == {"sha256": manifest.lockfile_sha256}
