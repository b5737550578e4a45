"""`swstack verify ARTIFACT`: who built what from which inputs, from a directory or the registry, checked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.support.host import make_artifact, swstack_argv
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - the `registry` fixture

from swstack import attest, sign
from swstack.manifest import Manifest
from swstack.oci import RegistryClient
from swstack.publish import publish_artifact

BUILDER = "sha256:" + "7" * 64


def swstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(swstack_argv(*args), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> sign.KeyDir:
    root = tmp_path_factory.mktemp("keys")
    sign.generate_key(root / "cosign.key")
    return sign.KeyDir(root)


def _attested(root: Path, version: str) -> Path:
    artifact = make_artifact(root, version=version)
    attest.attest_artifact(artifact, builder_image="swstack/builder:test", builder_digest=BUILDER)
    return artifact


def test_verify_a_signed_directory_then_tampered_and_unsigned(tmp_path: Path, keys: sign.KeyDir) -> None:
    artifact = _attested(tmp_path / "a", "2026.03.01")
    sign.sign_artifact_files(artifact, keys)
    manifest = Manifest.load(artifact / "manifest.json")
    result = swstack("verify", str(artifact), "--trusted-key", str(keys.cosign_pub), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stack"] == "py3" and report["version"] == "2026.03.01"
    assert manifest.tarball is not None and report["tarball_sha256"] == manifest.tarball.sha256
    assert report["inputs"]["lockfile"] == manifest.lockfile_sha256
    assert report["inputs"]["stack file"] == manifest.stackfile_sha256
    assert report["builder_image"] == f"swstack/builder:test@{BUILDER}"
    assert report["tools"] == manifest.tools and report["signed_by"] == ["cosign.pub"]
    text = swstack("verify", str(artifact), "--trusted-key", str(keys.cosign_pub))
    assert text.returncode == 0 and "from        lockfile" in text.stdout and "signed by   cosign.pub" in text.stdout

    # The provenance edited after signing: its sha256 no longer matches manifest.json's list.
    statement = json.loads((artifact / attest.PROVENANCE_NAME).read_text())
    statement["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example"
    (artifact / attest.PROVENANCE_NAME).write_text(json.dumps(statement))
    bad = swstack("verify", str(artifact), "--trusted-key", str(keys.cosign_pub))
    assert bad.returncode == 11 and "altered" in bad.stderr and "Traceback" not in bad.stderr

    unsigned = _attested(tmp_path / "b", "2026.03.02")
    refused = swstack("verify", str(unsigned), "--trusted-key", str(keys.cosign_pub))
    assert refused.returncode == 11 and "unsigned" in refused.stderr
    unchecked = swstack("verify", str(unsigned))
    assert unchecked.returncode == 0 and "not checked" in unchecked.stdout


@pytest.mark.registry
def test_verify_a_published_artifact(tmp_path: Path, keys: sign.KeyDir, registry: LocalRegistry) -> None:  # noqa: F811
    artifact = _attested(tmp_path / "a", "2026.03.03")
    ref = f"{registry.host}/verify/py3:2026.03.03"
    digest = publish_artifact(artifact, ref)
    client = RegistryClient(registry.host)
    referrers = attest.attach_attestations(client, "verify/py3", digest, artifact)
    unsigned = swstack("verify", ref, "--trusted-key", str(keys.cosign_pub))
    assert unsigned.returncode == 11 and "unsigned" in unsigned.stderr
    for signed in (digest, *referrers):
        sign.sign_in_registry(client, "verify/py3", signed, sign.load_key(keys.cosign_key))
    result = swstack("verify", ref, "--trusted-key", str(keys.cosign_pub), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = Manifest.load(artifact / "manifest.json")
    assert report["inputs"]["lockfile"] == manifest.lockfile_sha256 and report["signed_by"] == ["cosign.pub"]
    assert manifest.tarball is not None and report["tarball_sha256"] == manifest.tarball.sha256


def _one_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 11 and "Traceback" not in result.stderr, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swstack verify: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "statement",
    [
        {"subject": ["py3.tar.zst"]},
        {"predicate": [1]},
        {"predicate": {"buildDefinition": {"resolvedDependencies": ["lockfile"]}}},
        {"predicate": {"runDetails": {"builder": {"builderDependencies": [{"name": "builder"}]}}}},
    ],
)
def test_a_provenance_of_the_wrong_shape_is_one_line(tmp_path: Path, statement: dict[str, object]) -> None:
    """Not listed in manifest.json (an artifact attested by hand, say), so read as it is: JSON
    of the wrong shape is a refusal, exit 11, not a traceback."""
    artifact = make_artifact(tmp_path / "a", version="2026.03.03")
    manifest = Manifest.load(artifact / "manifest.json")
    assert manifest.tarball is not None
    subject = [{"name": manifest.tarball.name, "digest": {"sha256": manifest.tarball.sha256}}]
    doc = {"predicateType": "https://slsa.dev/provenance/v1", "subject": subject, **statement}
    (artifact / attest.PROVENANCE_NAME).write_text(json.dumps(doc))
    assert "the provenance is not an SLSA provenance statement" in _one_refusal(swstack("verify", str(artifact)))


def test_a_registry_answer_of_the_wrong_shape_is_one_line(tmp_path: Path) -> None:
    from tests.support.registry import artifact_routes, scripted_registry

    from swstack.oci import OCI_INDEX, OCI_MANIFEST, digest_of

    routes, _doc = artifact_routes(make_artifact(tmp_path / "a", version="2026.03.04"), "py3", "t")
    referrers = f"/v2/py3/manifests/{digest_of(routes['/v2/py3/manifests/t'][2]).replace(':', '-', 1)}"
    referrer = json.dumps({"subject": {"digest": digest_of(routes["/v2/py3/manifests/t"][2])}, "layers": "x"}).encode()
    listing = {"manifests": [{"artifactType": "application/vnd.in-toto+json", "digest": digest_of(referrer)}]}
    cases = {
        "served a manifest that is not a JSON object": {
            "/v2/py3/manifests/t": (200, {"Content-Type": OCI_MANIFEST}, b"?"),
        },
        "no provenance among its referrers": {referrers: (200, {"Content-Type": OCI_INDEX}, b'{"manifests": ["a"]}')},
        "the provenance referrer has no layer": {
            referrers: (200, {"Content-Type": OCI_INDEX}, json.dumps(listing).encode()),
            f"/v2/py3/manifests/{digest_of(referrer)}": (200, {"Content-Type": OCI_MANIFEST}, referrer),
        },
    }
    for message, answers in cases.items():
        with scripted_registry({**routes, **answers}) as host:
            assert message in _one_refusal(swstack("verify", f"{host}/py3:t"))


def test_a_url_is_refused_saying_what_verify_reads() -> None:
    message = _one_refusal(swstack("verify", "https://artifacts.example.org/py3/1/py3-1-linux-64.tar.zst"))
    assert "verify reads an artifact directory, a tarball or an OCI reference, not a URL" in message
    # A path that is not there names what verify reads, not activate's http(s) URLs.
    message = _one_refusal(swstack("verify", "/nonexistent/py3/1"))
    assert message.endswith("no such file or directory (expected an artifact directory, a tarball or an OCI reference)")
