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
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.hub import USER, Hub, api, execute, hub_config, running_hub, server_ready, wait_for
from tests.support.imagekit import PROJECT, image_site, py3_stack  # noqa: F401 - fixture
from tests.support.registry import registry_fixture  # noqa: F401 - fixture

from swstack.engine import DockerEngine
from swstack.image import build_image, push_image
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow, pytest.mark.jupyterhub]


@pytest.fixture
def hub(tmp_path: Path, py3_artifact: Path, image_site: Site) -> Iterator[Hub]:  # noqa: F811
    image = build_image(py3_stack(), image_site, PROJECT, py3_artifact)
    pushed = push_image(image)
    ref = f"{pushed.repository}:{pushed.tags[0]}"
    DockerEngine().remove_image(ref, force=True)  # the spawner pulls it from the registry
    with running_hub(tmp_path, hub_config(tmp_path, ref)) as running:
        yield running


def test_hub_spawns_the_image_and_runs_code_in_the_kernel(hub: Hub) -> None:
    url = hub.url
    status, _ = api(f"{url}/hub/api/users/{USER}", "POST")
    assert status in (201, 409)
    status, body = api(f"{url}/hub/api/users/{USER}/server", "POST")
    assert status in (201, 202), body
    wait_for("alice's server", lambda: server_ready(url), 240, hub.process, hub.log)
    status, kernel = api(f"{url}/user/{USER}/api/kernels", "POST", {"name": "python3"})
    assert status == 201, kernel
    ws = url.replace("http://", "ws://") + f"/user/{USER}/api/kernels/{kernel['id']}/channels"
    code = "import sys, numpy, ipykernel; print(sys.prefix, numpy.__version__, numpy.arange(4).sum())"
    printed = asyncio.run(execute(ws, code))
    prefix, _version, total = printed.split()
    assert prefix == "/data0/sw/py3" and total == "6"
    status, _ = api(f"{url}/user/{USER}/api/kernels/{kernel['id']}", "DELETE")
    assert status == 204
