"""A real OCI registry for tests, and a fault-injecting proxy to put in front of it.

Input: a scratch directory. Output: Debian's ``docker-registry`` listening on
127.0.0.1 at a free port (``local_registry`` / the ``registry`` fixture), and
``FlakyProxy``, a small threaded HTTP proxy that refuses connections, drops them
mid-upload or answers 503, a bounded number of times, then forwards faithfully.
Both stop themselves: the registry when its context ends, the proxy at the end of
its context or after ``lifetime`` seconds, whichever comes first.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swstack import proc

REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class LocalRegistry:
    """A running registry: ``host`` is what goes in a reference, ``url`` what HTTP talks to."""

    host: str
    url: str
    storage: Path
    log: Path
    credentials: tuple[str, str] | None = None

    def auth_header(self) -> dict[str, str]:
        if self.credentials is None:
            return {}
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        return {"Authorization": f"Basic {token}"}


def free_port() -> int:
    """A TCP port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(port: int, storage: Path, htpasswd: Path | None = None) -> str:
    """The registry's YAML config: loopback only, filesystem storage, deletes allowed."""
    auth = (
        f"auth:\n  htpasswd:\n    realm: swstack-test\n    path: {htpasswd}\n" if htpasswd is not None else ""
    )
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  secret: swstack-test-only\n"
        f"{auth}"
    )


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry; the registry accepts bcrypt only (lowest cost: tests hash on every request)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # stdlib up to 3.12; bcrypt comes from libxcrypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/", timeout=2) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # up, and asking for credentials
    except OSError:
        return False


@contextmanager
def local_registry(
    workdir: Path, *, credentials: tuple[str, str] | None = None, startup_timeout: float = 20.0
) -> Iterator[LocalRegistry]:
    """Start ``docker-registry`` on a free loopback port; stop and reap it on exit."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip(f"{REGISTRY_BIN} is missing; run scripts/setup")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    htpasswd = None
    if credentials is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(*credentials))
    log_path = workdir / "registry.log"
    # A port picked free can be taken before the registry binds it: try a few.
    for _attempt in range(3):
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(render_config(port, storage, htpasswd))
        child = proc.spawn([REGISTRY_BIN, "serve", str(config)], log_file=log_path)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and child.poll() is None and not _answers(url):
            time.sleep(0.1)
        if child.poll() is None and _answers(url):
            break
        _stop(child)
    else:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"docker-registry did not answer on 127.0.0.1; its log:\n{tail}")
    try:
        yield LocalRegistry(
            host=f"127.0.0.1:{port}", url=url, storage=storage, log=log_path, credentials=credentials
        )
    finally:
        _stop(child)


def _stop(child: object) -> None:
    import subprocess

    assert isinstance(child, subprocess.Popen)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


@pytest.fixture(scope="session", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """One plain-http registry on 127.0.0.1 for the whole session."""
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One misbehaviour, applied to the next ``times`` requests that match.

    ``kind``: "refuse" resets the connection before answering, "drop" forwards
    ``after_bytes`` of the request body then resets both sides, "status" answers
    ``status`` without forwarding. ``method``/``path`` (a regex searched in the
    request path) select the requests; empty means any; ``min_body`` skips requests
    whose body is shorter; the first ``skip`` matching requests pass untouched. A
    "drop" of a body shorter than ``after_bytes`` happens once the body is through,
    before any answer.
    """

    kind: str
    method: str = ""
    path: str = ""
    times: int = 1
    after_bytes: int = 0
    status: int = 503
    min_body: int = 0
    skip: int = 0
    hits: int = 0

    def matches(self, method: str, path: str, body_length: int) -> bool:
        return (
            self.hits < self.times
            and body_length >= self.min_body
            and (not self.method or self.method == method)
            and (not self.path or re.search(self.path, path) is not None)
        )


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    outcome: str  # "forwarded" | the fault kind


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class FlakyProxy:
    """A loopback HTTP/1.1 proxy in front of ``upstream`` ("127.0.0.1:PORT") with scripted faults.

    It relies on one request per connection, which is what urllib (``Connection:
    close``) does. ``seen`` records every request and what the proxy did with it.
    """

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    lifetime: float = 120.0
    max_connections: int = 2000
    seen: list[Seen] = field(default_factory=list)
    # With (user, password): act as a token-auth registry (WWW-Authenticate: Bearer)
    # whose token service at /token grants scoped tokens for those credentials.
    token_auth: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self._tokens: dict[str, str] = {}  # token -> granted scope
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._serve, name="flaky-proxy", daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, method: str, path: str = "", outcome: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for s in self.seen
                if s.method == method
                and re.search(path, s.path) is not None
                and (outcome is None or s.outcome == outcome)
            )

    # -- internals

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        accepted = 0
        while not self._stop.is_set() and time.monotonic() < deadline and accepted < self.max_connections:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _pick(self, method: str, path: str, body_length: int) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body_length):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.hits += 1
                    self.seen.append(Seen(method, path, fault.kind))
                    return fault
            self.seen.append(Seen(method, path, "forwarded"))
            return None

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(15)
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            if not head:
                return
            method, path = _request_line(head)
            length = _content_length(head)
            if self.token_auth is not None and self._gate(client, head, method, path, rest, length):
                return
            fault = self._pick(method, path, length)
            if fault is not None and fault.kind == "refuse":
                _reset(client)
                return
            if fault is not None and fault.kind == "status":
                _drain(client, rest, length)
                reason = _REASONS.get(fault.status, "Error")
                status_line = f"HTTP/1.1 {fault.status} {reason}\r\n"
                client.sendall(status_line.encode() + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, port = self.upstream.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=15)
            upstream.sendall(head)
            if fault is not None and fault.kind == "drop":
                self._forward_then_drop(client, upstream, rest, min(fault.after_bytes, length))
                return
            if rest:
                upstream.sendall(rest)
            pump = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
            pump.start()
            _pump(upstream, client)
            pump.join(timeout=15)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with suppress(OSError):
                        sock.close()

    def _gate(
        self, client: socket.socket, head: bytes, method: str, path: str, rest: bytes, length: int
    ) -> bool:
        """Token auth in front of the registry; True when the request was answered here."""
        assert self.token_auth is not None
        if path.startswith("/token"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            expected = base64.b64encode(":".join(self.token_auth).encode()).decode()
            with self._lock:
                self.seen.append(Seen(method, path, "token"))
            if _header(head, "Authorization") != f"Basic {expected}":
                _answer(client, 401, b'{"details": "bad credentials"}')
                return True
            token = f"tok-{secrets.token_hex(8)}"
            with self._lock:
                self._tokens[token] = query.get("scope", [""])[0]
            _answer(client, 200, json.dumps({"token": token}).encode())
            return True
        auth = _header(head, "Authorization") or ""
        granted = self._tokens.get(auth.removeprefix("Bearer "), None) if auth.startswith("Bearer ") else None
        match = re.match(r"/v2/(.+?)/(?:blobs|manifests|tags)/", path)
        want = "pull" if method in ("GET", "HEAD") else "pull,push"
        needed = f"repository:{match.group(1)}:{want}" if match else ""
        if granted is not None and (not needed or granted == needed or granted.endswith(":pull,push")):
            return False
        _drain(client, rest, length)
        challenge = f'Bearer realm="{self.url}/token",service="swstack-test"'
        if needed:
            challenge += f',scope="{needed}"'
        with self._lock:
            self.seen.append(Seen(method, path, "challenged"))
        _answer(client, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        return True

    @staticmethod
    def _forward_then_drop(client: socket.socket, upstream: socket.socket, rest: bytes, budget: int) -> None:
        sent = 0
        data = rest
        while True:
            if data:
                chunk = data[: max(0, budget - sent)]
                upstream.sendall(chunk)
                sent += len(chunk)
            if sent >= budget:
                break
            data = client.recv(65536)
            if not data:
                break
        _reset(client)
        _reset(upstream)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return b"", b""
        buf += data
        if len(buf) > 65536:
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _request_line(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    return (parts[0], parts[1]) if len(parts) >= 2 else ("?", "?")


def _header(head: bytes, name: str) -> str | None:
    match = re.search(rb"(?im)^" + re.escape(name.encode()) + rb":\s*(.*?)\r?$", head)
    return match.group(1).decode("latin-1") if match else None


def _answer(sock: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Answer')}", f"Content-Length: {len(body)}"]
    lines += ["Content-Type: application/json", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _content_length(head: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return int(match.group(1)) if match else 0


def _drain(sock: socket.socket, rest: bytes, length: int) -> None:
    remaining = length - len(rest)
    while remaining > 0:
        data = sock.recv(min(65536, remaining))
        if not data:
            return
        remaining -= len(data)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), which the client sees as 'connection reset'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


# ----------------------------------------------------------------------------- a scripted registry

Route = tuple[int, dict[str, str], bytes]  # status, headers, body


@contextmanager
def scripted_registry(routes: dict[str, Route]) -> Iterator[str]:
    """A registry on 127.0.0.1 answering GET and HEAD from ``routes`` (path -> status, headers,
    body; anything else 404): the answers a real registry never gives, for the client's refusals.
    Yields the ``host:port`` that goes in a reference."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            status, headers, body = routes.get(self.path.split("?", 1)[0], (404, {}, b""))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def artifact_routes(artifact_dir: Path, repository: str, tag: str) -> tuple[dict[str, Route], dict[str, Any]]:
    """``artifact_dir`` served as the OCI artifact ``repository:tag`` (its manifest by tag and by
    digest, both blobs), and that manifest as JSON to edit into broken variants."""
    import hashlib

    from swstack.artifact import TARBALL_TYPES, render_artifact_manifest
    from swstack.manifest import Manifest
    from swstack.oci import OCI_MANIFEST, TITLE, Descriptor

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    manifest_bytes = (artifact_dir / "manifest.json").read_bytes()
    manifest = Manifest.from_json(manifest_bytes.decode())
    tarball = next(p for p in artifact_dir.glob("*.tar.*") if not p.name.endswith(".sha256"))
    data = tarball.read_bytes()
    layer = Descriptor(TARBALL_TYPES["zstd"], digest(data), len(data), {TITLE: tarball.name})
    _, rendered = render_artifact_manifest(manifest, manifest_bytes, layer)
    answer = (200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest(rendered)}, rendered)
    routes: dict[str, Route] = {
        "/v2/": (200, {}, b"{}"),
        f"/v2/{repository}/manifests/{tag}": answer,
        f"/v2/{repository}/manifests/{digest(rendered)}": answer,
        f"/v2/{repository}/blobs/{digest(data)}": (200, {}, data),
        f"/v2/{repository}/blobs/{digest(manifest_bytes)}": (200, {}, manifest_bytes),
    }
    return routes, json.loads(rendered)
