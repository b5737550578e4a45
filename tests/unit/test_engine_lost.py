"""Fault injection: the Docker engine goes away while a container's output streams.

A stand-in for the engine's API on a unix socket answers the calls that start a container,
then drops the connection in the middle of its log stream, as a stopped or restarted
dockerd does. The happy path runs against the real engine in tests/integration/test_engine.py.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from swstack.engine import DockerEngine
from swstack.errors import SandboxError


class _DroppingEngine(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gone = False  # set once the log stream broke: from then on no request is answered

    def handle_one_request(self) -> None:
        if type(self).gone:
            self.close_connection = True
            return
        super().handle_one_request()

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: object = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        elif path.endswith("/version"):
            self._reply(200, {"ApiVersion": "1.44", "Version": "28.0.0", "MinAPIVersion": "1.24"})
        elif path.endswith("/json"):
            self._reply(200, {"Id": "c0ffee", "Config": {"Tty": False}})
        elif "/logs" in path:
            # The stream begins, then the engine is gone: no end chunk, the socket closes.
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            line = b"\x01\x00\x00\x00\x00\x00\x00\x0binstalling\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            type(self).gone = True
            self.close_connection = True
            self.connection.shutdown(2)
        else:
            self._reply(404, {"message": f"no {path}"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if path.endswith("/containers/create"):
            self._reply(201, {"Id": "c0ffee", "Warnings": []})
        elif path.endswith("/start"):
            self._reply(204)
        else:
            self._reply(404, {"message": f"no {path}"})

    def do_DELETE(self) -> None:
        self._reply(204)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


@pytest.fixture
def dropping_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    sock = tmp_path / "docker.sock"
    _DroppingEngine.gone = False
    server = _UnixServer(str(sock), _DroppingEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    try:
        yield f"unix://{sock}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_engine_that_goes_away_mid_run_is_one_line_saying_so(dropping_engine: str) -> None:
    seen: list[str] = []
    with pytest.raises(SandboxError) as caught:
        DockerEngine(timeout=10).run("builder:1", ["rattler-install", "--prefix", "/data0/sw/py3"],
                                     on_output=seen.append)
    message = str(caught.value)
    assert message.startswith(
        f"running rattler-install in builder:1: the connection to the Docker engine at {dropping_engine} broke ("
    ), message
    assert message.endswith("check that the engine is running, then run again") and "\n" not in message
    assert seen == ["installing"]  # what streamed before the break reached the log
