"""``plan_publish``: an artifact directory -> the blobs and the OCI manifest to push (nothing is sent)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.artifacts import make_artifact

from swstack.artifact import ARTIFACT_TYPE, STACK_MANIFEST_TYPE, TARBALL_TYPES
from swstack.errors import PushError
from swstack.manifest import Manifest
from swstack.oci import OCI_MANIFEST
from swstack.publish import plan_publish


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifacts", stack="demo", version="2026.11.21")


def _manifest(artifact: Path) -> Manifest:
    return Manifest.load(artifact / "manifest.json")


def test_the_plan_pushes_manifest_and_tarball_then_the_oci_manifest(artifact: Path) -> None:
    manifest = _manifest(artifact)
    assert manifest.tarball is not None
    tarball = artifact / manifest.tarball.name
    plan = plan_publish(artifact, "127.0.0.1:5000/demo")

    assert (plan.ref.registry, plan.ref.repository, plan.ref.tag) == ("127.0.0.1:5000", "demo", "2026.11.21")
    man_blob, tar_blob = plan.blobs
    manifest_bytes = (artifact / "manifest.json").read_bytes()
    assert man_blob.source == manifest_bytes
    assert man_blob.descriptor.digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert tar_blob.source == tarball
    assert tar_blob.descriptor.digest == "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert tar_blob.descriptor.size == tarball.stat().st_size
    assert tar_blob.descriptor.media_type == TARBALL_TYPES["zstd"]

    doc = json.loads(plan.manifest)
    assert doc["mediaType"] == OCI_MANIFEST and doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == STACK_MANIFEST_TYPE
    assert doc["config"]["digest"] == man_blob.descriptor.digest
    assert [layer["digest"] for layer in doc["layers"]] == [tar_blob.descriptor.digest, man_blob.descriptor.digest]
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in doc["layers"]] == [
        tarball.name,
        "manifest.json",
    ]
    assert doc["annotations"] == {
        "io.swstack.stack": "demo",
        "org.opencontainers.image.version": "2026.11.21",
        "io.swstack.platform": "linux-64",
        "org.opencontainers.image.created": "2026-11-21T00:00:00+00:00",
    }
    assert plan.digest == "sha256:" + hashlib.sha256(plan.manifest).hexdigest()


def test_one_artifact_always_renders_one_digest(artifact: Path) -> None:
    assert plan_publish(artifact, "r.example.org/demo").digest == plan_publish(artifact, "r.example.org/demo").digest
    assert plan_publish(artifact, "r.example.org/demo:latest").ref.tag == "latest"


def test_a_variant_publishes_under_its_stack_id(artifact: Path) -> None:
    manifest = replace(_manifest(artifact), variant="edge", default_variant="lts")
    (artifact / "manifest.json").write_text(manifest.to_json())
    doc = json.loads(plan_publish(artifact, "r.example.org/demo-edge").manifest)
    assert doc["annotations"]["io.swstack.stack"] == "demo-edge"


def test_no_sha256_side_file_is_fine(artifact: Path) -> None:
    for side in artifact.glob("*.sha256"):
        side.unlink()
    assert len(plan_publish(artifact, "r.example.org/demo").blobs) == 2


def _tarball(artifact: Path) -> Path:
    info = _manifest(artifact).tarball
    assert info is not None
    return artifact / info.name


def _break_json(artifact: Path) -> None:
    (artifact / "manifest.json").write_text("{not json")


def _drop_tarball_section(artifact: Path) -> None:
    (artifact / "manifest.json").write_text(replace(_manifest(artifact), tarball=None).to_json())


def _unknown_compression(artifact: Path) -> None:
    manifest = _manifest(artifact)
    assert manifest.tarball is not None
    broken = replace(manifest, tarball=replace(manifest.tarball, compression="xz"))
    (artifact / "manifest.json").write_text(broken.to_json())


def _grow_tarball(artifact: Path) -> None:
    with open(_tarball(artifact), "ab") as fh:
        fh.write(b"x")


def _alter_tarball(artifact: Path) -> None:
    """Same size, other bytes: only hashing the tarball finds it."""
    tarball = _tarball(artifact)
    data = bytearray(tarball.read_bytes())
    data[-1] ^= 0xFF
    tarball.write_bytes(bytes(data))


def _other_side_file(artifact: Path) -> None:
    tarball = _tarball(artifact)
    tarball.with_name(tarball.name + ".sha256").write_text(f"{'0' * 64}  {tarball.name}\n")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda a: (a / "manifest.json").unlink(),
            r"no manifest\.json, so no complete artifact .*; pack the stack again",
        ),
        (_break_json, r"manifest\.json: not a swstack manifest .*; pack the stack again"),
        (_drop_tarball_section, r"manifest\.json: has no 'tarball' section"),
        (lambda a: _tarball(a).unlink(), r"\.tar\.zst: missing \(named by .*manifest\.json\)"),
        (_grow_tarball, r"\.tar\.zst: \d+ bytes but manifest\.json says \d+"),
        (
            _alter_tarball,
            r"\.tar\.zst has sha256 [0-9a-f]{64}, manifest\.json records [0-9a-f]{64}; pack the stack again$",
        ),
        (_other_side_file, r"\.tar\.zst\.sha256 disagrees with manifest\.json"),
        (_unknown_compression, r"unknown tarball compression 'xz' \(zstd or gzip\)"),
    ],
    ids=["no-manifest", "bad-json", "no-tarball-section", "no-tarball", "size", "bytes", "side-file", "compression"],
)
def test_a_damaged_artifact_is_refused_before_anything_is_sent(artifact: Path, damage: object, expected: str) -> None:
    damage(artifact)  # type: ignore[operator]
    with pytest.raises(PushError, match=expected) as caught:
        plan_publish(artifact, "r.example.org/demo")
    assert "\n" not in str(caught.value)  # one line


def test_publishing_a_damaged_tarball_sends_nothing(artifact: Path) -> None:
    from swstack.publish import publish_artifact

    class NoRegistry:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the registry was asked ({name}) before the tarball was checked")

    _alter_tarball(artifact)
    with pytest.raises(PushError, match="has sha256"):
        publish_artifact(artifact, "r.example.org/demo", client=NoRegistry())  # type: ignore[arg-type]
