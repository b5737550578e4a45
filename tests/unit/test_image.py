"""Image planning without an engine or registry: tags, labels, env, config, user, deterministic layers."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.support.imagekit import make_env_artifact, offline_site, py3_stack

from swstack.errors import ImageError, SiteError
from swstack.image import (
    BaseImage,
    LayerBlob,
    add_user,
    image_env,
    image_labels,
    image_repository,
    index_tarball,
    plan_image,
    release_numbers,
    render_config,
    render_manifest,
    render_tags,
    tag_fields,
    write_env_layers,
)
from swstack.image.plan import TreeIndex, command_lookup
from swstack.layers import TreeEntry, plan_layers
from swstack.manifest import Manifest
from swstack.oci import Descriptor, canonical_json, digest_of

BASE = BaseImage(
    ref="127.0.0.1:5000/swstack/debian:bookworm",
    registry="127.0.0.1:5000",
    repository="swstack/debian",
    digest="sha256:" + "b" * 64,
    config={
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "c" * 64]},
        "history": [{"created_by": "debootstrap"}],
    },
    layers=(Descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", "sha256:" + "d" * 64, 1234),),
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_env_artifact(tmp_path_factory.mktemp("art"))


def _manifest(artifact: Path) -> Manifest:
    return Manifest.load(artifact / "manifest.json")


def test_tags_lsst_forms(artifact: Path) -> None:
    manifest = replace(_manifest(artifact), version="2026.11.21.2", git_commit="0123456789abcdef" * 2)
    fields = tag_fields(manifest)
    assert (fields["yyyy"], fields["mm"], fields["dd"], fields["week"]) == ("2026", "11", "21", "47")
    templates = [
        "{version}",
        "latest",
        "d_{yyyy}_{mm}_{dd}",
        "w_{isoyear}_{week}",
        "r{major}_{minor}_{patch}",
        "exp_{git}",
        "latest",
        "{stack}-{variant}",
    ]
    # A date version is no release: the r-template makes no tag.
    assert render_tags(templates, manifest) == (
        "2026.11.21.2",
        "latest",
        "d_2026_11_21",
        "w_2026_47",
        "exp_0123456789ab",
        "py3-stable",
    )


@pytest.mark.parametrize(
    ("version", "daily", "weekly"),
    [
        ("2024.12.30", "d_2024_12_30", "w_2025_01"),  # Monday of ISO week 1 of 2025
        ("2024.12.29", "d_2024_12_29", "w_2024_52"),
        ("2021.01.03", "d_2021_01_03", "w_2020_53"),  # Sunday closing week 53 of 2020
        ("2021.01.04", "d_2021_01_04", "w_2021_01"),
        ("2026.12.31", "d_2026_12_31", "w_2026_53"),
        ("2027.01.01.3", "d_2027_01_01", "w_2026_53"),
        ("2027.01.04", "d_2027_01_04", "w_2027_01"),
    ],
)
def test_weekly_tag_uses_the_iso_year_at_year_boundaries(
    artifact: Path, version: str, daily: str, weekly: str
) -> None:
    manifest = replace(_manifest(artifact), version=version)
    assert render_tags(["d_{yyyy}_{mm}_{dd}", "w_{isoyear}_{week}"], manifest) == (daily, weekly)


@pytest.mark.parametrize(
    ("version", "build_time", "tags"),
    [
        ("29.0.0", "2024-12-30T23:59:59Z", ("29.0.0", "r29_0_0", "w_2025_01", "d_2024_12_30")),
        ("v29.1", "2027-01-01T08:00:00Z", ("v29.1", "r29_1_0", "w_2026_53", "d_2027_01_01")),
        ("29.0.0rc1", "2025-06-02T00:00:00Z", ("29.0.0rc1", "w_2025_23", "d_2025_06_02")),
        ("2026.11.21", "2026-11-21T03:00:00Z", ("2026.11.21", "w_2026_47", "d_2026_11_21")),
        ("2026.11.21.4", "2026-11-22T03:00:00Z", ("2026.11.21.4", "w_2026_47", "d_2026_11_21")),
    ],
)
def test_release_tags_only_from_release_versions(
    artifact: Path, version: str, build_time: str, tags: tuple[str, ...]
) -> None:
    manifest = replace(_manifest(artifact), version=version, build_time=build_time)
    templates = ["{version}", "r{major}_{minor}_{patch}", "w_{isoyear}_{week}", "d_{yyyy}_{mm}_{dd}"]
    assert render_tags(templates, manifest) == tags
    assert (release_numbers(version) is not None) == any(t.startswith("r") for t in tags)


def test_labels_env_and_repository(artifact: Path) -> None:
    manifest, stack = _manifest(artifact), py3_stack()
    labels = image_labels(manifest, stack.image, "https://git.example.org/swstack.git", stack.image.base)
    assert labels["org.opencontainers.image.version"] == manifest.version
    assert labels["io.swstack.lockfile-sha256"] == manifest.lockfile_sha256
    assert labels["org.opencontainers.image.revision"] == manifest.git_commit
    assert labels["org.opencontainers.image.source"] == "https://git.example.org/swstack.git"
    assert labels["org.opencontainers.image.created"] == manifest.build_time
    assert labels["io.swstack.variant"] == "stable"
    assert labels["org.opencontainers.image.vendor"] == "swstack"  # from base.toml's [image] labels
    env = dict(
        e.split("=", 1)
        for e in image_env(
            ["PATH=/usr/bin:/bin"], "/data0/sw/py3", "jovyan", "/home/jovyan", 1000, stack="py3", version="29.0.0"
        )
    )
    assert (env["SWSTACK_STACK"], env["SWSTACK_VERSION"]) == ("py3", "29.0.0")
    assert env["PATH"] == "/data0/sw/py3/bin:/usr/bin:/bin"
    assert env["JUPYTER_PATH"] == "/data0/sw/py3/share/jupyter"
    site = offline_site("127.0.0.1:5999")
    assert image_repository(stack, site) == "127.0.0.1:5999/swstack/py3"
    assert site.image_ref("debian:bookworm-slim") == "127.0.0.1:5999/swstack/debian:bookworm"
    with pytest.raises(ImageError, match="names no registry"):
        image_repository(stack, replace(site, registry=None))
    with pytest.raises(SiteError, match="names no registry"):
        replace(site, registry=None).image_ref("debian:bookworm-slim")


def test_add_user() -> None:
    passwd, group = add_user(
        "root:x:0:0:root:/root:/bin/bash\n", "root:x:0:\n", "jovyan", 1000, "/home/jovyan"
    )
    assert passwd.splitlines()[-1] == "jovyan:x:1000:1000::/home/jovyan:/bin/bash"
    assert group.splitlines()[-1] == "jovyan:x:1000:"
    assert add_user(passwd, group, "jovyan", 1000, "/home/jovyan") == (passwd, group)  # idempotent
    with pytest.raises(ImageError, match="uid 1000 is taken"):
        add_user("other:x:1000:1000::/:/bin/sh\n", "", "jovyan", 1000, "/home/jovyan")


def test_config_and_manifest(artifact: Path) -> None:
    manifest = _manifest(artifact)
    stack, site = py3_stack(), offline_site("127.0.0.1:5999")
    index = index_tarball(artifact / manifest.tarball.name, manifest)  # type: ignore[union-attr]
    plan = plan_image(stack, site, manifest, index, BASE)
    ours = [LayerBlob("x", "sha256:" + "e" * 64, "sha256:" + "f" * 64, 10)]
    config = render_config(plan, BASE, ours, manifest.build_time)
    inner = config["config"]
    assert inner["User"] == "1000:1000" and inner["Cmd"] == ["jupyterhub-singleuser"]
    assert inner["WorkingDir"] == "/home/jovyan"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + "c" * 64, "sha256:" + "f" * 64]
    assert len(config["history"]) == 2
    raw = canonical_json(config)
    doc = json.loads(render_manifest(BASE, ours, raw, {}))
    assert doc["config"]["digest"] == digest_of(raw)
    assert [d["digest"] for d in doc["layers"]] == [BASE.layers[0].digest, ours[0].digest]
    assert all(d["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip" for d in doc["layers"])


def test_index_finds_conda_and_pip_files(artifact: Path) -> None:
    manifest = _manifest(artifact)
    index = index_tarball(artifact / manifest.tarball.name, manifest)  # type: ignore[union-attr]
    assert "lib/libpython3.11.so" in index.files["python"]
    assert "lib/python3.11/site-packages/labclient/api.py" in index.files["labclient"]
    assert any(p.endswith("labclient-1.0.0.dist-info/RECORD") for p in index.files["labclient"])
    kinds = {e.path: e.kind for e in index.entries}
    assert kinds["bin/python"] == "symlink" and kinds["lib"] == "dir"


def _layer_members(blob: Path) -> list[tuple[str, int, int]]:
    with gzip.open(blob) as raw, tarfile.open(fileobj=io.BytesIO(raw.read())) as tar:
        return [(m.name, m.mode, m.mtime) for m in tar.getmembers()]


def test_layers_are_deterministic_and_carry_their_parents(artifact: Path, tmp_path: Path) -> None:
    manifest = _manifest(artifact)
    tarball = artifact / manifest.tarball.name  # type: ignore[union-attr]
    index = index_tarball(tarball, manifest)
    layers = plan_layers(manifest, index.entries, index.files, 12)
    runs = []
    for name in ("one", "two"):
        out = tmp_path / name
        out.mkdir()
        runs.append(write_env_layers(tarball, layers, manifest.prefix, manifest.source_date_epoch, out))
    assert [b.digest for b in runs[0]] == [b.digest for b in runs[1]]
    assert len({b.digest for b in runs[0]}) == len(layers)
    python = next(b for b in runs[0] if b.name == "python")
    members = _layer_members(tmp_path / "one" / python.digest.removeprefix("sha256:"))
    names = [m[0] for m in members]
    assert names[:4] == ["data0", "data0/sw", "data0/sw/py3", "data0/sw/py3/bin"]
    assert "data0/sw/py3/lib/libpython3.11.so" in names
    assert {m[2] for m in members} == {manifest.source_date_epoch}


def test_layers_interrupted_mid_write_leave_no_blob_and_nothing_for_the_collector_to_fail_on(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the build makes the image: the partial blobs go, and their tar and gzip streams,
    once collected, must not write into the closed files (an 'Exception ignored ... write to closed
    file' traceback each, dozens after the one line saying the build was interrupted)."""
    import gc
    import sys

    from swstack.image import writer

    manifest = _manifest(artifact)
    tarball = artifact / manifest.tarball.name  # type: ignore[union-attr]
    index = index_tarball(tarball, manifest)
    layers = plan_layers(manifest, index.entries, index.files, 12)
    added = writer.LayerWriter.add
    calls = []

    def add(self: writer.LayerWriter, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 20:  # the fault: Ctrl-C half-way through
            raise KeyboardInterrupt
        added(self, *args)

    monkeypatch.setattr(writer.LayerWriter, "add", add)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(KeyboardInterrupt):
        write_env_layers(tarball, layers, manifest.prefix, manifest.source_date_epoch, tmp_path)
    gc.collect()
    assert [str(u.exc_value) for u in unraisable] == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["{", "[]", '{"layout": "x"}', '{"layout": "x", "tags": [], "layers": [1]}'])
def test_a_damaged_image_json_is_one_line_saying_to_make_the_image_again(tmp_path: Path, text: str) -> None:
    from swstack.errors import PushError
    from swstack.image import load_image_result

    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "image.json").write_text(text)
    with pytest.raises(PushError, match=r"image\.json: not an image description `doit image` wrote \(.*\); make the "
                                        r"image again with `doit image`$") as caught:
        load_image_result(tmp_path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["missing", "short", "config"])
def test_a_damaged_image_layout_is_refused_before_anything_is_sent(tmp_path: Path, damage: str) -> None:
    """A blob of ours gone or cut short is the layout's damage: one line saying to make the image
    again, not retries against the registry (none answers here) and advice to check it."""
    from swstack.errors import PushError
    from swstack.image import ImageResult, push_image
    from swstack.oci import RetryPolicy

    blobs = tmp_path / "image" / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = digest_of(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    manifest, config, layer = blob(b"manifest"), blob(b"config"), blob(b"layer bytes")
    image = ImageResult(tmp_path / "image", "127.0.0.1:9/swstack/py3", ("1.0",), manifest, config,
                        "127.0.0.1:9/swstack/debian:bookworm", "127.0.0.1:9/swstack/debian",
                        (LayerBlob("py", layer, "sha256:" + "d" * 64, len(b"layer bytes")),))
    gone = {"missing": layer, "short": layer, "config": config}[damage]
    path = blobs / gone.removeprefix("sha256:")
    if damage == "short":
        path.write_bytes(b"layer")
    else:
        path.unlink()
    with pytest.raises(PushError, match=r"the image layout is damaged; make it again with `doit image`$") as caught:
        push_image(image, retry=RetryPolicy(attempts=1))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_the_image_menu_leaves_out_signature_and_referrer_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """`doit push` signs (``sha256-<hex>.sig``) and attests (``sha256-<hex>``) beside every tag:
    those are no image a spawner may offer."""
    from types import SimpleNamespace

    from swstack.image import list_images
    from swstack.image import registry as image_registry
    from swstack.oci import OCI_MANIFEST

    digest = "sha256:" + "a" * 64
    tags = ["2026.12.06", "latest", "sha256-" + "a" * 64, "sha256-" + "a" * 64 + ".sig"]
    image = json.dumps({"config": {"digest": "sha256:" + "c" * 64}}).encode()

    class Client:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def list_tags(self, repository: str) -> list[str]:
            return tags

        def get_manifest(self, repository: str, reference: str) -> object:
            return SimpleNamespace(media_type=OCI_MANIFEST, digest=digest, data=image, json=lambda: json.loads(image))

    monkeypatch.setattr(image_registry, "RegistryClient", Client)
    monkeypatch.setattr(image_registry, "_labels_of", lambda *args: {"org.opencontainers.image.version": "2026.12.06"})
    entries = list_images(py3_stack(), offline_site("r.example.org:5000"))
    assert sorted(e["tag"] for e in entries) == ["2026.12.06", "latest"]


def _build(version: str, created: str) -> Any:
    from swstack.image.registry import Build
    from swstack.oci import CREATED, VERSION

    return Build.of({VERSION: version, CREATED: created})


class _Registry:
    """A repository's tags, each naming an image of ``version`` built at ``created``; every request counted."""

    registry = "r.example.org"

    def __init__(self, images: dict[str, tuple[str, str]]) -> None:
        self.images = images
        self.requests: list[str] = []

    def list_tags(self, repository: str) -> list[str]:
        self.requests.append("tags")
        return [*self.images, "latest", "w_2026_47", "d_2026_11_21", "r29_0_0", "sha256-" + "a" * 64 + ".sig"]

    def get_manifest(self, repository: str, reference: str) -> object:
        from types import SimpleNamespace

        from swstack.oci import CREATED, VERSION

        self.requests.append(reference)
        version, created = self.images[reference]
        return SimpleNamespace(json=lambda: {"annotations": {VERSION: version, CREATED: created}})


def test_only_tags_that_may_name_a_version_built_later_in_a_tags_span_are_fetched() -> None:
    """The menu's forms and signatures name no version: with a year of them, fetching each at every
    push would cost hundreds of requests. A date version is built on the day it names: one named
    before the pushed build's day, or outside the span of every tag asked about, is not fetched."""
    from swstack.image.plan import build_date, build_week
    from swstack.image.registry import LATEST, candidate_tags, moving_span

    every = tuple(span for tag in (LATEST, "w_2026_50", "d_2026_12_07") if (span := moving_span(tag)) is not None)
    assert every == (moving_span(LATEST), build_week, build_date) and moving_span("2026.12.07") is None
    signature = "sha256-" + "a" * 64 + ".sig"
    tags = ["2026.12.05", "2026.12.06.1", "2026.12.07", "2026.12.07.1", "2026.12.10", "2026.12.14", "29.0.0",
            "stable", "latest", "w_2026_50", "d_2026_12_07", "exp_0a1b2c3d4e5f", "r29_0_0", signature]
    pushed = _build("2026.12.07", "2026-12-07T03:00:00Z")  # a Monday: week 50
    assert candidate_tags(tags, pushed, every) == ["2026.12.07.1", "2026.12.10", "2026.12.14", "29.0.0", "stable"]
    assert candidate_tags(tags, pushed, (build_week,)) == ["2026.12.07.1", "2026.12.10", "29.0.0", "stable"]
    assert candidate_tags(tags, pushed, (build_date,)) == ["2026.12.07.1", "29.0.0", "stable"]
    release = _build("29.0.0", "2026-12-08T12:00:00Z")  # its own tag left out; dates before its day too
    assert candidate_tags(tags, release, every) == ["2026.12.10", "2026.12.14", "stable"]
    past_midnight = _build("2026.12.07", "2026-12-08T00:30:00Z")  # a later build of its day may follow it
    assert candidate_tags(tags, past_midnight, (build_date,)) == ["2026.12.07.1", "29.0.0", "stable"]


def test_the_builds_after_are_versions_built_later_the_last_built_first() -> None:
    """A version is a tag naming an image of that very version (``stable`` is none); which is
    newer is said by the build time, not the name: 29.0.0, built after 2026.11.21, is."""
    from swstack.image.registry import LATEST, builds_after, moving_span

    registry = _Registry({
        "stable": ("2026.11.21", "2026-11-21T06:00:00Z"),
        "2026.11.21": ("2026.11.21", "2026-11-21T06:00:00Z"),
        "2026.11.19": ("2026.11.19", "2026-11-19T06:00:00Z"),
        "29.0.0": ("29.0.0", "2026-11-22T12:00:00Z"),
        "28.0.0": ("28.0.0", "2026-10-01T12:00:00Z"),
    })
    client: Any = registry
    latest = moving_span(LATEST)
    assert latest is not None
    pushed = _build("2026.11.20", "2026-11-20T06:00:00Z")
    assert [b.version for b in builds_after(client, "swstack/py3", pushed, (latest,))] == ["29.0.0", "2026.11.21"]
    assert registry.requests == ["tags", "stable", "2026.11.21", "29.0.0", "28.0.0"]  # 2026.11.19 is not fetched


def test_each_moving_tag_stays_on_the_build_of_its_span_made_last(caplog: pytest.LogCaptureFixture) -> None:
    """A release built after a date build moves latest and its week's tag; the date build pushed
    again moves none of latest, the weekly and the daily tag, each held by its span's last build."""
    from swstack.image.registry import _tags_to_move

    tags = ("2026.11.21", "latest", "d_2026_11_21", "w_2026_47")
    release_tags = ("29.0.0", "latest", "d_2026_11_22", "w_2026_47", "r29_0_0")
    registry = _Registry({"2026.11.21": ("2026.11.21", "2026-11-21T00:00:00Z")})
    client: Any = registry
    release = _build("29.0.0", "2026-11-22T12:00:00Z")  # a Sunday: week 47
    assert _tags_to_move(client, "swstack/py3", release_tags, release) == release_tags
    assert registry.requests == ["tags"]  # 2026.11.21 names a day before the release's

    registry.images["2026.11.21.1"] = ("2026.11.21.1", "2026-11-21T06:00:00Z")  # later that day
    registry.images["29.0.0"] = ("29.0.0", release.created)
    registry.requests.clear()
    caplog.set_level("INFO", logger="swstack")
    assert _tags_to_move(client, "swstack/py3", tags, _build("2026.11.21", "2026-11-21T00:00:00Z")) == ("2026.11.21",)
    assert registry.requests == ["tags", "2026.11.21.1", "29.0.0"]
    assert [r.getMessage() for r in caplog.records] == [
        "r.example.org/swstack/py3:latest not moved: 29.0.0 (built 2026-11-22T12:00:00Z) "
        "was built after 2026.11.21 (built 2026-11-21T00:00:00Z)",
        "r.example.org/swstack/py3:d_2026_11_21 not moved: 2026.11.21.1 (built 2026-11-21T06:00:00Z) "
        "was built after 2026.11.21 (built 2026-11-21T00:00:00Z)",
        "r.example.org/swstack/py3:w_2026_47 not moved: 29.0.0 (built 2026-11-22T12:00:00Z) "
        "was built after 2026.11.21 (built 2026-11-21T00:00:00Z)",
    ]


def test_a_base_with_no_registry_host_the_site_does_not_map_points_at_its_stack_file_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swstack.image.build import base_reference
    from swstack.site import load_site

    monkeypatch.delenv("SWSTACK_SITE", raising=False)
    stack = py3_stack()  # base = "debian:bookworm-slim", from stacks/base.toml
    assert base_reference(stack, offline_site("127.0.0.1:5000")) == "127.0.0.1:5000/swstack/debian:bookworm"
    with pytest.raises(ImageError) as caught:
        base_reference(stack, load_site(None, stack.source.parent.parent if stack.source else None))
    message = str(caught.value)
    line = 1 + (Path(__file__).parents[2] / "stacks/base.toml").read_text().splitlines().index(
        'base = "debian:bookworm-slim"'
    )
    assert message.startswith(f"{Path(__file__).parents[2] / 'stacks/base.toml'}:{line}: [image] base ")
    assert "default site (no site file" in message and "[images.mirrors]" in message and "\n" not in message


def test_putting_the_base_into_a_registry_that_does_not_answer_says_so_before_any_engine_call() -> None:
    import socket

    from swstack.image import mirror_base

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"

    class NoEngine:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was asked to {name} before the registry was found down")

    with pytest.raises(ImageError) as caught:
        mirror_base(py3_stack(), offline_site(host), engine=NoEngine())  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"no registry answers at {host}, where the site keeps the base 'debian:bookworm-slim' "
        f"({host}/swstack/debian:bookworm); start it (the demo's: scripts/with-registry) and run again"
    )


def test_the_image_command_is_looked_up_in_the_tree_then_on_the_bases_path() -> None:
    """A command the tree has needs no base lookup; one it lacks is looked for on the base's PATH
    (its config's, here /usr/bin:/bin); a path in the prefix the tree lacks is refused at once."""
    index = TreeIndex((TreeEntry("bin", "dir"), TreeEntry("bin/jupyterhub-singleuser", "file", 10)), {})
    prefix = "/data0/sw/py3"
    assert command_lookup(("jupyterhub-singleuser", "--debug"), index, prefix, BASE) == ()
    assert command_lookup((f"{prefix}/bin/jupyterhub-singleuser",), index, prefix, BASE) == ()
    assert command_lookup(("bash",), index, prefix, BASE) == ("usr/bin/bash", "bin/bash")
    assert command_lookup(("/usr/local/bin/start.sh",), index, prefix, BASE) == ()  # the base's path: not checked
    assert command_lookup((), index, prefix, BASE) == ()
    with pytest.raises(ImageError, match="'/data0/sw/py3/bin/jupyter-lab': the stack's tree has no such file"):
        command_lookup((f"{prefix}/bin/jupyter-lab",), index, prefix, BASE)
