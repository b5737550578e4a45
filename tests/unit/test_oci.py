"""The pure parts of the OCI client: references, schemes, backoff, credentials, auth, redaction."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from swstack import oci
from swstack.errors import ActivateError, PushError
from swstack.oci import (
    Challenge,
    Credentials,
    Reference,
    RetryPolicy,
    authorization_for,
    parse_challenge,
    parse_reference,
    redact,
)

DIGEST = "sha256:" + "ab" * 32

# -- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/swstack/py3:2026-11-21", Reference("127.0.0.1:5000", "swstack/py3", "2026-11-21")),
        ("oci://registry.example.org/py3:v1", Reference("registry.example.org", "py3", "v1")),
        ("localhost/a/b/c", Reference("localhost", "a/b/c", "latest")),
        (f"reg.io:443/py3@{DIGEST}", Reference("reg.io:443", "py3", None, DIGEST)),
        (f"reg.io/py3:t1@{DIGEST}", Reference("reg.io", "py3", "t1", DIGEST)),
        ("[::1]:5000/py3:x", Reference("[::1]:5000", "py3", "x")),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_reference_round_trips_and_picks_digest_over_tag() -> None:
    ref = parse_reference(f"reg.io/swstack/py3:t1@{DIGEST}")
    assert str(ref) == f"reg.io/swstack/py3:t1@{DIGEST}"
    assert ref.reference == DIGEST
    assert parse_reference("reg.io/py3", default_tag="2026-01-01").reference == "2026-01-01"
    assert parse_reference("reg.io/py3", default_tag=None).tag is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("swstack/py3:1", "no registry host"),
        ("py3", "no registry host"),
        ("reg.io/Py3:1", "bad repository name"),
        ("reg.io/py3:bad tag", "bad tag"),
        ("reg.io/py3@sha256:abc", "bad digest"),
        ("reg.io/", "bad repository name"),
    ],
)
def test_parse_reference_rejects_with_a_hint(text: str, fragment: str) -> None:
    with pytest.raises(ActivateError) as info:
        parse_reference(text, error=ActivateError)
    assert fragment in str(info.value)
    assert "expected host[:port]/name" in str(info.value)


def test_scheme_is_http_for_loopback_and_listed_registries_only() -> None:
    assert oci.default_scheme("127.0.0.1:5000", env={}) == "http"
    assert oci.default_scheme("localhost:5000", env={}) == "http"
    assert oci.default_scheme("[::1]:5000", env={}) == "http"
    assert oci.default_scheme("registry.example.org", env={}) == "https"
    assert oci.default_scheme("10.0.0.5:5000", env={}) == "https"
    env = {"SWSTACK_INSECURE_REGISTRIES": "10.0.0.5:5000, other:1"}
    assert oci.default_scheme("10.0.0.5:5000", env=env) == "http"


# -- backoff


def test_backoff_schedule_is_exponential_and_bounded() -> None:
    assert RetryPolicy(attempts=6, initial=0.5, factor=2, maximum=3).delays() == (0.5, 1.0, 2.0, 3.0, 3.0)
    assert RetryPolicy(attempts=1).delays() == ()


def test_backoff_from_environment() -> None:
    policy = RetryPolicy.from_env({"SWSTACK_REGISTRY_RETRIES": "3", "SWSTACK_REGISTRY_BACKOFF": "0.01"})
    assert policy.delays() == (0.01, 0.02)
    assert RetryPolicy.from_env({"SWSTACK_REGISTRY_RETRIES": "0"}).attempts == 1
    with pytest.raises(PushError, match="not a number"):
        RetryPolicy.from_env({"SWSTACK_REGISTRY_RETRIES": "many"})
    with pytest.raises(ActivateError, match="not a number"):  # a host's client: exit 11, not 10
        RetryPolicy.from_env({"SWSTACK_REGISTRY_BACKOFF": "soon"}, error=ActivateError)


@pytest.mark.parametrize(
    ("status", "transient"), [(500, True), (502, True), (503, True), (429, True), (408, True), (501, False)]
)
def test_transient_statuses(status: int, transient: bool) -> None:
    assert oci.is_transient_status(status) is transient


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413])
def test_client_errors_are_permanent(status: int) -> None:
    assert not oci.is_transient_status(status)


# -- credentials


def _docker_config(tmp_path: Path, auths: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_credentials_from_environment_win(tmp_path: Path) -> None:
    config = _docker_config(tmp_path, {"reg.io": {"auth": base64.b64encode(b"docker:pw1").decode()}})
    env = {"SWSTACK_REGISTRY_USER": "ci", "SWSTACK_REGISTRY_PASSWORD": "s3cret"}
    assert oci.load_credentials("reg.io", env, config) == Credentials("ci", "s3cret")


@pytest.mark.parametrize("key", ["reg.io:5000", "https://reg.io:5000", "https://reg.io:5000/v1/"])
def test_credentials_from_docker_config(tmp_path: Path, key: str) -> None:
    config = _docker_config(tmp_path, {key: {"auth": base64.b64encode(b"alice:pa:ss").decode()}})
    assert oci.load_credentials("reg.io:5000", {}, config) == Credentials("alice", "pa:ss")
    assert oci.load_credentials("other.io", {}, config) is None


def test_no_credentials_when_no_config(tmp_path: Path) -> None:
    assert oci.load_credentials("reg.io", {}, tmp_path / "missing.json") is None


def test_credentials_never_show_in_repr() -> None:
    assert "hunter2" not in repr(Credentials("bob", "hunter2"))


# -- auth challenges


def test_parse_bearer_challenge() -> None:
    header = 'Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull"'
    challenge = parse_challenge(header)
    assert challenge == Challenge(
        "bearer",
        {
            "realm": "https://auth.example.org/token",
            "service": "registry.example.org",
            "scope": "repository:a/b:pull",
        },
    )
    url = oci.token_request_url(challenge, "")
    assert url == (
        "https://auth.example.org/token?service=registry.example.org&scope=repository%3Aa%2Fb%3Apull"
    )
    pushing = oci.token_request_url(challenge, "repository:a/b:pull,push")
    assert pushing.endswith("scope=repository%3Aa%2Fb%3Apull%2Cpush")  # what we will need, at once


def test_token_url_uses_our_scope_when_the_challenge_has_none() -> None:
    challenge = parse_challenge('Bearer realm="https://a.io/token?x=1"')
    assert challenge is not None
    assert (
        oci.token_request_url(challenge, "repository:p:pull")
        == "https://a.io/token?x=1&scope=repository%3Ap%3Apull"
    )


def test_auth_header_selection() -> None:
    creds = Credentials("u", "p")
    basic = parse_challenge('Basic realm="registry"')
    bearer = parse_challenge('Bearer realm="https://a.io/token"')
    assert basic is not None and bearer is not None
    assert authorization_for(basic, creds, None) == "Basic " + base64.b64encode(b"u:p").decode()
    assert authorization_for(basic, None, None) is None
    assert authorization_for(bearer, creds, "tok") == "Bearer tok"
    assert authorization_for(bearer, None, None) is None
    assert authorization_for(Challenge("negotiate", {}), creds, "tok") is None
    assert parse_challenge("") is None


# -- redaction


def test_redact_removes_secrets_headers_and_userinfo() -> None:
    creds = Credentials("alice", "hunter2!")
    token = base64.b64encode(b"alice:hunter2!").decode()
    text = (
        f"failed with hunter2! and Authorization: Basic {token} and Bearer eyJabc.def-ghi "
        "at https://alice:hunter2!@reg.io/v2/"
    )
    out = redact(text, creds.secrets())
    assert "hunter2" not in out
    assert token not in out
    assert "eyJabc" not in out
    assert "alice:" not in out
    assert "https://***@reg.io/v2/" in out


def test_client_errors_are_redacted(tmp_path: Path) -> None:
    client = oci.RegistryClient("reg.io", credentials=Credentials("alice", "hunter2!"))
    error = client._fail("the password hunter2! leaked")
    assert isinstance(error, PushError)
    assert "hunter2" not in str(error)


def test_next_link_and_digest_query() -> None:
    assert (
        oci._next_link('</v2/a/tags/list?n=2&last=b>; rel="next"', "http://r:1/v2/a/tags/list?n=2")
        == "http://r:1/v2/a/tags/list?n=2&last=b"
    )
    assert oci._next_link(None, "http://r") is None
    assert (
        oci._with_digest("http://r/u?_state=x", DIGEST) == f"http://r/u?_state=x&digest=sha256%3A{'ab' * 32}"
    )


def test_tag_pages_are_followed() -> None:
    """Registries page ``tags/list`` with ``Link: <...>; rel="next"``; a loopback server pages here."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    all_tags = [f"t{i}" for i in range(7)]

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            query = parse_qs(urlsplit(self.path).query)
            n, last = int(query["n"][0]), query.get("last", [""])[0]
            start = all_tags.index(last) + 1 if last else 0
            page = all_tags[start : start + n]
            body = json.dumps({"name": "p", "tags": page}).encode()
            self.send_response(200)
            if start + n < len(all_tags):
                self.send_header("Link", f'</v2/p/tags/list?n={n}&last={page[-1]}>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = oci.RegistryClient(f"127.0.0.1:{server.server_address[1]}", credentials=None)
        assert client.list_tags("p", page_size=3) == all_tags
    finally:
        server.shutdown()
        server.server_close()


# -- one platform picker, by conda's platform name


def _index(*entries: dict[str, object]) -> dict[str, object]:
    return {"schemaVersion": 2, "manifests": list(entries)}


def _entry(digest: str, os_name: str | None = None, arch: str | None = None, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {"digest": digest, "size": 1, **extra}
    if os_name or arch:
        entry["platform"] = {k: v for k, v in (("os", os_name), ("architecture", arch)) if v}
    return entry


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("linux-64", ("linux", "amd64")), ("linux-aarch64", ("linux", "arm64")), ("osx-arm64", ("darwin", "arm64"))],
)
def test_conda_platforms_map_to_oci(platform: str, expected: tuple[str, str]) -> None:
    assert oci.oci_platform(platform) == expected


def test_the_index_entry_of_the_platform_is_picked() -> None:
    index = _index(
        _entry("sha256:att", "unknown", "unknown"),
        _entry("sha256:arm", "linux", "arm64"),
        _entry("sha256:amd", "linux", "amd64"),
    )
    assert oci.pick_from_index(index, "linux-64", error=PushError, what="x") == "sha256:amd"
    assert oci.pick_from_index(index, "linux-aarch64", error=PushError, what="x") == "sha256:arm"
    missing = r"base image b: the index has no entry for linux/ppc64le \(platform linux-ppc64le\)"
    with pytest.raises(PushError, match=missing):
        oci.pick_from_index(index, "linux-ppc64le", error=PushError, what="base image b")


def test_an_entry_naming_no_platform_is_the_fallback_and_our_type_is_preferred() -> None:
    index = _index(_entry("sha256:other", "linux", "arm64"), _entry("sha256:any"))
    assert oci.pick_from_index(index, "linux-64", error=ActivateError, what="r") == "sha256:any"
    typed = _index(_entry("sha256:image", "linux", "amd64"), _entry("sha256:ours", artifactType="x/y"))
    assert oci.pick_from_index(typed, "linux-64", error=ActivateError, what="r", artifact_type="x/y") == "sha256:ours"


def test_an_index_of_the_wrong_shape_is_refused_not_a_traceback() -> None:
    with pytest.raises(ActivateError, match="r: malformed index: manifests is str, not a list"):
        oci.pick_from_index({"manifests": "sha256:x"}, "linux-64", error=ActivateError, what="r")
    # A platform that is not an object matches nothing; an entry naming none is still the fallback.
    index = {"manifests": [{"digest": "sha256:odd", "platform": "linux/amd64"}, _entry("sha256:any")]}
    assert oci.pick_from_index(index, "linux-64", error=ActivateError, what="r") == "sha256:any"


def test_a_descriptor_of_the_wrong_shape_is_refused() -> None:
    for data in ({"mediaType": "m", "digest": "sha256:x", "size": -1}, {"mediaType": "m", "digest": "d", "size": 1,
                                                                        "annotations": "title"}, "a"):  # fmt: skip
        with pytest.raises(ActivateError, match="malformed descriptor"):
            oci.Descriptor.from_json(data, ActivateError)


def test_one_renderer_for_every_manifest() -> None:
    config = oci.Descriptor("a/config", DIGEST, 2)
    layer = oci.Descriptor("a/layer", DIGEST, 3, {oci.TITLE: "t"})
    plain = json.loads(oci.render_manifest(config=config, layers=[layer]))
    assert plain == {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": "a/config", "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": "a/layer", "digest": DIGEST, "size": 3, "annotations": {oci.TITLE: "t"}}],
    }
    subject = {"mediaType": oci.OCI_MANIFEST, "digest": DIGEST, "size": 9}
    full = json.loads(
        oci.render_manifest(config=config, layers=[layer], annotations={"k": "v"}, artifact_type="x/y", subject=subject)
    )
    assert (full["annotations"], full["artifactType"], full["subject"]) == ({"k": "v"}, "x/y", subject)


def test_a_missing_tag_is_answered_with_versions_not_signature_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing and attesting add ``sha256-<hex>.sig`` and ``sha256-<hex>`` beside each tag; the
    tags offered for a missing one are the versions a user can type."""
    client = oci.RegistryClient("127.0.0.1:9")
    hexes = [c * 64 for c in "abcdef"]
    tags = ["2026.12.05", "2026.12.06", *(f"sha256-{h}" for h in hexes), *(f"sha256-{h}.sig" for h in hexes)]
    monkeypatch.setattr(client, "list_tags", lambda repository: tags)
    message = client._not_found_message("py3", "nope")
    assert message.endswith("; it has: 2026.12.05, 2026.12.06"), message
    monkeypatch.setattr(client, "list_tags", lambda repository: tags[2:])
    assert client._not_found_message("py3", "nope").endswith("(the repository has no tags: publish one first)")
