"""A real JupyterHub (DockerSpawner, proxy and hub on 127.0.0.1) for the hub tests: start, talk to, stop.

``running_hub`` writes a config, starts JupyterHub with configurable-http-proxy from
``.cache/node`` (scripts/setup installs it), waits for its API, and on the way out stops
the user's server and the hub (which stops its proxy and servers on SIGTERM).
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swstack import proc

from .imagekit import PROJECT
from .registry import free_port

CHP = PROJECT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
USER = "alice"
TOKEN = uuid.uuid4().hex

# What every test hub shares: loopback ports, its files in the work directory, the npm
# proxy, any user name logs in, and a "tester" service whose token the tests use.
HUB_BASE = """
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
c.JupyterHub.services = [{{"name": "tester", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [
    {{
        "name": "tester",
        "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
        "services": ["tester"],
    }}
]
"""

DOCKER_SPAWNER = """
from dockerspawner import DockerSpawner


class HostNetworkSpawner(DockerSpawner):
    # On the host network the server is where we told it to listen.
    async def get_ip_and_port(self):
        return "127.0.0.1", self.port


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
"""


def api(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
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


def wait_for(what: str, check: Any, timeout: float, hub: subprocess.Popen[bytes], log_path: Path) -> Any:
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


def server_ready(base: str) -> bool:
    status, user = api(f"{base}/hub/api/users/{USER}")
    return status == 200 and bool((user.get("servers") or {}).get("", {}).get("ready"))


async def execute(ws_url: str, code: str) -> str:
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


@dataclass(frozen=True)
class Hub:
    url: str  # the proxy's public URL
    process: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class HubConfig:
    text: str  # jupyterhub_config.py
    url: str  # where the proxy will answer


def hub_config(work: Path, image: str) -> HubConfig:
    """The JupyterHub config on free loopback ports, spawning ``image`` with DockerSpawner."""
    return hub_config_with(work, DOCKER_SPAWNER.format(image=image, server_port=free_port()))


def hub_config_with(work: Path, spawner: str) -> HubConfig:
    """``HUB_BASE`` on free loopback ports, then ``spawner`` (config lines naming the spawner)."""
    proxy_port, hub_port, api_port = (free_port() for _ in range(3))
    text = HUB_BASE.format(
        proxy_port=proxy_port, hub_port=hub_port, proxy_api_port=api_port, work=work, chp=CHP, token=TOKEN
    )
    return HubConfig(text + spawner, f"http://127.0.0.1:{proxy_port}")


@contextmanager
def running_hub(work: Path, config: HubConfig) -> Iterator[Hub]:
    """JupyterHub started from ``config`` in ``work``; stopped, with the user's server, on exit."""
    if not CHP.exists():
        pytest.fail(f"{CHP} is missing: run scripts/setup (it installs configurable-http-proxy from npm)")
    config_path = work / "jupyterhub_config.py"
    config_path.write_text(config.text)
    url = config.url
    log_path = work / "hub.log"
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": uuid.uuid4().hex}
    child = proc.spawn(
        [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config_path)],
        cwd=work,
        env=env,
        log_file=log_path,
    )
    try:
        wait_for("the hub API", lambda: api(f"{url}/hub/api/")[0] == 200, 60, child, log_path)
        yield Hub(url, child, log_path)
        api(f"{url}/hub/api/users/{USER}/server", "DELETE")
        wait_for("the server to stop", lambda: not server_ready(url), 60, child, log_path)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)  # the hub stops its proxy and servers on SIGTERM
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=10)
