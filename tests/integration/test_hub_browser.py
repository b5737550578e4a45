"""A user picks a stack version from the rendered menu in a real browser; the server runs it.

Two images of the real py3 artifact go to the test registry with the stack's own tags:
the date build ``2026.11.21`` and the release ``29.0.0`` (the same tree relabelled, so
the second image costs a config, not a build). ``swstack hub-config`` renders the
DockerSpawner menu from the registry, ``swstack prepull`` puts its images on this
machine's engine, and a real JupyterHub with DockerSpawner loads the rendered file as it
is (``load_subconfig``). Headless Chromium (Debian's, driven by selenium through Debian's
chromedriver) logs in, sees the menu, picks the weekly (not the default release) and
starts the server; a kernel in it reports the image's version. The menu's screenshot is
written where ``SWSTACK_HUB_SCREENSHOT`` says (docs/hub-menu.png is one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tests.support.hub import USER, Hub, api, execute, hub_config, running_hub, server_ready, wait_for
from tests.support.imagekit import PROJECT, image_site, py3_stack, relabelled_artifact  # noqa: F401 - fixture
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - fixture

from swstack import cli
from swstack.engine import DockerEngine
from swstack.hub import Menu
from swstack.image import PushResult, build_image, push_image
from swstack.site import Site

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow, pytest.mark.jupyterhub]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RELEASE_BUILT = "2026-11-24T10:00:00Z"  # a Tuesday: week 48, after the date build's week 47


@dataclass(frozen=True)
class MenuHub:
    hub: Hub
    menu: Menu
    versions: dict[str, str]  # pinned image -> version


@pytest.fixture
def menu_hub(
    tmp_path: Path,
    py3_artifact: Path,
    image_site: Site,  # noqa: F811
    registry: LocalRegistry,  # noqa: F811
) -> Iterator[MenuHub]:
    repository = f"{registry.host}/hubtest/py3"
    release = relabelled_artifact(py3_artifact, tmp_path / "release", "29.0.0", RELEASE_BUILT)
    pushed: dict[str, PushResult] = {}
    for artifact in (py3_artifact, release):
        image = build_image(py3_stack(), image_site, PROJECT, artifact)
        pushed[artifact.name] = push_image(image, repository=repository)
    versions = {f"{repository}@{p.digest}": version for version, p in pushed.items()}
    engine = DockerEngine()
    for ref in versions:
        engine.remove_image(ref, force=True)  # prepull must bring them

    menu_py, menu_json = tmp_path / "menu_config.py", tmp_path / "menu.json"
    assert cli.main(["hub-config", repository, "--format", "docker", "--output", str(menu_py)]) == 0
    assert cli.main(["hub-config", repository, "--format", "json", "--output", str(menu_json)]) == 0
    menu = Menu.from_json(menu_json.read_text(), str(menu_json))
    assert cli.main(["prepull", str(menu_json), "--keep", "3"]) == 0
    assert all(engine.image_exists(ref) for ref in versions)

    # The rendered file, loaded as it is: allowed_images, the default image, pull policy.
    config = hub_config(tmp_path, "set-by-the-menu")
    config = replace(config, text=config.text + f"\nload_subconfig({str(menu_py)!r})\n")
    with running_hub(tmp_path, config) as hub:
        yield MenuHub(hub, menu, versions)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: run scripts/setup (it installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        "--window-size=1100,760",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    # The driver is Debian's: selenium is given its path, so it never looks for one to download.
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_pick_a_version_in_the_browser_and_the_kernel_runs_it(
    menu_hub: MenuHub, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    menu, url = menu_hub.menu, menu_hub.hub.url
    assert [e.tag for e in menu.entries] == ["r29_0_0", "w_2026_48", "w_2026_47", "d_2026_11_24", "d_2026_11_21"]

    driver.get(f"{url}/hub/login")
    driver.find_element(By.ID, "username_input").send_keys(USER)
    driver.find_element(By.ID, "password_input").send_keys("any")
    driver.find_element(By.ID, "login_submit").click()
    WebDriverWait(driver, 60).until(lambda d: "/hub/login" not in d.current_url)
    driver.get(f"{url}/hub/spawn")
    select = Select(WebDriverWait(driver, 60).until(lambda d: d.find_element(By.NAME, "image")))
    shown = [option.text for option in select.options]
    assert shown == [e.display_name for e in menu.entries]
    assert select.first_selected_option.text == menu.default.display_name  # the release

    # The screenshot shows every entry: the closed <select> drawn as an open list box.
    driver.execute_script("arguments[0].size = arguments[0].options.length", select._el)
    shot = tmp_path / "hub-menu.png"
    driver.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("SWSTACK_HUB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SWSTACK_HUB_SCREENSHOT"])
    driver.execute_script("arguments[0].size = 0", select._el)

    chosen = next(e for e in menu.entries if e.tag == "w_2026_47")
    assert not chosen.default and menu_hub.versions[chosen.image] == "2026.11.21"
    select.select_by_visible_text(chosen.display_name)
    driver.find_element(By.CSS_SELECTOR, "#spawn_form button[type=submit]").click()
    wait_for("alice's server", lambda: server_ready(url), 240, menu_hub.hub.process, menu_hub.hub.log)

    status, kernel = api(f"{url}/user/{USER}/api/kernels", "POST", {"name": "python3"})
    assert status == 201, kernel
    ws = url.replace("http://", "ws://") + f"/user/{USER}/api/kernels/{kernel['id']}/channels"
    code = "import os, sys; print(sys.prefix, os.environ['SWSTACK_VERSION'], os.environ['JUPYTER_IMAGE_SPEC'])"
    prefix, version, spec = asyncio.run(execute(ws, code)).split()
    assert (prefix, version, spec) == ("/data0/sw/py3", "2026.11.21", chosen.image)
    container = DockerEngine().client.containers.get(f"jupyter-{USER}")
    assert container.image.id == DockerEngine().client.images.get(chosen.image).id
    status, _ = api(f"{url}/user/{USER}/api/kernels/{kernel['id']}", "DELETE")
    assert status == 204
