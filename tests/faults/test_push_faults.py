"""Image pushes through a misbehaving registry: a clear error, and no tag ever moves to a partial image.

A real registry sits behind ``FlakyProxy``. The first version is pushed cleanly; the
second goes through the proxy, which refuses connections or drops them mid-upload.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.support.imagekit import (
    DEFAULT_PIP,
    PROJECT,
    image_site,  # noqa: F401 - fixture
    make_env_artifact,
    py3_stack,
)
from tests.support.registry import (
    Fault,
    FlakyProxy,
    LocalRegistry,
    registry_fixture,  # noqa: F401 - provides the `registry` fixture
)

from swstack import oci
from swstack.errors import PushError
from swstack.image import ImageResult, build_image, push_image
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]

FAST = oci.RetryPolicy(attempts=3, initial=0.01, factor=2.0, maximum=0.05)
FOREVER = 10_000
REPO = "swstack/py3"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, image_site: Site) -> tuple[ImageResult, ImageResult]:  # noqa: F811
    root = tmp_path_factory.mktemp("artifacts")
    first = build_image(py3_stack(), image_site, PROJECT, make_env_artifact(root, "2026.11.21"))
    push_image(first)
    # A new version whose pip package grew: its layer is big enough to be cut mid-body.
    bumped = {"labclient": ("2.0.0", {**DEFAULT_PIP["labclient"][1], "labclient/big.bin": 3 << 20})}
    second = build_image(py3_stack(), image_site, PROJECT, make_env_artifact(root, "2026.11.22", pip=bumped))
    return first, second


def _tags(registry: LocalRegistry) -> dict[str, str | None]:
    client = oci.RegistryClient(registry.host)
    return {tag: client.head_manifest(REPO, tag) for tag in ("latest", "2026.11.21", "2026.11.22")}


def test_refused_connections_fail_clearly_and_move_no_tag(
    registry: LocalRegistry,  # noqa: F811
    versions: tuple[ImageResult, ImageResult],
) -> None:
    first, second = versions
    before = _tags(registry)
    assert before["latest"] == first.digest and before["2026.11.22"] is None
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("refuse", times=FOREVER))
        started = time.monotonic()
        with pytest.raises(PushError) as info:
            push_image(second, repository=f"{proxy.host}/{REPO}", retry=FAST)
        assert time.monotonic() - started < 10  # bounded backoff
    message = str(info.value)
    assert "gave up after 3 attempts" in message and "check" in message
    assert "no tag of swstack/py3 moved" in message
    assert proxy.count("PUT", "/manifests/") == 0
    assert _tags(registry) == before


def test_dropped_upload_mid_body_fails_and_moves_no_tag(
    registry: LocalRegistry,  # noqa: F811
    versions: tuple[ImageResult, ImageResult],
) -> None:
    first, second = versions
    before = _tags(registry)
    with FlakyProxy(registry.host) as proxy:
        proxy.add(
            Fault(
                "drop",
                method="PUT",
                path="/blobs/uploads/",
                after_bytes=256 << 10,
                min_body=1 << 20,
                times=FOREVER,
            )
        )
        with pytest.raises(
            PushError,
            match=r"uploading sha256:[0-9a-f]+ .*gave up after 3 attempts.*\n.*no tag of swstack/py3 moved",
        ):
            push_image(second, repository=f"{proxy.host}/{REPO}", retry=FAST)
        assert proxy.count("PUT", "/blobs/uploads/", outcome="drop") == 3
        assert proxy.count("PUT", "/manifests/") == 0
    assert _tags(registry) == before


def test_a_transient_drop_is_retried_and_the_push_completes(
    registry: LocalRegistry,  # noqa: F811
    versions: tuple[ImageResult, ImageResult],
) -> None:
    first, second = versions
    with FlakyProxy(registry.host) as proxy:
        proxy.add(
            Fault("drop", method="PUT", path="/blobs/uploads/", after_bytes=256 << 10, min_body=1 << 20)
        )
        proxy.add(Fault("status", method="PUT", path="/manifests/", status=503))
        pushed = push_image(second, repository=f"{proxy.host}/{REPO}", retry=FAST)
        assert proxy.count("PUT", "/blobs/uploads/", outcome="drop") == 1
        assert proxy.count("PUT", "/manifests/", outcome="status") == 1
    assert pushed.digest == second.digest
    tags = _tags(registry)
    assert tags["latest"] == tags["2026.11.22"] == second.digest
    assert tags["2026.11.21"] == first.digest


def test_a_version_tag_is_not_moved_to_another_image(
    registry: LocalRegistry,  # noqa: F811
    image_site: Site,  # noqa: F811
    versions: tuple[ImageResult, ImageResult],
    tmp_path: Path,
) -> None:
    first, _ = versions
    # The same version built again elsewhere, from other packages: another image.
    bumped = {"labclient": ("2.0.0", DEFAULT_PIP["labclient"][1])}
    clash = build_image(py3_stack(), image_site, PROJECT, make_env_artifact(tmp_path, "2026.11.21", pip=bumped))
    assert clash.digest != first.digest
    with pytest.raises(PushError, match=r"swstack/py3:2026.11.21 already names other content .*nothing was sent"):
        push_image(clash, retry=FAST)
    assert _tags(registry)["2026.11.21"] == first.digest
    push_image(clash, tags=("exp_clash",), retry=FAST)  # moving tags are not versions: they may move
