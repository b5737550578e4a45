"""A misbehaving registry: refused and dropped connections, 503s, 429s, permanent 4xx.

A real registry sits behind ``FlakyProxy``; each test asserts how many tries were
made, that the error says what happened, and that a failed publish never moved the tag.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.support.artifacts import make_artifact
from tests.support.registry import (
    Fault,
    FlakyProxy,
    LocalRegistry,
    free_port,
    registry_fixture,  # noqa: F401 - provides the `registry` fixture
)

from swstack import oci
from swstack.errors import ActivateError, PushError
from swstack.publish import publish_artifact

pytestmark = pytest.mark.registry

FAST = oci.RetryPolicy(attempts=4, initial=0.01, factor=2.0, maximum=0.05)
FOREVER = 10_000


@pytest.fixture
def published(
    registry: LocalRegistry, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, str, Path]:
    """A repository whose tag ``stable`` holds version 1; returns (repo, v1 digest, v2 artifact dir)."""
    repo = f"swstack/{request.node.name.replace('_', '-')[:60].strip('-')}"
    v1 = make_artifact(tmp_path / "a", "faulty", "1")
    v2 = make_artifact(tmp_path / "b", "faulty", "2", payload=512 << 10)
    digest = publish_artifact(v1, f"{registry.host}/{repo}:stable")
    return repo, digest, v2


def _tag_digest(registry: LocalRegistry, repo: str) -> str | None:
    return oci.RegistryClient(registry.host).head_manifest(repo, "stable")


def test_refused_connections_are_retried_then_reported(
    registry: LocalRegistry,
    published: tuple[str, str, Path],
) -> None:
    repo, v1, v2 = published
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("refuse", times=FOREVER))
        started = time.monotonic()
        with pytest.raises(PushError) as info:
            publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        assert time.monotonic() - started < 5
        assert proxy.count("HEAD", "/blobs/") == FAST.attempts  # every try, then no more
    message = str(info.value)
    assert "gave up after 4 attempts" in message
    assert "Connection" in message and "check it is up" in message
    assert _tag_digest(registry, repo) == v1


def test_nothing_listening_is_a_clear_error(tmp_path: Path) -> None:
    art = make_artifact(tmp_path, "nobody", "1")
    with pytest.raises(PushError, match=r"ConnectionRefusedError.*gave up after 4 attempts"):
        publish_artifact(art, f"127.0.0.1:{free_port()}/swstack/nobody:1", retry=FAST)
    with pytest.raises(ActivateError, match="gave up after 4 attempts"):
        oci.fetch_artifact(f"127.0.0.1:{free_port()}/swstack/nobody:1", tmp_path / "out", retry=FAST)


def test_a_few_refusals_are_absorbed(registry: LocalRegistry, published: tuple[str, str, Path]) -> None:
    repo, _, v2 = published
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("refuse", times=2))
        digest = publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        assert proxy.count("HEAD", "/blobs/", outcome="refuse") == 2
    assert _tag_digest(registry, repo) == digest


def test_upload_dropped_midway_restarts_the_blob(  # the registry drops a half-received upload
    registry: LocalRegistry, published: tuple[str, str, Path]
) -> None:
    repo, _, v2 = published
    with FlakyProxy(registry.host) as proxy:
        big = 256 << 10  # the tarball, not manifest.json
        proxy.add(Fault("drop", method="PUT", path="/blobs/uploads/", after_bytes=64 << 10, min_body=big))
        digest = publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        # Each blob opened one session, the dropped one a second; the drop really happened.
        assert proxy.count("PUT", "/blobs/uploads/", outcome="drop") == 1
        assert proxy.count("POST", "/blobs/uploads/") == 3
    assert _tag_digest(registry, repo) == digest
    tarball = oci.fetch_artifact(f"{registry.host}/{repo}:stable", v2.parent / "fetched")
    assert tarball.read_bytes() == (v2 / tarball.name).read_bytes()


def test_chunked_upload_resumes_where_the_registry_stopped(
    registry: LocalRegistry,
    published: tuple[str, str, Path],
) -> None:
    repo, _, v2 = published
    with FlakyProxy(registry.host) as proxy:
        # The connection for the second chunk is reset: the first 256 KiB are safe upstream.
        proxy.add(Fault("refuse", method="PATCH", path="/blobs/uploads/", skip=1))
        client = oci.RegistryClient(proxy.host, retry=FAST, chunk_size=256 << 10)
        digest = publish_artifact(v2, f"{proxy.host}/{repo}:stable", client=client)
        assert proxy.count("PATCH", "/blobs/uploads/", outcome="refuse") == 1
        assert proxy.count("GET", "/blobs/uploads/") == 1  # asked where to resume
        assert proxy.count("POST", "/blobs/uploads/") == 2  # manifest.json + tarball: no new session
    assert _tag_digest(registry, repo) == digest
    tarball = oci.fetch_artifact(f"{registry.host}/{repo}:stable", v2.parent / "fetched")
    assert tarball.read_bytes() == (v2 / tarball.name).read_bytes()


def test_chunk_dropped_every_time_fails_and_keeps_the_tag(
    registry: LocalRegistry,
    published: tuple[str, str, Path],
) -> None:
    repo, v1, v2 = published
    client_proxy = FlakyProxy(registry.host)
    with client_proxy as proxy:
        proxy.add(Fault("drop", method="PATCH", path="/blobs/uploads/", after_bytes=100_000, times=FOREVER))
        client = oci.RegistryClient(proxy.host, retry=FAST, chunk_size=256 << 10)
        with pytest.raises(PushError) as info:
            publish_artifact(v2, f"{proxy.host}/{repo}:stable", client=client)
        assert proxy.count("PATCH", "/blobs/uploads/", outcome="drop") == FAST.attempts
        assert proxy.count("PUT", "/manifests/") == 0  # the manifest is never sent
    assert "uploading sha256:" in str(info.value) and "gave up after 4 attempts" in str(info.value)
    assert _tag_digest(registry, repo) == v1


def test_503_on_the_manifest_keeps_the_tag(registry: LocalRegistry, published: tuple[str, str, Path]) -> None:
    repo, v1, v2 = published
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("status", method="PUT", path="/manifests/", status=503, times=FOREVER))
        with pytest.raises(PushError) as info:
            publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        assert proxy.count("PUT", "/manifests/") == FAST.attempts
    assert "503 Service Unavailable" in str(info.value)
    assert f"/v2/{repo}/manifests/stable" in str(info.value)
    assert _tag_digest(registry, repo) == v1


def test_503s_and_429s_are_waited_out(registry: LocalRegistry, published: tuple[str, str, Path]) -> None:
    repo, _, v2 = published
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("status", method="POST", path="/blobs/uploads/", status=503, times=2))
        proxy.add(Fault("status", method="PUT", path="/manifests/", status=429, times=1))
        digest = publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        assert proxy.count("POST", "/blobs/uploads/", outcome="status") == 2
        assert proxy.count("PUT", "/manifests/", outcome="status") == 1
    assert _tag_digest(registry, repo) == digest


def test_download_failures_retry_then_report(
    registry: LocalRegistry, published: tuple[str, str, Path]
) -> None:
    repo, _, v2 = published
    out = v2.parent / "host"
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("status", method="GET", path="/blobs/", status=502, times=2))
        fetched = oci.fetch_artifact(f"{proxy.host}/{repo}:stable", out, retry=FAST)
        assert proxy.count("GET", "/blobs/", outcome="status") == 2
        assert fetched.read_bytes() == next((v2.parent / "a").glob("*.tar.zst")).read_bytes()  # version 1's
        proxy.add(Fault("status", method="GET", path="/manifests/", status=503, times=FOREVER))
        with pytest.raises(ActivateError, match=r"503 Service Unavailable \(gave up after 4 attempts"):
            oci.fetch_artifact(f"{proxy.host}/{repo}:stable", out / "again", retry=FAST)
    assert not (out / "again").exists() or not any((out / "again").iterdir())


def test_permanent_errors_fail_at_once(registry: LocalRegistry, published: tuple[str, str, Path]) -> None:
    repo, v1, v2 = published
    with FlakyProxy(registry.host) as proxy:
        proxy.add(Fault("status", method="PUT", path="/manifests/", status=400, times=FOREVER))
        with pytest.raises(PushError, match="400 Bad Request"):
            publish_artifact(v2, f"{proxy.host}/{repo}:stable", retry=FAST)
        assert proxy.count("PUT", "/manifests/") == 1  # no retry for a 4xx
        proxy.add(Fault("status", method="GET", path="/blobs/", status=403, times=FOREVER))
        with pytest.raises(ActivateError, match="403 Forbidden; the credentials in use may not"):
            oci.fetch_artifact(f"{proxy.host}/{repo}:stable", v2.parent / "x", retry=FAST)
        assert proxy.count("GET", "/blobs/") == 1
    assert _tag_digest(registry, repo) == v1
