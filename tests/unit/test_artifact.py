"""``artifact``: one reading of an artifact directory, its side file and its OCI form, for every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.artifacts import make_artifact

from swstack import artifact
from swstack.artifact import ArtifactError
from swstack.errors import ActivateError, ImageError, PushError
from swstack.manifest import Manifest
from swstack.oci import OCI_MANIFEST, TITLE, Descriptor

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifacts", stack="demo", version="2026.11.21")


def _manifest(art: Path) -> Manifest:
    return Manifest.load(art / "manifest.json")


def _tarball(art: Path) -> Path:
    info = _manifest(art).tarball
    assert info is not None
    return art / info.name


# -- the side file


def test_the_side_file_is_one_sha256sum_line_and_reads_back() -> None:
    line = artifact.checksum_line("ab" * 32, "x.tar.zst")
    assert line == f"{'ab' * 32}  x.tar.zst\n"
    assert artifact.parse_checksum(line, "x.tar.zst") == "ab" * 32
    assert artifact.checksum_path(Path("/a/x.tar.zst")) == Path("/a/x.tar.zst.sha256")


@pytest.mark.parametrize(
    "text",
    [
        f"{'AB' * 32} *x.tar.zst\n",
        f"{'ab' * 32}  ./x.tar.zst\n",
        f"{'ab' * 32}\n",
        f"{'0' * 64}  y\n{'ab' * 32}  x.tar.zst\n",
    ],
    ids=["binary-mode", "dot-slash", "lone-hash", "among-others"],
)
def test_sha256sum_spellings_are_read(text: str) -> None:
    assert artifact.parse_checksum(text, "x.tar.zst") == "ab" * 32


@pytest.mark.parametrize("text", ["", "not a hash\n", f"{'ab' * 32}  other.tar.zst\n{'cd' * 32}  more\n"])
def test_a_side_file_without_our_sha256_is_refused(text: str) -> None:
    with pytest.raises(ArtifactError, match=r"x\.tar\.zst\.sha256: no sha256 for x\.tar\.zst in it"):
        artifact.parse_checksum(text, "x.tar.zst")


def test_read_checksum_is_none_without_a_side_file(art: Path) -> None:
    tarball = _tarball(art)
    assert artifact.read_checksum(tarball) == hashlib.sha256(tarball.read_bytes()).hexdigest()
    artifact.checksum_path(tarball).unlink()
    assert artifact.read_checksum(tarball) is None


# -- the directory


def test_open_artifact_finds_manifest_and_tarball(art: Path) -> None:
    opened = artifact.open_artifact(art)
    assert opened.manifest == _manifest(art)
    assert opened.tarball == _tarball(art) and opened.manifest_path == art / "manifest.json"
    artifact.check_side_files(opened)  # a fresh artifact agrees with itself
    assert artifact.damage(art, opened.manifest) is None


def _drop_tarball_section(art: Path) -> None:
    (art / "manifest.json").write_text(replace(_manifest(art), tarball=None).to_json())


def _unsafe_name(art: Path) -> None:
    manifest = _manifest(art)
    assert manifest.tarball is not None
    (art / "manifest.json").write_text(replace(manifest, tarball=replace(manifest.tarball, name="../x")).to_json())


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda a: (a / "manifest.json").unlink(), r"artifacts: no manifest\.json, so no complete artifact"),
        (lambda a: (a / "manifest.json").write_text("{not json"), r"manifest\.json: not a swstack manifest \("),
        (_drop_tarball_section, r"manifest\.json: has no 'tarball' section$"),
        (_unsafe_name, r"tarball\.name '\.\./x' is not a file name beside manifest\.json"),
        (lambda a: _tarball(a).unlink(), r"\.tar\.zst: missing \(named by .*manifest\.json\)"),
    ],
    ids=["no-manifest", "bad-json", "no-tarball-section", "unsafe-name", "no-tarball"],
)
def test_an_incomplete_directory_is_refused_with_one_line(art: Path, damage: object, expected: str) -> None:
    damage(art)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=expected) as caught:
        artifact.open_artifact(art)
    assert "\n" not in str(caught.value)


def test_a_manifest_file_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing; an artifact carries manifest\.json beside"):
        artifact.load_manifest(tmp_path / "manifest.json")


def test_side_files_must_agree_with_the_manifest(art: Path) -> None:
    tarball = _tarball(art)
    artifact.checksum_path(tarball).write_text(artifact.checksum_line("0" * 64, tarball.name))
    with pytest.raises(ArtifactError, match=r"\.tar\.zst\.sha256 disagrees with manifest\.json"):
        artifact.check_side_files(artifact.open_artifact(art))
    artifact.checksum_path(tarball).unlink()
    artifact.check_side_files(artifact.open_artifact(art))  # no side file: the manifest alone describes it
    with open(tarball, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ArtifactError, match=r"\.tar\.zst: \d+ bytes but manifest\.json says \d+"):
        artifact.check_side_files(artifact.open_artifact(art))


def test_damage_hashes_the_tarball(art: Path) -> None:
    tarball, manifest = _tarball(art), _manifest(art)
    data = bytearray(tarball.read_bytes())
    data[-1] ^= 1
    tarball.write_bytes(bytes(data))  # same size, other bytes
    assert f"{tarball} has sha256 " in (artifact.damage(art, manifest) or "")
    artifact.checksum_path(tarball).write_text("0" * 64 + "\n")
    assert "does not name the tarball" in (artifact.damage(art, manifest) or "")
    artifact.checksum_path(tarball).unlink()
    assert artifact.damage(art, manifest) == f"{artifact.checksum_path(tarball)} is missing"
    tarball.unlink()
    assert artifact.damage(art, manifest) == f"{tarball} is missing"
    assert "names no tarball" in (artifact.damage(art, replace(manifest, tarball=None)) or "")


@pytest.mark.parametrize(("error", "code"), [(ActivateError, 11), (ImageError, 9), (PushError, 10)])
def test_each_stage_reraises_as_its_own_error(tmp_path: Path, error: type[Exception], code: int) -> None:
    expected = r"no manifest\.json, so no complete artifact .*; do this"
    with pytest.raises(error, match=expected) as caught, artifact.reraise(error, "do this"):  # type: ignore[arg-type]
        artifact.open_artifact(tmp_path)
    assert getattr(caught.value, "exit_code", None) == code
    assert not isinstance(caught.value, ArtifactError)


# -- the OCI artifact


def _artifact_manifest(title: str = "py3-1-linux-64.tar.zst") -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "artifactType": artifact.ARTIFACT_TYPE,
        "config": {"mediaType": artifact.STACK_MANIFEST_TYPE, "digest": DIGEST, "size": 10},
        "layers": [
            {
                "mediaType": artifact.TARBALL_TYPES["zstd"],
                "digest": DIGEST,
                "size": 5,
                "annotations": {TITLE: title},
            },
            {"mediaType": artifact.STACK_MANIFEST_TYPE, "digest": DIGEST, "size": 10},
        ],
    }


def test_artifact_layout_finds_both_layers() -> None:
    layout = artifact.artifact_layout(_artifact_manifest(), error=ActivateError)
    assert layout.tarball.annotations[TITLE] == "py3-1-linux-64.tar.zst"
    assert layout.manifest.media_type == artifact.STACK_MANIFEST_TYPE


@pytest.mark.parametrize("title", ["../evil.tar.zst", "/etc/passwd", "", ".hidden", "a/b.tar.zst"])
def test_artifact_layout_refuses_unsafe_titles(title: str) -> None:
    with pytest.raises(ActivateError, match="not a plain file name"):
        artifact.artifact_layout(_artifact_manifest(title), error=ActivateError)


def test_artifact_layout_refuses_container_images() -> None:
    image = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 1},
        "layers": [],
    }
    with pytest.raises(ActivateError, match=r"a container image, not a swstack stack artifact .*; a stack's "
                       r"artifact is published beside its image, as <registry>/<stack>:<version> \(`doit publish`\)"):
        artifact.artifact_layout(image, error=ActivateError)


def test_the_rendered_artifact_manifest_reads_back(art: Path) -> None:
    manifest, tarball = _manifest(art), _tarball(art)
    manifest_bytes = (art / "manifest.json").read_bytes()
    layer = Descriptor(
        artifact.tarball_media_type(manifest),
        "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest(),
        tarball.stat().st_size,
        {TITLE: tarball.name},
    )
    manifest_layer, rendered = artifact.render_artifact_manifest(manifest, manifest_bytes, layer)
    doc = json.loads(rendered)
    assert doc["mediaType"] == OCI_MANIFEST and doc["artifactType"] == artifact.ARTIFACT_TYPE
    assert doc["annotations"] == artifact.artifact_annotations(manifest)
    layout = artifact.artifact_layout(doc, error=PushError)
    assert layout.tarball == layer and layout.manifest == manifest_layer
    assert manifest_layer.digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def test_an_unknown_compression_has_no_media_type(art: Path) -> None:
    manifest = _manifest(art)
    assert manifest.tarball is not None
    broken = replace(manifest, tarball=replace(manifest.tarball, compression="xz"))
    with pytest.raises(ArtifactError, match=r"unknown tarball compression 'xz' \(zstd or gzip\)"):
        artifact.tarball_media_type(broken)


def test_reading_an_artifact_loads_no_http_client() -> None:
    """The host reads local artifacts with this module; only OCI sources need ``oci`` (and ssl, http)."""
    import subprocess
    import sys

    code = (
        "import sys, swstack.artifact\n"
        "print(sorted(m for m in ('swstack.oci', 'http.client', 'ssl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
