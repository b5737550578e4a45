"""Publish and fetch against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.artifacts import make_artifact
from tests.support.registry import (
    FlakyProxy,
    LocalRegistry,
    local_registry,
    registry_fixture,  # noqa: F401 - provides the `registry` fixture
)

from swstack import artifact, oci
from swstack.errors import ActivateError, PushError
from swstack.manifest import Manifest
from swstack.publish import plan_publish, publish_artifact

pytestmark = pytest.mark.registry

FAST = oci.RetryPolicy(attempts=3, initial=0.01, maximum=0.05)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_publish_list_and_fetch_round_trip(registry: LocalRegistry, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "roundtrip", "2026-11-21")
    digest = publish_artifact(art, f"{registry.host}/swstack/roundtrip")

    # The tag defaults to the manifest's version and points at the digest we were given.
    assert oci.list_tags(f"{registry.host}/swstack/roundtrip") == ["2026-11-21"]
    client = oci.RegistryClient(registry.host)
    client.ping()
    assert client.head_manifest("swstack/roundtrip", "2026-11-21") == digest
    doc = client.get_manifest("swstack/roundtrip", digest)
    assert doc.digest == digest and doc.media_type == oci.OCI_MANIFEST
    body = doc.json()
    assert body["artifactType"] == artifact.ARTIFACT_TYPE
    assert body["annotations"][oci.VERSION] == "2026-11-21"
    assert body["annotations"][artifact.STACK] == "roundtrip"

    out = tmp_path / "fetched"
    tarball = oci.fetch_artifact(f"oci://{registry.host}/swstack/roundtrip:2026-11-21", out)
    assert tarball == out / "roundtrip-2026-11-21-linux-64.tar.zst"
    assert _files(out) == _files(art)  # tarball, .sha256 and manifest.json, byte for byte
    assert Manifest.load(out / "manifest.json").tarball is not None

    # By digest too.
    again = oci.fetch_artifact(f"{registry.host}/swstack/roundtrip@{digest}", tmp_path / "by-digest")
    assert again.read_bytes() == tarball.read_bytes()


def test_republish_sends_no_blob_twice(registry: LocalRegistry, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "again", "1.0", payload=256 << 10)
    with FlakyProxy(registry.host) as proxy:
        ref = f"{proxy.host}/swstack/again:1.0"
        first = publish_artifact(art, ref)
        assert proxy.count("POST", "/blobs/uploads/") == 2  # tarball + manifest.json (config = same blob)
        second = publish_artifact(art, ref)
        assert second == first
        assert proxy.count("POST", "/blobs/uploads/") == 2  # nothing new was uploaded
        assert proxy.count("PUT", "/manifests/1.0") == 2
        # A second tag for the same artifact costs one manifest PUT and no blob.
        client = oci.RegistryClient(proxy.host)
        publish_artifact(art, f"{proxy.host}/swstack/again:stable", client=client)
        assert client.uploaded == [] and len(client.skipped) == 2
        assert proxy.count("POST", "/blobs/uploads/") == 2


def test_a_version_tag_is_not_moved_to_other_content(registry: LocalRegistry, tmp_path: Path) -> None:
    # Another checkout numbers its versions from its own artifacts/: it can build a version the
    # registry already has, with other bytes. Publishing it must not swap what hosts activated.
    first = make_artifact(tmp_path / "a", "clash", "1.0")
    other = make_artifact(tmp_path / "b", "clash", "1.0", payload=64 << 10)
    client = oci.RegistryClient(registry.host)
    digest = publish_artifact(first, f"{registry.host}/swstack/clash")
    with pytest.raises(PushError, match=r"swstack/clash:1.0 already names other content .*nothing was sent"):
        publish_artifact(other, f"{registry.host}/swstack/clash", client=client)
    assert client.uploaded == []  # refused before any blob
    assert client.head_manifest("swstack/clash", "1.0") == digest
    assert publish_artifact(first, f"{registry.host}/swstack/clash") == digest  # the same bytes again: fine
    publish_artifact(other, f"{registry.host}/swstack/clash:candidate")  # a tag that is no version may move


def test_chunked_upload_and_streamed_download(registry: LocalRegistry, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "chunked", "1.0", payload=3 << 20)
    client = oci.RegistryClient(registry.host, chunk_size=1 << 20)
    with FlakyProxy(registry.host) as proxy:
        proxied = oci.RegistryClient(proxy.host, chunk_size=1 << 20)
        publish_artifact(art, f"{proxy.host}/swstack/chunked:1.0", client=proxied)
        assert proxy.count("PATCH", "/blobs/uploads/") >= 3  # the 3 MiB tarball went in 1 MiB chunks
    out = tmp_path / "out"
    tarball = oci.fetch_artifact(f"{registry.host}/swstack/chunked:1.0", out)
    assert tarball.read_bytes() == (art / tarball.name).read_bytes()
    assert client.blob_exists(
        "swstack/chunked", "sha256:" + (art / f"{tarball.name}.sha256").read_text().split()[0]
    )


def test_fetch_skips_a_tarball_already_there(registry: LocalRegistry, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "cached", "1.0")
    publish_artifact(art, f"{registry.host}/swstack/cached:1.0")
    out = tmp_path / "out"
    with FlakyProxy(registry.host) as proxy:
        oci.fetch_artifact(f"{proxy.host}/swstack/cached:1.0", out)
        assert proxy.count("GET", "/blobs/") == 2
        oci.fetch_artifact(f"{proxy.host}/swstack/cached:1.0", out)
        assert proxy.count("GET", "/blobs/") == 3  # manifest.json again, not the tarball
        # A damaged copy is fetched again, not trusted.
        tarball = out / "cached-1.0-linux-64.tar.zst"
        tarball.write_bytes(b"x" * tarball.stat().st_size)
        oci.fetch_artifact(f"{proxy.host}/swstack/cached:1.0", out)
        assert proxy.count("GET", "/blobs/") == 5
    assert tarball.read_bytes() == (art / tarball.name).read_bytes()


def test_missing_tag_is_a_clear_error(registry: LocalRegistry, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "missing", "2026-11-21")
    publish_artifact(art, f"{registry.host}/swstack/missing")
    with pytest.raises(ActivateError) as info:
        oci.fetch_artifact(f"{registry.host}/swstack/missing:2026-11-12", tmp_path / "out")
    message = str(info.value)
    assert "swstack/missing:2026-11-12: no such tag or digest" in message
    assert "did you mean: 2026-11-21" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ActivateError, match="has no tags"):
        oci.fetch_artifact(f"{registry.host}/swstack/never-published:1", tmp_path / "out")
    assert oci.list_tags(f"{registry.host}/swstack/never-published") == []


def test_tags_are_listed(registry: LocalRegistry, tmp_path: Path) -> None:
    # docker-registry 2.8 ignores ``n`` and answers in one page; paging is covered in the unit tests.
    art = make_artifact(tmp_path / "artifacts", "paged", "1.0")
    client = oci.RegistryClient(registry.host)
    tags = [f"2026-01-0{i}" for i in range(1, 6)]
    for tag in tags:
        publish_artifact(art, f"{registry.host}/swstack/paged:{tag}", client=client)
    assert sorted(client.list_tags("swstack/paged", page_size=2)) == tags
    assert oci.list_tags(f"oci://{registry.host}/swstack/paged:ignored") == tags


def test_an_image_is_not_taken_for_an_artifact(registry: LocalRegistry, tmp_path: Path) -> None:
    client = oci.RegistryClient(registry.host)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    config_bytes = config.encode()
    config_digest = oci.digest_of(config_bytes)
    client.push_blob("swstack/image", config_bytes, config_digest, len(config_bytes))
    manifest = oci.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [],
        }
    )
    client.put_manifest("swstack/image", "1.0", manifest)
    with pytest.raises(ActivateError, match="is a container image, not a swstack stack artifact"):
        oci.fetch_artifact(f"{registry.host}/swstack/image:1.0", tmp_path / "out")


def test_inconsistent_artifact_dir_is_refused(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifacts", "broken", "1.0")
    (art / "broken-1.0-linux-64.tar.zst.sha256").write_text("0" * 64 + "  broken-1.0-linux-64.tar.zst\n")
    with pytest.raises(PushError, match="disagrees with manifest.json"):
        plan_publish(art, "127.0.0.1:1/swstack/broken")
    with pytest.raises(PushError, match="no manifest.json"):
        plan_publish(tmp_path, "127.0.0.1:1/swstack/broken")


def test_basic_auth_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no stray credentials
    art = make_artifact(tmp_path / "artifacts", "private", "1.0")
    with local_registry(tmp_path / "reg", credentials=("ci", "s3cret-pw")) as reg:
        ref = f"{reg.host}/swstack/private:1.0"
        monkeypatch.delenv("SWSTACK_REGISTRY_USER", raising=False)
        with pytest.raises(PushError, match="requires credentials and none were found"):
            publish_artifact(art, ref, retry=FAST)

        monkeypatch.setenv("SWSTACK_REGISTRY_USER", "ci")
        monkeypatch.setenv("SWSTACK_REGISTRY_PASSWORD", "wrong-pw")
        with pytest.raises(PushError) as info:
            publish_artifact(art, ref, retry=FAST)
        assert "rejected the credentials of 'ci'" in str(info.value)
        assert "wrong-pw" not in str(info.value)

        monkeypatch.setenv("SWSTACK_REGISTRY_PASSWORD", "s3cret-pw")
        digest = publish_artifact(art, ref, retry=FAST)

        # The host reads the same credentials from docker's config file.
        monkeypatch.delenv("SWSTACK_REGISTRY_USER")
        monkeypatch.delenv("SWSTACK_REGISTRY_PASSWORD")
        (tmp_path / "docker").mkdir()
        auth = __import__("base64").b64encode(b"ci:s3cret-pw").decode()
        (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        tarball = oci.fetch_artifact(ref, tmp_path / "out")
        assert tarball.read_bytes() == (art / tarball.name).read_bytes()
        assert oci.RegistryClient(reg.host).head_manifest("swstack/private", "1.0") == digest


def test_token_auth(registry: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token-auth front (Bearer challenge, token service) before the real registry."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    art = make_artifact(tmp_path / "artifacts", "tokened", "1.0")
    with FlakyProxy(registry.host, token_auth=("robot", "t0ken-pw")) as proxy:
        ref = f"{proxy.host}/swstack/tokened:1.0"
        monkeypatch.setenv("SWSTACK_REGISTRY_USER", "robot")
        monkeypatch.setenv("SWSTACK_REGISTRY_PASSWORD", "nope-pw")
        with pytest.raises(PushError) as info:
            publish_artifact(art, ref, retry=FAST)
        assert "rejected the credentials of 'robot'" in str(info.value)
        assert "nope-pw" not in str(info.value)

        monkeypatch.setenv("SWSTACK_REGISTRY_PASSWORD", "t0ken-pw")
        client = oci.RegistryClient(proxy.host, retry=FAST)
        digest = publish_artifact(art, ref, client=client)
        # One token for the push scope, reused for every blob and the manifest.
        assert proxy.count("GET", "^/token", outcome="token") == 2  # the failed try + this one
        assert client.head_manifest("swstack/tokened", "1.0") == digest
        assert proxy.count("GET", "^/token", outcome="token") == 3  # pull scope: its own token

        tarball = oci.fetch_artifact(ref, tmp_path / "out")
        assert tarball.read_bytes() == (art / tarball.name).read_bytes()


def test_a_menu_of_the_artifact_repository_says_where_the_images_are(registry: LocalRegistry, tmp_path: Path) -> None:
    """`swstack hub-config <registry>/<stack>` (the artifacts' repository) said its tags had no menu form."""
    from swstack.hub import MenuError, read_registry

    art = make_artifact(tmp_path / "artifacts", "menu", "2026.11.21")
    publish_artifact(art, f"{registry.host}/menu:2026.11.21", client=oci.RegistryClient(registry.host))
    with pytest.raises(MenuError) as refused:
        read_registry(f"{registry.host}/menu")
    assert str(refused.value) == (
        f"{registry.host}/menu: holds the stack's published artifacts (doit publish, for swstack activate), not "
        f"its images; give the repository the images are pushed to, the stack's [image] repository "
        f"(<registry>/swstack/<stack> by default, docs/image.md)"
    )
