"""The spawner menu from a real registry, and ``swstack prepull`` on the real engine.

Three images (a date build of 2024-12-30, one of 2025-01-06 and the release 29.0.0,
relabelled copies of one small environment artifact) are built and pushed with the
stack's own tags to the test registry; ``swstack hub-config`` reads the registry and
renders the menu, ``swstack prepull`` pulls its images onto this machine's engine,
keeps at most N and leaves alone an image a container uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.imagekit import (  # noqa: F401 - fixture
    PROJECT,
    image_site,
    make_env_artifact,
    py3_stack,
    relabelled_artifact,
)
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - fixture

from swstack import cli
from swstack.engine import DockerEngine
from swstack.errors import ImageError
from swstack.hub import Menu, render_dockerspawner
from swstack.image import PushResult, build_image, push_image
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]

BUILDS = {  # version -> build time; pushed in build order, so each moves the tags it shares with those before
    "2024.12.30": "2024-12-30T02:00:00Z",
    "2025.01.06": "2025-01-06T02:00:00Z",
    "29.0.0": "2025-01-07T12:00:00Z",
}


@pytest.fixture(scope="module")
def menu_repo(
    tmp_path_factory: pytest.TempPathFactory,
    image_site: Site,  # noqa: F811
    registry: LocalRegistry,  # noqa: F811
) -> tuple[str, dict[str, PushResult]]:
    root = tmp_path_factory.mktemp("menu")
    first = make_env_artifact(root / "base", "2024.12.30")
    repository = f"{registry.host}/menutest/py3"
    pushed = {}
    for version, built in BUILDS.items():
        artifact = relabelled_artifact(first, root / "builds", version, built)
        pushed[version] = push_image(build_image(py3_stack(), image_site, PROJECT, artifact), repository=repository)
    return repository, pushed


def test_the_menu_from_the_registry(
    menu_repo: tuple[str, dict[str, PushResult]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository, pushed = menu_repo
    assert "r29_0_0" in pushed["29.0.0"].tags and not any(t.startswith("r") for t in pushed["2025.01.06"].tags)
    out = tmp_path / "menu.json"
    assert cli.main(["hub-config", repository, "--format", "json", "--output", str(out), "--weeklies", "2"]) == 0
    menu = Menu.from_json(out.read_text(), str(out))
    pin = {v: f"{repository}@{p.digest}" for v, p in pushed.items()}
    assert [(e.tag, e.image, e.version) for e in menu.entries] == [
        ("r29_0_0", pin["29.0.0"], "29.0.0"),
        ("w_2025_02", pin["29.0.0"], "29.0.0"),  # the release, built later that week, moved it
        ("w_2025_01", pin["2024.12.30"], "2024.12.30"),  # ISO week 1 of 2025 began on 2024-12-30
        ("d_2025_01_07", pin["29.0.0"], "29.0.0"),
        ("d_2025_01_06", pin["2025.01.06"], "2025.01.06"),
        ("d_2024_12_30", pin["2024.12.30"], "2024.12.30"),
    ]
    assert menu.default.tag == "r29_0_0"
    assert menu.entries[2].display_name == "Weekly w_2025_01 (2024.12.30, built 2024-12-30)"
    assert cli.main(["hub-config", repository, "--format", "docker", "--weeklies", "2"]) == 0
    assert capsys.readouterr().out == render_dockerspawner(menu)
    assert cli.main(["hub-config", f"{repository}:latest"]) == 9  # a tag is no repository

    # The DaemonSet for the same menu, as `kubectl apply -f` gets it, through the API models.
    from kubernetes.client import ApiClient

    assert cli.main(["hub-config", repository, "--format", "daemonset", "--namespace", "jhub"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    api = ApiClient()
    model = api._ApiClient__deserialize(manifest, "V1DaemonSet")  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(model) == manifest
    assert [c.image for c in model.spec.template.spec.init_containers] == list(menu.images())


@pytest.fixture
def engine_clean(menu_repo: tuple[str, dict[str, PushResult]]) -> Iterator[DockerEngine]:
    engine = DockerEngine()
    repository, pushed = menu_repo

    def forget() -> None:
        for image in engine.local_images():
            for name in (*image.repo_tags, *image.repo_digests):
                if name.startswith(repository + ":") or name.startswith(repository + "@"):
                    engine.remove_image(name, force=True)

    forget()
    yield engine
    forget()


def test_prepull_keeps_n_and_never_an_image_in_use(
    menu_repo: tuple[str, dict[str, PushResult]],
    engine_clean: DockerEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = engine_clean
    repository, pushed = menu_repo
    pin = {v: f"{repository}@{p.digest}" for v, p in pushed.items()}
    menu_file = tmp_path / "menu.json"
    assert cli.main(["hub-config", repository, "--format", "json", "-o", str(menu_file)]) == 0
    assert Menu.from_json(menu_file.read_text(), "m").images() == (pin["29.0.0"], pin["2024.12.30"], pin["2025.01.06"])

    assert cli.main(["prepull", str(menu_file), "--keep", "2", "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dry_run"] and planned["pull"] == [pin["29.0.0"], pin["2024.12.30"]] and not planned["remove"]
    assert not engine.image_exists(pin["29.0.0"])  # a dry run pulls nothing
    assert cli.main(["prepull", str(menu_file), "--keep", "2"]) == 0
    assert engine.image_exists(pin["29.0.0"]) and engine.image_exists(pin["2024.12.30"])
    assert not engine.image_exists(pin["2025.01.06"])
    assert cli.main(["prepull", str(menu_file), "--keep", "2"]) == cli.UNCHANGED_EXIT

    # An image beyond the menu's first N that a (stopped) container uses stays.
    engine.pull_image(pin["2025.01.06"])
    container = engine.client.containers.create(pin["2025.01.06"], ["/bin/true"])
    try:
        assert cli.main(["prepull", str(menu_file), "--keep", "1"]) == 0
        assert engine.image_exists(pin["29.0.0"])
        assert not engine.image_exists(pin["2024.12.30"])
        assert engine.image_exists(pin["2025.01.06"])
    finally:
        container.remove()
    assert cli.main(["prepull", str(menu_file), "--keep", "1"]) == 0
    assert not engine.image_exists(pin["2025.01.06"]) and engine.image_exists(pin["29.0.0"])


def test_a_repository_with_no_menu_tag_is_named_with_what_to_do(
    registry: LocalRegistry,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A repository the registry does not know (a misspelt name: 404, no tags) and one holding only
    a signature are each named in the error, with what to check or push."""
    import hashlib

    from swstack.oci import RegistryClient

    client = RegistryClient(registry.host, credentials=False)
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.push_blob("menutest/signed", config, digest, len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
            "layers": [],
        }
    ).encode()
    client.put_manifest("menutest/signed", "sha256-" + "a" * 64 + ".sig", manifest)

    missing = f"{registry.host}/menutest/no-such-repo"
    assert cli.main(["hub-config", missing]) == 9
    err = capsys.readouterr().err
    assert f"{missing}: the registry has no tags in this repository; check its name" in err
    assert cli.main(["hub-config", f"{registry.host}/menutest/signed"]) == 9
    assert f"{registry.host}/menutest/signed: no release (r29_0_0)" in capsys.readouterr().err


def _push_tiny_image(client: Any, repository: str, tag: str) -> str:
    """A one-file image (an OCI manifest, its config and one gzip layer); its manifest digest."""
    import gzip
    import hashlib
    import io
    import tarfile

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as out:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        out.addfile(info, io.BytesIO(b"hi"))
    layer = gzip.compress(tar.getvalue(), mtime=0)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(tar.getvalue())]}}
    ).encode()
    for blob in (layer, config):
        client.push_blob(repository, blob, sha(blob), len(blob))
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": 0},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": 0}],
    }
    doc["config"]["size"], doc["layers"][0]["size"] = len(config), len(layer)
    return str(client.put_manifest(repository, tag, json.dumps(doc).encode()))


def test_prepull_pulls_from_a_registry_needing_credentials_with_the_ones_hub_config_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SWSTACK_REGISTRY_USER/PASSWORD let `prepull REPOSITORY` list the tags; the engine's pull gets
    them too (it had none: 'no basic auth credentials' after the menu was read)."""
    from tests.support.registry import local_registry

    from swstack.oci import Credentials, RegistryClient

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no docker login
    with local_registry(tmp_path / "reg", credentials=("alice", "s3cret")) as reg:
        client = RegistryClient(reg.host, credentials=Credentials("alice", "s3cret"))
        digest = _push_tiny_image(client, "authmenu/py3", "r29_0_0")
        pinned = f"{reg.host}/authmenu/py3@{digest}"
        engine = DockerEngine()
        try:
            monkeypatch.setenv("SWSTACK_REGISTRY_USER", "alice")
            monkeypatch.setenv("SWSTACK_REGISTRY_PASSWORD", "s3cret")
            assert cli.main(["prepull", f"{reg.host}/authmenu/py3", "--keep", "1"]) == 0
            assert engine.image_exists(pinned)
            engine.remove_image(pinned, force=True)
            monkeypatch.delenv("SWSTACK_REGISTRY_PASSWORD")
            with pytest.raises(ImageError, match="no basic auth credentials.*set SWSTACK_REGISTRY_USER"):
                engine.pull_image(pinned)
        finally:
            engine.remove_image(pinned, force=True)


def test_prepull_keeps_a_menu_image_the_host_held_under_an_old_tag(
    menu_repo: tuple[str, dict[str, PushResult]],
    engine_clean: DockerEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The host holds the default's image only as ``repo:old`` (built here, or pushed with another
    manifest digest): the pull adds the pin to that same image, and removing ``repo:old`` then
    would take the pin with it (the engine drops a repository's digest names with its last tag).
    The dry run, which pulls nothing, says what the real run does: that removal is not in it, the
    removal of an image beyond the menu's first N is."""
    engine = engine_clean
    repository, pushed = menu_repo
    pin = f"{repository}@{pushed['29.0.0'].digest}"
    beyond = f"{repository}@{pushed['2024.12.30'].digest}"
    menu_file = tmp_path / "menu.json"
    assert cli.main(["hub-config", repository, "--format", "json", "-o", str(menu_file)]) == 0
    engine.pull_image(pin)
    engine.tag_image(pin, f"{repository}:old")
    engine.remove_image(pin)  # the digest name only: the image stays, as repo:old
    engine.pull_image(beyond)
    assert not engine.image_exists(pin) and engine.image_exists(f"{repository}:old")
    capsys.readouterr()

    assert cli.main(["prepull", str(menu_file), "--keep", "1", "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert not engine.image_exists(pin)  # a dry run pulls nothing
    assert cli.main(["prepull", str(menu_file), "--keep", "1", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done == {**planned, "dry_run": False}
    assert done["pull"] == [pin] and done["remove"] == [beyond]
    assert engine.image_exists(pin) and engine.image_exists(f"{repository}:old") and not engine.image_exists(beyond)
