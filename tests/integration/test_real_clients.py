"""Standard clients read what we push: skopeo inspect/copy, umoci unpack, podman pull and run.

The image is ours (``build_image`` + ``push_image``) on the debootstrapped base, in the
test registry on 127.0.0.1; every client keeps its state in the test's directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.clients import Clients, local_tree_listing, need
from tests.support.imagekit import (
    PROJECT,
    SINGLEUSER,
    image_site,  # noqa: F401 - fixture
    make_env_artifact,
    py3_stack,
    tarball_listing,
)
from tests.support.registry import registry_fixture  # noqa: F401 - provides the `registry` fixture

from swstack.image import PushResult, build_image, push_image
from swstack.manifest import Manifest
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]

# A small environment: a few packages are enough to exercise layers; it saves CPU.
SMALL_CONDA = {
    "python": ("3.11.9", {"bin/python3.11": 200_000, "lib/libpython3.11.so": 150_000}),
    "numpy": ("1.26.4", {"lib/python3.11/site-packages/numpy/__init__.py": 900}),
    "sitepaths": ("0.1.0", {"bin/sitepaths": 4_000}),
    **SINGLEUSER,
}
TAG = "2026.11.21"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, image_site: Site) -> tuple[PushResult, Path]:  # noqa: F811
    artifact = make_env_artifact(tmp_path_factory.mktemp("artifacts"), TAG, conda=SMALL_CONDA)
    image = build_image(py3_stack(), image_site, PROJECT, artifact)
    return push_image(image), artifact


@pytest.fixture()
def clients(tmp_path: Path) -> Iterator[Clients]:
    made = Clients.make(tmp_path / "clients")
    yield made
    made.close()


def _ref(pushed: PushResult, tag: str = TAG) -> str:
    return f"{pushed.repository}:{tag}"


def test_skopeo_inspect_sees_our_manifest(pushed: tuple[PushResult, Path], clients: Clients) -> None:
    need("skopeo")
    result, artifact = pushed
    out = clients.run(clients.skopeo("inspect", "--tls-verify=false", f"docker://{_ref(result)}")).stdout
    info = json.loads(out)
    assert info["Digest"] == result.digest
    assert info["Labels"]["org.opencontainers.image.version"] == TAG
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    raw = json.loads(
        clients.run(clients.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{_ref(result)}")).stdout
    )
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert info["Layers"] == [layer["digest"] for layer in raw["layers"]]


def test_skopeo_copy_to_oci_layout_then_umoci_unpack_is_the_tarball(
    pushed: tuple[PushResult, Path], clients: Clients, tmp_path: Path
) -> None:
    need("skopeo", "umoci")
    result, artifact = pushed
    layout = tmp_path / "layout"
    clients.run(clients.skopeo("copy", "--src-tls-verify=false", f"docker://{_ref(result)}", f"oci:{layout}:{TAG}"))
    index = json.loads((layout / "index.json").read_text())
    # Copying without conversion keeps every byte: the same manifest digest as in the registry.
    assert [m["digest"] for m in index["manifests"]] == [result.digest]
    bundle = tmp_path / "bundle"
    clients.run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)])
    manifest = Manifest.load(artifact / "manifest.json")
    assert manifest.tarball is not None
    tree = bundle / "rootfs" / manifest.prefix.lstrip("/")
    assert local_tree_listing(tree) == tarball_listing(artifact / manifest.tarball.name)
    # The base came along: the image is a whole system, not just the environment.
    assert (bundle / "rootfs" / "bin" / "sh").exists() or (bundle / "rootfs" / "usr" / "bin" / "sh").exists()


def test_podman_pull_and_run(pushed: tuple[PushResult, Path], clients: Clients) -> None:
    need("podman")
    result, _ = pushed
    clients.run(clients.podman("pull", "--tls-verify=false", _ref(result)))
    digest = clients.run(clients.podman("image", "inspect", "--format", "{{.Digest}}", _ref(result))).stdout
    assert digest.strip() == result.digest
    script = 'id -un; command -v python; echo "$HOME"'
    run = clients.run(clients.podman("run", "--rm", *clients.run_flags(), _ref(result), "/bin/sh", "-c", script))
    assert run.stdout.split() == ["jovyan", "/data0/sw/py3/bin/python", "/home/jovyan"]
