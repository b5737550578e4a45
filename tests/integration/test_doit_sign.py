"""`doit keygen`, `doit sign` and `doit publish` signing, as a user types them, then a host that requires it."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from tests.support.host import make_artifact, swstack_argv
from tests.support.project import doit
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - the `registry` fixture

from swstack import attest, trust
from swstack.errors import ActivateError
from swstack.oci import RegistryClient

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.registry]


@pytest.fixture()
def project(tmp_path: Path, registry: LocalRegistry) -> Path:  # noqa: F811
    """A project with the stacks and dodo.py, a site on the test registry whose keys live in tmp."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copytree(PROJECT / "stacks", root / "stacks")
    shutil.copy(PROJECT / "dodo.py", root / "dodo.py")
    (root / "site.toml").write_text(
        'name = "signing-test"\n'
        f'artifacts = "{root / "artifacts"}"\n'
        f'[registry]\nurl = "{registry.host}"\n'
        f'[signing]\nkeys = "{tmp_path / "keys"}"\nlookaside = "{tmp_path / "lookaside"}"\n'
    )
    return root


def test_keygen_sign_publish_then_a_host_requiring_the_key(
    project: Path,
    tmp_path: Path,
    registry: LocalRegistry,  # noqa: F811
) -> None:
    site = "site=site.toml"
    made = doit(project, "keygen", site)
    assert made.returncode == 0, made.stdout + made.stderr
    keys = tmp_path / "keys"
    private = (keys / "cosign.key").read_text()
    assert stat.S_IMODE((keys / "cosign.key").stat().st_mode) == 0o600
    assert (keys / "cosign.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert (keys / "openpgp.pub").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    body = private.splitlines()[1]
    assert body not in made.stdout + made.stderr  # no key material in what a user or CI log sees
    again = doit(project, "keygen", site)
    assert again.returncode == 13 and "already there" in again.stderr

    artifact = make_artifact(project / "artifacts" / "py3" / "2026.05.01", version="2026.05.01")
    attest.attest_artifact(artifact)
    signed = doit(project, "sign", "stack=py3", site)
    assert signed.returncode == 0, signed.stdout + signed.stderr
    for name in ("manifest.json", attest.SBOM_NAME, attest.PROVENANCE_NAME):
        path = artifact / name
        assert trust.verify_blob(path.read_bytes(), path.with_name(name + ".sig"), [keys / "cosign.pub"], ActivateError)
    for path in artifact.rglob("*"):
        if path.is_file():
            assert body not in path.read_text(errors="replace"), path

    published = doit(project, "publish", "stack=py3", site)
    assert published.returncode == 0, published.stdout + published.stderr
    host_root = tmp_path / "host"
    host_root.mkdir()
    ref = f"{registry.host}/py3:2026.05.01"
    client = RegistryClient(registry.host)
    digest = client.head_manifest("py3", "2026.05.01")
    assert digest and client.head_manifest("py3", trust.signature_tag(digest)) is not None
    result = subprocess.run(
        swstack_argv(
            "activate", ref, "--root", str(host_root), "--require-signature", "--trusted-key", str(keys / "cosign.pub")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verified = subprocess.run(
        swstack_argv("verify", ref, "--trusted-key", str(keys / "cosign.pub")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0 and "signed by   cosign.pub" in verified.stdout, verified.stdout + verified.stderr


def test_sign_after_an_unsigned_publish_signs_the_attestations_too(
    project: Path,
    tmp_path: Path,
    registry: LocalRegistry,  # noqa: F811
) -> None:
    """Published before the site had a key, then `doit keygen` and `doit sign`: `swstack verify`
    checks the provenance referrer's signature too, so `doit sign` must have signed it."""
    site = "site=site.toml"
    artifact = make_artifact(project / "artifacts" / "py3" / "2026.05.02", version="2026.05.02")
    attest.attest_artifact(artifact)
    published = doit(project, "publish", "stack=py3", site)
    assert published.returncode == 0 and "nothing signed" in published.stderr, published.stdout + published.stderr
    assert doit(project, "keygen", site).returncode == 0
    signed = doit(project, "sign", "stack=py3", site)
    assert signed.returncode == 0, signed.stdout + signed.stderr
    key = tmp_path / "keys" / "cosign.pub"
    verified = subprocess.run(
        swstack_argv("verify", f"{registry.host}/py3:2026.05.02", "--trusted-key", str(key)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0 and "signed by   cosign.pub" in verified.stdout, verified.stdout + verified.stderr
