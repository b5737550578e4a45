"""Images against the real engine and a real registry: tree, push, pull by digest, run, small updates.

The base is the debootstrapped Debian, pushed to the test registry where the offline site
mirrors the stack's ``debian:bookworm-slim``, so every build pulls its base from a registry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.imagekit import (
    DEFAULT_PIP,
    PROJECT,
    image_site,  # noqa: F401 - fixture
    make_env_artifact,
    py3_stack,
    relabelled_artifact,
    tarball_listing,
    tree_listing_argv,
)
from tests.support.registry import registry_fixture  # noqa: F401 - provides the `registry` fixture

from swstack.engine import DockerEngine
from swstack.image import ImageResult, build_image, list_images, push_image
from swstack.manifest import Manifest
from swstack.oci import RegistryClient, parse_reference
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine() -> DockerEngine:
    return DockerEngine()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def first(artifacts: Path, image_site: Site) -> ImageResult:  # noqa: F811
    return build_image(py3_stack(), image_site, PROJECT, make_env_artifact(artifacts, "2026.11.21"))


def _listing(engine: DockerEngine, ref: str, prefix: str) -> list[str]:
    lines: list[str] = []
    engine.run(ref, tree_listing_argv(prefix), network=False, on_output=lines.append)
    return sorted(line for line in lines if line.strip())


def test_push_remove_pull_by_digest_and_run(
    engine: DockerEngine,
    first: ImageResult,
    image_site: Site,  # noqa: F811
) -> None:
    pushed = push_image(first)
    assert pushed.bytes_uploaded > 0 and pushed.digest == first.digest
    ref = pushed.ref()
    engine.remove_image(ref, force=True)
    assert not engine.image_exists(ref)
    engine.pull_image(ref)
    info = engine.inspect_image(ref)
    assert ref in info.repo_digests
    assert info.user == "1000:1000" and info.cmd == ("jupyterhub-singleuser",)
    assert info.labels["org.opencontainers.image.version"] == "2026.11.21"
    assert (
        info.labels["io.swstack.lockfile-sha256"]
        == Manifest.load(first.layout.parent / "manifest.json").lockfile_sha256
    )
    assert "JUPYTER_PATH=/data0/sw/py3/share/jupyter" in info.env
    run = engine.run(ref, ["/bin/sh", "-c", 'id -un; echo "$HOME"; command -v python; touch "$HOME/ok"'])
    assert run.tail.splitlines() == ["jovyan", "/home/jovyan", "/data0/sw/py3/bin/python"]
    # Every tag the stack file asks for points at this image.
    client = RegistryClient(image_site.registry or "")
    for tag in ("2026.11.21", "latest", "d_2026_11_21", "w_2026_47"):
        assert client.head_manifest("swstack/py3", tag) == first.digest
    menu = list_images(py3_stack(), image_site)
    assert {e["tag"] for e in menu} >= {"2026.11.21", "latest"}
    assert all(e["image"].startswith(f"{image_site.registry}/swstack/py3:") for e in menu)


def test_image_tree_is_the_tarball(engine: DockerEngine, first: ImageResult) -> None:
    push_image(first)
    manifest = Manifest.load(first.layout.parent / "manifest.json")
    assert manifest.tarball is not None
    expected = tarball_listing(first.layout.parent / manifest.tarball.name)
    assert _listing(engine, first.ref(), manifest.prefix) == expected


def test_rebuild_is_identical_and_one_package_change_pushes_little(
    artifacts: Path,
    first: ImageResult,
    image_site: Site,  # noqa: F811
) -> None:
    push_image(first)
    again = build_image(
        py3_stack(), image_site, PROJECT, make_env_artifact(artifacts / "again", "2026.11.21")
    )
    assert again.digest == first.digest  # same files, same layers, same manifest

    bumped = {"labclient": ("1.0.1", DEFAULT_PIP["labclient"][1])}
    second = build_image(
        py3_stack(), image_site, PROJECT, make_env_artifact(artifacts, "2026.11.22", pip=bumped)
    )
    old = {layer.digest for layer in first.layers}
    new_layers = [layer for layer in second.layers if layer.digest not in old]
    assert {layer.name for layer in new_layers} == {"labclient", "rest"}
    pushed = push_image(second)
    assert pushed.bytes_uploaded < 0.05 * pushed.bytes_total
    repo = parse_reference(second.repository, default_tag=None)
    client = RegistryClient(repo.registry)
    assert client.head_manifest(repo.repository, "2026.11.21") == first.digest
    assert client.head_manifest(repo.repository, "latest") == second.digest


def _held(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(r.getMessage() for r in caplog.records if " not moved: " in r.getMessage())


def test_latest_moves_to_a_newer_version_and_stays_when_an_older_one_is_pushed(
    artifacts: Path,
    first: ImageResult,
    image_site: Site,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Re-pushing an earlier build (to restore its tag, or to another registry) must not roll back
    what new spawns get: 2026.11.21, pushed again after 2026.11.21.1 was built later that day, moves
    none of latest, w_2026_47 and d_2026_11_21. A repository of its own: the other tests' pushes
    leave it alone."""
    name = "swstack/py3-latest"
    repository = f"{image_site.registry}/{name}"
    client = RegistryClient(image_site.registry or "")
    later = relabelled_artifact(first.layout.parent, artifacts / "newer", "2026.11.21.1", "2026-11-21T06:00:00Z")
    newer = build_image(py3_stack(), image_site, PROJECT, later)
    push_image(first, repository=repository)  # built 2026-11-21T00:00:00Z
    assert client.head_manifest(name, "latest") == first.digest

    pushed = push_image(newer, repository=repository)
    assert {"latest", "w_2026_47", "d_2026_11_21"} <= set(pushed.tags)
    assert client.head_manifest(name, "latest") == newer.digest

    caplog.set_level("INFO", logger="swstack")
    caplog.clear()  # only the last push's lines: the earlier ones held tags too
    again = push_image(first, repository=repository)
    assert again.tags == ("2026.11.21",)
    for tag in ("latest", "w_2026_47", "d_2026_11_21"):
        assert client.head_manifest(name, tag) == newer.digest
    assert client.head_manifest(name, "2026.11.21") == first.digest
    after = "2026.11.21.1 (built 2026-11-21T06:00:00Z) was built after 2026.11.21 (built 2026-11-21T00:00:00Z)"
    held = [f"{repository}:{tag} not moved: {after}" for tag in ("d_2026_11_21", "latest", "w_2026_47")]
    assert _held(caplog) == held


def test_the_weekly_tag_stays_when_an_older_version_of_its_week_is_pushed(
    artifacts: Path,
    first: ImageResult,
    image_site: Site,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """2026.11.19 and 2026.11.21 both render w_2026_47: re-pushing the one built first after the other
    must not roll back the week's menu entry; a build of another week (2026.11.23) does not hold it.
    Each is built at the midnight its version names (make_env_artifact)."""
    name = "swstack/py3-weekly"
    repository = f"{image_site.registry}/{name}"
    client = RegistryClient(image_site.registry or "")
    older = build_image(py3_stack(), image_site, PROJECT, make_env_artifact(artifacts / "older", "2026.11.19"))
    week_after = build_image(py3_stack(), image_site, PROJECT, make_env_artifact(artifacts / "after", "2026.11.23"))
    push_image(week_after, repository=repository)
    pushed = push_image(older, repository=repository)  # the week's first: w_2026_47 is made, latest stays
    assert "w_2026_47" in pushed.tags and "latest" not in pushed.tags
    assert client.head_manifest(name, "w_2026_47") == older.digest
    push_image(first, repository=repository)  # later that week: w_2026_47 moves forward
    assert client.head_manifest(name, "w_2026_47") == first.digest

    caplog.set_level("INFO", logger="swstack")
    caplog.clear()  # only the last push's lines: the earlier ones held tags too
    again = push_image(older, repository=repository)
    assert client.head_manifest(name, "w_2026_47") == first.digest and "w_2026_47" not in again.tags
    assert client.head_manifest(name, "d_2026_11_19") == older.digest and "d_2026_11_19" in again.tags
    assert client.head_manifest(name, "latest") == week_after.digest
    assert _held(caplog) == [
        f"{repository}:latest not moved: 2026.11.23 (built 2026-11-23T00:00:00Z) "
        "was built after 2026.11.19 (built 2026-11-19T00:00:00Z)",
        f"{repository}:w_2026_47 not moved: 2026.11.21 (built 2026-11-21T00:00:00Z) "
        "was built after 2026.11.19 (built 2026-11-19T00:00:00Z)",
    ]


def test_a_release_built_after_a_date_build_moves_latest_and_its_weeks_tag(
    artifacts: Path,
    first: ImageResult,
    image_site: Site,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """29.0.0 sorts below every date version by name, but was built after 2026.11.21 (the next day,
    the same ISO week): it is the newest, and latest and w_2026_47 move to it. 2026.11.21 pushed
    again leaves them there; its own day's tag, which no later build shares, stays on it."""
    name = "swstack/py3-release"
    repository = f"{image_site.registry}/{name}"
    client = RegistryClient(image_site.registry or "")
    built = relabelled_artifact(first.layout.parent, artifacts / "release", "29.0.0", "2026-11-22T12:00:00Z")
    release = build_image(py3_stack(), image_site, PROJECT, built)
    push_image(first, repository=repository)

    caplog.set_level("INFO", logger="swstack")
    caplog.clear()  # only the last push's lines: the earlier ones held tags too
    pushed = push_image(release, repository=repository)
    assert pushed.tags == ("29.0.0", "latest", "d_2026_11_22", "w_2026_47", "r29_0_0")
    for tag in ("latest", "w_2026_47", "d_2026_11_22"):
        assert client.head_manifest(name, tag) == release.digest
    assert _held(caplog) == []

    again = push_image(first, repository=repository)
    assert again.tags == ("2026.11.21", "d_2026_11_21")
    assert client.head_manifest(name, "latest") == client.head_manifest(name, "w_2026_47") == release.digest
    assert client.head_manifest(name, "d_2026_11_21") == first.digest
    after = "29.0.0 (built 2026-11-22T12:00:00Z) was built after 2026.11.21 (built 2026-11-21T00:00:00Z)"
    assert _held(caplog) == [f"{repository}:{tag} not moved: {after}" for tag in ("latest", "w_2026_47")]


def test_an_image_whose_command_neither_tree_nor_base_has_is_refused(
    artifacts: Path,
    image_site: Site,  # noqa: F811
) -> None:
    """A container whose command is missing exits at once: every spawn of the image would fail. The
    base (the debootstrapped Debian) has bash on its PATH, which passes; a program neither the
    stack's tree nor the base has is refused naming the stack-file line."""
    from dataclasses import replace

    from swstack.errors import ImageError

    stack = py3_stack()
    art = make_env_artifact(artifacts / "command", "2026.11.23")
    shell = replace(stack, image=stack.image.model_copy(update={"command": ("bash", "-l")}))
    assert build_image(shell, image_site, PROJECT, art).digest.startswith("sha256:")
    missing = replace(stack, image=stack.image.model_copy(update={"command": ("no-such-server",)}))
    with pytest.raises(ImageError) as refused:
        build_image(missing, image_site, PROJECT, art)
    assert str(refused.value).startswith(f"{PROJECT / 'stacks/base.toml'}:22: [image] command 'no-such-server' "
                                         "is neither in the stack's tree (/data0/sw/py3/bin) nor on the base "
                                         "image's PATH")  # fmt: skip
