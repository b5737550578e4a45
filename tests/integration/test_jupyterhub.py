"""A real JupyterHub spawns the stack's image with DockerSpawner; code runs in the user's kernel.

The image of the real py3 artifact (``py3_artifact``) is built, pushed to the test
registry and spawned from there by JupyterHub 6 (the channel's version) with
DockerSpawner on this machine's engine: DummyAuthenticator, hub and proxy on
127.0.0.1, the single-user container on the host network so it reaches the hub. A
service token starts the user's server, opens a kernel through the proxy and runs
code over the kernel's websocket. Everything is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.imagekit import PROJECT, image_site, py3_stack  # noqa: F401 - fixture
from tests.support.registry import free_port, registry_fixture  # noqa: F401 - fixture

from swstack import proc
from swstack.engine import DockerEngine
from swstack.image import build_image, push_image
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow, pytest.mark.jupyterhub]

CHP = PROJECT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
USER = "alice"
TOKEN = uuid.uuid4().hex

HUB_CONFIG = """
from dockerspawner import DockerSpawner


class HostNetworkSpawner(DockerSpawner):
    # On the host network the server is where we told it to listen.
    async def get_ip_and_port(self):
        return "127.0.0.1", self.port


c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{work}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.pid_file = "{work}/hub.pid"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = HostNetworkSpawner
c.DockerSpawner.image = "{image}"
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True  # no port bindings: they mean nothing on the host network
c.DockerSpawner.ip = "127.0.0.1"
c.DockerSpawner.port = {server_port}
c.DockerSpawner.remove = True
c.DockerSpawner.start_timeout = 180
c.DockerSpawner.http_timeout = 120
c.JupyterHub.services = [{{"name": "tester", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [
    {{
        "name": "tester",
        "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
        "services": ["tester"],
    }}
]
"""


def _api(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {TOKEN}"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _wait(what: str, check: Any, timeout: float, hub: subprocess.Popen[bytes], log_path: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            pytest.fail(
                f"jupyterhub exited ({hub.returncode}) while waiting for {what}:\n"
                + log_path.read_text()[-3000:]
            )
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; hub log:\n{log_path.read_text()[-3000:]}")


@dataclass(frozen=True)
class Hub:
    url: str  # the proxy's public URL
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def hub(tmp_path: Path, py3_artifact: Path, image_site: Site) -> Iterator[Hub]:  # noqa: F811
    if not CHP.exists():
        pytest.fail(f"{CHP} is missing: run scripts/setup (it installs configurable-http-proxy from npm)")
    image = build_image(py3_stack(), image_site, PROJECT, py3_artifact)
    pushed = push_image(image)
    ref = f"{pushed.repository}:{pushed.tags[0]}"
    DockerEngine().remove_image(ref, force=True)  # the spawner pulls it from the registry
    proxy_port, hub_port, api_port, server_port = (free_port() for _ in range(4))
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            proxy_port=proxy_port,
            hub_port=hub_port,
            proxy_api_port=api_port,
            server_port=server_port,
            work=tmp_path,
            chp=CHP,
            image=ref,
            token=TOKEN,
        )
    )
    log_path = tmp_path / "hub.log"
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": uuid.uuid4().hex}
    child = proc.spawn(
        [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config)],
        cwd=tmp_path,
        env=env,
        log_file=log_path,
    )
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        _wait("the hub API", lambda: _api(f"{base}/hub/api/")[0] == 200, 60, child, log_path)
        yield Hub(base, child, log_path)
        _api(f"{base}/hub/api/users/{USER}/server", "DELETE")
        _wait("the server to stop", lambda: not _server_ready(base), 60, child, log_path)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)  # the hub stops its proxy and servers on SIGTERM
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=10)


def _server_ready(base: str) -> bool:
    status, user = _api(f"{base}/hub/api/users/{USER}")
    return status == 200 and bool((user.get("servers") or {}).get("", {}).get("ready"))


async def _execute(ws_url: str, code: str) -> str:
    """Send one execute_request over the kernel's websocket; return its stdout."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {TOKEN}"}))
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "username": USER,
        "session": uuid.uuid4().hex,
        "msg_type": "execute_request",
        "version": "5.3",
        "date": "",
    }
    conn.write_message(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    out: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(conn.read_message(), timeout=120)
        if raw is None:
            break
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    conn.close()
    return "".join(out)


def test_hub_spawns_the_image_and_runs_code_in_the_kernel(hub: Hub) -> None:
    url = hub.url
    status, _ = _api(f"{url}/hub/api/users/{USER}", "POST")
    assert status in (201, 409)
    status, body = _api(f"{url}/hub/api/users/{USER}/server", "POST")
    assert status in (201, 202), body
    _wait("alice's server", lambda: _server_ready(url), 240, hub.process, hub.log)
    status, kernel = _api(f"{url}/user/{USER}/api/kernels", "POST", {"name": "python3"})
    assert status == 201, kernel
    ws = url.replace("http://", "ws://") + f"/user/{USER}/api/kernels/{kernel['id']}/channels"
    code = "import sys, numpy, ipykernel; print(sys.prefix, numpy.__version__, numpy.arange(4).sum())"
    printed = asyncio.run(_execute(ws, code))
    prefix, _version, total = printed.split()
    assert prefix == "/data0/sw/py3" and total == "6"
    status, _ = _api(f"{url}/user/{USER}/api/kernels/{kernel['id']}", "DELETE")
    assert status == 204
