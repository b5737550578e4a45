"""SBOM and provenance of an artifact: CycloneDX valid by cyclonedx-python-lib's own validator,
purls, hashes and licences from the tree's metadata, listed in manifest.json, reproducible."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from tests.support.artifacts import write_artifact

from swstack import attest
from swstack.host.verify import check_in_tree_manifest
from swstack.manifest import IN_TREE_PATH, Manifest, PackageEntry

SITE = "lib/python3.11/site-packages"
CHANNEL = "https://conda.anaconda.org/conda-forge"


def _artifact(root: Path) -> Path:
    packages = (
        PackageEntry("numpy", "1.26.4", "py311h64a7726_0", CHANNEL, "c" * 64, 100, "conda"),
        PackageEntry("python", "3.11.9", "hab00c5b_0", CHANNEL, "d" * 64, 100, "conda"),
        PackageEntry("tzdata", "2024a", "h0c530f3_0", CHANNEL, "e" * 64, 100, "conda"),
        PackageEntry("Lab_Client", "1.0.0", "", "https://pypi.org/simple", "f" * 64, 0, "pip"),
    )
    manifest = Manifest(
        stack="py3",
        variant="stable",
        version="2026.11.21",
        platform="linux-64",
        prefix="/data0/sw/py3",
        lockfile_sha256="1" * 64,
        stackfile_sha256="2" * 64,
        tools={"swstack": "0.1.0", "conda-pack": "0.9.2"},
        packages=packages,
        file_count=4,
        total_size=100,
        git_commit="a" * 40,
        build_time="2026-11-21T10:00:00Z",
        source_date_epoch=1_700_000_000,
    )
    files = {
        "conda-meta/numpy-1.26.4-py311h64a7726_0.json": json.dumps({"name": "numpy", "license": "BSD-3-Clause"}),
        "conda-meta/python-3.11.9-hab00c5b_0.json": json.dumps({"name": "python", "license": "Python-2.0"}),
        "conda-meta/tzdata-2024a-h0c530f3_0.json": json.dumps({"name": "tzdata"}),  # no licence recorded
        f"{SITE}/lab_client-1.0.0.dist-info/METADATA": "Metadata-Version: 2.4\nName: Lab_Client\nVersion: 1.0.0\n"
        "License-Expression: MIT\n",
        IN_TREE_PATH: manifest.without_tarball().to_json(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return write_artifact(root, manifest, raw.getvalue())


def test_sbom_is_valid_cyclonedx_with_purls_hashes_and_licences(tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    artifact = _artifact(tmp_path)
    manifest = attest.attest_artifact(artifact)
    text = (artifact / attest.SBOM_NAME).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    by_name = {c["name"]: c for c in doc["components"]}
    assert by_name["numpy"]["purl"] == (
        "pkg:conda/numpy@1.26.4?build=py311h64a7726_0&channel=conda-forge&subdir=linux-64"
    )
    assert by_name["Lab_Client"]["purl"] == "pkg:pypi/lab-client@1.0.0"
    assert by_name["numpy"]["hashes"] == [{"alg": "SHA-256", "content": "c" * 64}]
    assert by_name["numpy"]["licenses"] == [{"license": {"id": "BSD-3-Clause"}}]
    assert by_name["Lab_Client"]["licenses"] == [{"license": {"id": "MIT"}}]
    assert "licenses" not in by_name["tzdata"]
    assert doc["metadata"]["component"]["name"] == "py3" and doc["metadata"]["component"]["version"] == "2026.11.21"
    # Listed in manifest.json with its sha256; the in-tree copy still matches (attestations are outside it).
    listed = {a.name: a for a in Manifest.load(artifact / "manifest.json").attestations}
    assert listed[attest.SBOM_NAME].sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert listed[attest.SBOM_NAME].media_type == "application/vnd.cyclonedx+json"
    check_in_tree_manifest(manifest.without_tarball().to_json(), manifest, "test")


def test_an_invalid_sbom_is_refused() -> None:
    import pytest

    from swstack.errors import BuildError

    with pytest.raises(BuildError, match="not valid CycloneDX"):
        attest.validate_sbom(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": "nope"}))


def test_provenance_names_inputs_tools_builder_and_commit(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path)
    manifest = attest.attest_artifact(
        artifact, builder_image="swstack/builder:abc", builder_digest="sha256:" + "9" * 64
    )
    statement = json.loads((artifact / attest.PROVENANCE_NAME).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert manifest.tarball is not None
    assert statement["subject"] == [{"name": manifest.tarball.name, "digest": {"sha256": manifest.tarball.sha256}}]
    deps = {d["name"]: d["digest"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps == {
        "lockfile": {"sha256": "1" * 64},
        "stack file": {"sha256": "2" * 64},
        "swstack checkout": {"gitCommit": "a" * 40},
    }
    builder = statement["predicate"]["runDetails"]["builder"]
    assert builder["version"] == {"conda-pack": "0.9.2", "swstack": "0.1.0"}
    assert builder["builderDependencies"] == [{"name": "swstack/builder:abc", "digest": {"sha256": "9" * 64}}]


def test_attesting_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path)
    attest.attest_artifact(artifact)
    first = {n: (artifact / n).read_bytes() for n in (attest.SBOM_NAME, attest.PROVENANCE_NAME, "manifest.json")}
    attest.attest_artifact(artifact)
    assert {n: (artifact / n).read_bytes() for n in first} == first
