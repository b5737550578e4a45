"""Our signatures as standard clients check them: podman and skopeo under a signedBy policy.

The image is ours, pushed to the test registry and signed by ``sign.py`` twice: cosign's
``sha256-<digest>.sig`` tag in the registry (checked by ``trust.py``, what hosts use) and
an OpenPGP simple signing in a lookaside store, which Debian's containers/image reads
through a private registries.d and verifies under a ``signedBy`` policy. (Debian builds
containers/image with sigstore verification disabled: its podman and skopeo answer a
``sigstoreSigned`` policy with "sigstore disabled", so they cannot check cosign's format.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.clients import Clients, need
from tests.support.imagekit import (
    PROJECT,
    SINGLEUSER,
    image_site,  # noqa: F401 - fixture
    make_env_artifact,
    py3_stack,
)
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - the `registry` fixture

from swstack import sign, trust
from swstack.errors import ActivateError
from swstack.image import PushResult, build_image, push_image
from swstack.oci import RegistryClient, parse_reference
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]

SMALL_CONDA = {
    "python": ("3.11.9", {"bin/python3.11": 100_000}),
    "sitepaths": ("0.1.0", {"bin/sitepaths": 4_000}),
    **SINGLEUSER,
}


@dataclass(frozen=True)
class Keys:
    site: sign.KeyDir
    lookaside: Path
    other_public: Path  # a cosign key that signed nothing here

    @property
    def private(self) -> Path:
        return self.site.cosign_key

    @property
    def public(self) -> Path:
        return self.site.cosign_pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    site = sign.keygen(root / "site", "swstack test site <test@localhost>")
    other = sign.generate_key(root / "other.key")
    return Keys(site, root / "lookaside", other)


def _push(root: Path, site: Site, version: str) -> PushResult:
    artifact = make_env_artifact(root, version, conda=SMALL_CONDA)
    return push_image(build_image(py3_stack(), site, PROJECT, artifact), tags=[version])


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory,
    image_site: Site,  # noqa: F811
    keys: Keys,
) -> tuple[PushResult, PushResult]:
    """(signed, unsigned): two pushed images of the same repository; the first signed with our key."""
    root = tmp_path_factory.mktemp("artifacts")
    signed = _push(root, image_site, "2026.12.01")
    unsigned = _push(root, image_site, "2026.12.02")
    target = parse_reference(signed.repository, default_tag=None)
    sign.sign_image(keys.site, keys.lookaside, target.registry, target.repository, signed.digest, 1_764_000_000)
    return signed, unsigned


def _policy(registry: str, key: Path) -> dict[str, object]:
    """Reject everything but images of ``registry`` signed by ``key`` for their own repository."""
    rule = {
        "type": "signedBy",
        "keyType": "GPGKeys",
        "keyPath": str(key),
        "signedIdentity": {"type": "matchRepository"},
    }
    return {"default": [{"type": "reject"}], "transports": {"docker": {registry: [rule]}}}


@pytest.fixture()
def clients(tmp_path: Path, registry: LocalRegistry, keys: Keys) -> Iterator[Clients]:  # noqa: F811
    made = Clients.make(tmp_path / "clients", _policy(registry.host, keys.site.openpgp_pub))
    made.use_lookaside(registry.host, keys.lookaside)
    yield made
    made.close()


def _pull(clients: Clients, ref: str) -> tuple[int, str]:
    result = clients.run(clients.podman("pull", "--tls-verify=false", ref), check=False)
    return result.returncode, result.stderr


def test_signature_manifest_is_cosign_shaped(images: tuple[PushResult, PushResult], keys: Keys) -> None:
    signed, _ = images
    target = parse_reference(signed.repository, default_tag=None)
    client = RegistryClient(target.registry)
    doc = client.get_manifest(target.repository, trust.signature_tag(signed.digest)).json()
    assert trust.signature_tag(signed.digest) == "sha256-" + signed.digest[7:] + ".sig"
    [layer] = doc["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert layer["annotations"]["dev.cosignproject.cosign/signature"]
    # Signing again replaces our signature instead of piling one up per run.
    sign.sign_in_registry(client, target.repository, signed.digest, sign.load_key(keys.private))
    assert len(client.get_manifest(target.repository, trust.signature_tag(signed.digest)).json()["layers"]) == 1


def test_podman_pulls_the_signed_image_under_a_policy_requiring_our_key(
    images: tuple[PushResult, PushResult], clients: Clients
) -> None:
    need("podman")
    signed, _ = images
    rc, err = _pull(clients, f"{signed.repository}:2026.12.01")
    assert rc == 0, err
    digest = clients.run(
        clients.podman("image", "inspect", "--format", "{{.Digest}}", f"{signed.repository}:2026.12.01")
    )
    assert digest.stdout.strip() == signed.digest


def test_podman_refuses_an_unsigned_image(images: tuple[PushResult, PushResult], clients: Clients) -> None:
    need("podman")
    _, unsigned = images
    rc, err = _pull(clients, f"{unsigned.repository}:2026.12.02")
    assert rc != 0
    assert "signature" in err.lower()


def test_podman_refuses_a_signed_image_under_another_name(
    images: tuple[PushResult, PushResult],
    clients: Clients,
    registry: LocalRegistry,  # noqa: F811
    keys: Keys,
) -> None:
    """The image and its signature copied to another repository: the signed identity no longer matches."""
    need("podman", "skopeo")
    signed, _ = images
    source = f"{signed.repository}:2026.12.01"
    moved = f"{registry.host}/swstack/renamed"
    insecure = Clients.make(clients.home / "copier")
    try:
        insecure.run(
            insecure.skopeo(
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{source}",
                f"docker://{moved}:2026.12.01",
            )
        )
    finally:
        insecure.close()
    client = RegistryClient(registry.host)
    signature = sign.lookaside_path(keys.lookaside, "swstack/py3", signed.digest)
    copied = sign.lookaside_path(keys.lookaside, "swstack/renamed", signed.digest)
    copied.parent.mkdir(parents=True, exist_ok=True)
    copied.write_bytes(signature.read_bytes())
    assert client.head_manifest("swstack/renamed", "2026.12.01") == signed.digest
    rc, err = _pull(clients, f"{moved}:2026.12.01")
    assert rc != 0
    assert "signature" in err.lower() or "identity" in err.lower()


def test_skopeo_copy_honours_the_policy(
    images: tuple[PushResult, PushResult], clients: Clients, tmp_path: Path
) -> None:
    """skopeo checks the signature on the way out; an OCI layout cannot hold it, so it is dropped there."""
    need("skopeo")
    signed, unsigned = images

    def copy(ref: str, dest: Path) -> tuple[int, str]:
        argv = clients.skopeo(
            "copy", "--remove-signatures", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:x"
        )
        result = clients.run(argv, check=False)
        return result.returncode, result.stderr

    rc, err = copy(f"{signed.repository}:2026.12.01", tmp_path / "a")
    assert rc == 0, err
    rc, err = copy(f"{unsigned.repository}:2026.12.02", tmp_path / "b")
    assert rc != 0 and "signature" in err.lower()


def test_our_verifier_agrees(images: tuple[PushResult, PushResult], keys: Keys) -> None:
    signed, unsigned = images
    target = parse_reference(signed.repository, default_tag=None)
    client = RegistryClient(target.registry, error=ActivateError)
    reference = f"{target.registry}/{target.repository}"
    claim = trust.verify_registry_signature(
        client, reference, target.repository, signed.digest, [keys.other_public, keys.public], ActivateError
    )
    assert claim.digest == signed.digest and claim.key == keys.public and claim.creator.startswith("swstack ")
    with pytest.raises(ActivateError, match="no signature by a trusted key"):
        trust.verify_registry_signature(
            client, reference, target.repository, signed.digest, [keys.other_public], ActivateError
        )
    with pytest.raises(ActivateError, match="unsigned"):
        trust.verify_registry_signature(
            client, reference, target.repository, unsigned.digest, [keys.public], ActivateError
        )


def test_push_attaches_sbom_and_provenance_as_signed_referrers(
    tmp_path: Path,
    image_site: Site,  # noqa: F811
    keys: Keys,
    clients: Clients,
) -> None:
    """What `doit push` does after pushing: referrers (OCI subject) for the SBOM and provenance, all signed."""
    from dataclasses import replace

    from swstack import attest, release

    artifact = make_env_artifact(tmp_path / "art", "2026.12.03", conda=SMALL_CONDA)
    attest.attest_artifact(artifact)
    pushed = push_image(build_image(py3_stack(), image_site, PROJECT, artifact), tags=["2026.12.03"])
    site = replace(image_site, signing_keys=keys.site.root, lookaside=keys.lookaside)
    release.attach_and_sign(site, artifact, pushed.repository, pushed.digest)

    # skopeo reads the referrers index under the OCI 1.1 fallback tag, and each referrer.
    tag_ref = f"docker://{pushed.repository}:{attest.referrers_tag(pushed.digest)}"
    insecure = Clients.make(tmp_path / "insecure")
    index = json.loads(insecure.run(insecure.skopeo("inspect", "--raw", "--tls-verify=false", tag_ref)).stdout)
    kinds = {m["artifactType"]: m["digest"] for m in index["manifests"]}
    assert set(kinds) == {"application/vnd.cyclonedx+json", "application/vnd.in-toto+json"}
    target = parse_reference(pushed.repository, default_tag=None)
    client = RegistryClient(target.registry, error=ActivateError)
    sbom_manifest = client.get_manifest(target.repository, kinds["application/vnd.cyclonedx+json"]).json()
    assert sbom_manifest["subject"]["digest"] == pushed.digest
    layer = sbom_manifest["layers"][0]
    client.pull_blob(target.repository, layer["digest"], tmp_path / "sbom.json", layer["size"])
    assert (tmp_path / "sbom.json").read_bytes() == (artifact / attest.SBOM_NAME).read_bytes()
    # The image and both referrers carry our cosign signature; the image also the OpenPGP one.
    reference = f"{target.registry}/{target.repository}"
    for digest in (pushed.digest, *kinds.values()):
        trust.verify_registry_signature(client, reference, target.repository, digest, [keys.public], ActivateError)
    rc, err = _pull(clients, f"{pushed.repository}:2026.12.03")
    assert rc == 0, err
    insecure.close()
