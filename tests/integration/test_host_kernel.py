"""A real built py3 artifact activated in a private /data0, then a real IPython kernel from its spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.host import bwrap_argv, repack_tree, unpack_artifact

KERNEL_SCRIPT = r"""
import glob, os, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from swstack.cli import main

rc = main(["activate", sys.argv[1]])
assert rc == 0, rc
dirs = glob.glob("/data0/sw/py3/share/jupyter/kernels/*/kernel.json")
assert dirs, "no kernel spec in /data0/sw/py3/share/jupyter/kernels"
name = os.path.basename(os.path.dirname(dirs[0]))
ksm = KernelSpecManager(kernel_dirs=["/data0/sw/py3/share/jupyter/kernels"])
km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
env = dict(os.environ, PATH="/data0/sw/py3/bin:" + os.environ["PATH"])
env.pop("PYTHONPATH", None)
km.start_kernel(env=env)
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
kc.execute_interactive("import numpy, sys; print(sys.prefix)", timeout=120,
                       output_hook=lambda m: out.append(m["content"].get("text", "")))
kc.stop_channels()
km.shutdown_kernel(now=True)
print("KERNEL:" + "".join(out).strip())
"""


@pytest.mark.slow
def test_real_kernel_from_activated_stack(py3_artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "kernel_check.py"
    script.write_text(KERNEL_SCRIPT)
    env = dict(os.environ)
    res = subprocess.run(
        bwrap_argv(root, [sys.executable, str(script), str(py3_artifact)], tmpfs_size=8 << 30),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # The kernel runs from the version's own tree (bin/swstack-launch), not through the live link.
    assert "KERNEL:/data0/sw.tmpfs/.py3@2026.11.21" in res.stdout


# Start, drive and stop a real kernel from the live version's spec, as a server does.
KERNEL_HELPERS = r"""
import json, os, subprocess, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from swstack.cli import main

KERNELS = "/data0/sw/py3/share/jupyter/kernels"
report = {}


def start():
    ksm = KernelSpecManager(kernel_dirs=[KERNELS])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    env = dict(os.environ, PATH="/data0/sw/py3/bin:" + os.environ["PATH"])
    env.pop("PYTHONPATH", None)
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def run(kc, code):
    out = []
    kc.execute_interactive(code, timeout=120,
                           output_hook=lambda m: out.append(m["content"].get("text", "")))
    return "".join(out).strip()


def stop(km, kc):
    pid = km.provisioner.pid
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.1)


PROBE = "import sys, swstack_probe; print(sys.prefix, swstack_probe.VERSION)"
"""

SWITCH_SCRIPT = KERNEL_HELPERS + r"""
v1, v2, v3 = sys.argv[1:4]
report["activate1"] = main(["activate", v1])
# The single-user server starts the same way: its module, from the version's own tree.
LAUNCH = "/data0/sw/py3/bin/swstack-launch"
report["singleuser_help"] = subprocess.run(
    [LAUNCH, "-m", "jupyterhub.singleuser", "--help"], capture_output=True).returncode
report["singleuser_file"] = subprocess.run(
    [LAUNCH, "-c", "import jupyterhub.singleuser as s; print(s.__file__)"],
    capture_output=True, text=True).stdout.strip()
km1, kc1 = start()
report["k1_before"] = run(kc1, "import sys; print(sys.prefix)")
report["activate2"] = main(["activate", v2])
report["k1_after"] = run(kc1, PROBE)
# What the kernel starts is a new process: through sys.executable (as %pip does) its own
# version, by name through PATH (as !python, !pip do) the live one.
SUB = "import subprocess, sys; print(subprocess.run([{!r}, '-c', %r], capture_output=True, text=True).stdout)" % PROBE
report["k1_sub_executable"] = run(kc1, SUB.replace("{!r}", "sys.executable"))
report["k1_sub_path"] = run(kc1, SUB.replace("{!r}", "'python'"))
km2, kc2 = start()
report["k2"] = run(kc2, PROBE)
stop(km2, kc2)
report["activate3"] = main(["activate", v3])
report["prune_running"] = main(["prune", "--keep", "0"])
report["kept_running"] = sorted(os.listdir("/data0/sw.tmpfs")), sorted(os.listdir("/data0"))
report["k1_late"] = run(kc1, PROBE)
stop(km1, kc1)
report["prune_exited"] = main(["prune", "--keep", "0"])
report["kept_exited"] = sorted(os.listdir("/data0/sw.tmpfs")), sorted(os.listdir("/data0"))
print("REPORT:" + json.dumps(report))
"""


def probe_versions(py3_artifact: Path, tmp_path: Path, versions: list[str]) -> list[Path]:
    """Artifacts of the real py3 tree, one per version, whose module ``swstack_probe`` names it."""
    tree = tmp_path / "tree"
    manifest = unpack_artifact(py3_artifact, tree)
    site = next(tree.glob("lib/python3.*/site-packages"))
    probe = str((site / "swstack_probe.py").relative_to(tree))
    artifacts = [
        repack_tree(tree, manifest, tmp_path / v, v, {probe: f"VERSION = {v!r}\n".encode()}) for v in versions
    ]
    shutil.rmtree(tree)
    return artifacts


def run_in_private_data0(tmp_path: Path, script_text: str, args: list[str]) -> dict[str, Any]:
    """Run a script in a private /data0 with a ramdisk; return the report it prints."""
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "check.py"
    script.write_text(script_text)
    res = subprocess.run(
        bwrap_argv(root, [sys.executable, str(script), *args], tmpfs_size=8 << 30),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report: dict[str, Any] = json.loads(res.stdout.split("REPORT:", 1)[1])
    return report


@pytest.mark.slow
def test_running_kernel_keeps_its_version_across_a_switch(py3_artifact: Path, tmp_path: Path) -> None:
    """A real kernel started before a switch imports from its own version until it exits; prune keeps
    that version while it runs and frees it afterwards."""
    versions = ["2026.12.01", "2026.12.02", "2026.12.03"]
    artifacts = probe_versions(py3_artifact, tmp_path, versions)
    report = run_in_private_data0(tmp_path, SWITCH_SCRIPT, [*map(str, artifacts)])
    v1, v2, v3 = versions
    assert (report["activate1"], report["activate2"], report["activate3"]) == (0, 0, 0)
    assert report["k1_before"] == f"/data0/sw.tmpfs/.py3@{v1}"
    assert report["singleuser_help"] == 0
    assert report["singleuser_file"].startswith(f"/data0/sw.tmpfs/.py3@{v1}/lib/python3.")
    assert report["k1_after"] == f"/data0/sw.tmpfs/.py3@{v1} {v1}"
    assert report["k2"] == f"/data0/sw.tmpfs/.py3@{v2} {v2}"
    assert report["k1_sub_executable"] == f"/data0/sw.tmpfs/.py3@{v1} {v1}"
    assert report["k1_sub_path"] == f"/data0/sw/py3 {v2}"  # started through the live link (docs/host.md)
    # v1 is neither active nor previous: only the running kernel keeps it.
    assert report["prune_running"] == 3
    ramdisk, disk = report["kept_running"]
    assert f".py3@{v1}" in ramdisk and f"sw.{v1}" in disk
    assert report["k1_late"] == f"/data0/sw.tmpfs/.py3@{v1} {v1}"
    assert report["prune_exited"] == 0
    ramdisk, disk = report["kept_exited"]
    assert f".py3@{v1}" not in ramdisk and f"sw.{v1}" not in disk
    assert f".py3@{v3}" in ramdisk and {f"sw.{v2}", f"sw.{v3}"} <= set(disk)


RESTORED_SCRIPT = KERNEL_HELPERS + r"""
v1, v2 = sys.argv[1:3]
n1 = os.path.basename(v1)
copy = f"/data0/sw.tmpfs/.py3@{n1}"
report["activate1"] = main(["activate", v1])
km1, kc1 = start()
report["k1_before"] = run(kc1, "import sys; print(sys.prefix)")
# A file of the copy changed by a write: restore loads the copy again and sets this one aside.
probe = run(kc1, "import glob, sys; print(glob.glob(sys.prefix + '/lib/python3.*/site-packages/swstack_probe.py')[0])")
with open(probe, "a") as fh:
    fh.write("# changed on the ramdisk\n")
report["restore"] = main(["restore"])
report["activate2"] = main(["activate", v2])
report["prune_running"] = main(["prune", "--keep", "0"])
report["kept_running"] = sorted(os.listdir("/data0/sw.tmpfs"))
report["k1_late"] = run(kc1, PROBE)
stop(km1, kc1)
report["prune_exited"] = main(["prune", "--keep", "0"])
report["kept_exited"] = sorted(os.listdir("/data0/sw.tmpfs"))
print("REPORT:" + json.dumps(report))
"""


@pytest.mark.slow
def test_kernel_keeps_its_version_after_restore_reloads_its_copy(py3_artifact: Path, tmp_path: Path) -> None:
    """restore loads a damaged copy again and sets the damaged one aside; a kernel running from it
    opens its next files by the copy's path, so the copy loaded again is kept while that kernel runs
    (it was dropped at the next switch: the kernel's next import failed)."""
    versions = ["2026.12.01", "2026.12.02"]
    artifacts = probe_versions(py3_artifact, tmp_path, versions)
    report = run_in_private_data0(tmp_path, RESTORED_SCRIPT, [*map(str, artifacts)])
    v1, v2 = versions
    assert (report["activate1"], report["restore"], report["activate2"]) == (0, 0, 0)
    assert report["k1_before"] == f"/data0/sw.tmpfs/.py3@{v1}"
    assert f".py3@{v1}" in report["kept_running"]
    assert any(n.startswith(f".py3@{v1}.damaged-") for n in report["kept_running"])
    assert report["k1_late"] == f"/data0/sw.tmpfs/.py3@{v1} {v1}"
    assert report["prune_exited"] == 0
    assert [n for n in report["kept_exited"] if n.startswith(f".py3@{v1}")] == []


# The spawner starts the single-user server as docs/host.md tells sites to: through the
# version's launcher at the live path, with nothing of the test's environment.
LOCAL_SPAWNER = """
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = "{work}/home/{{username}}"
c.Spawner.cmd = ["/data0/sw/py3/bin/swstack-launch", "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"]  # this test runs as root; a site's servers run as their users
c.Spawner.ip = "127.0.0.1"
c.Spawner.env_keep = ["LANG", "LC_ALL"]
c.Spawner.environment = {{"PATH": "/data0/sw/py3/bin:/usr/bin:/bin"}}
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
"""

SERVER_SCRIPT = r"""
import os, json, sys
from pathlib import Path
from swstack.cli import main
from tests.support import hub as hubkit
from tests.support.hub import USER, api, running_hub, server_ready

work, spawner, v1, v2, v3 = Path(sys.argv[1]), *sys.argv[2:6]
report = {}


def start_server(hub):
    status = api(f"{hub.url}/hub/api/users/{USER}/server", "POST")[0]
    assert status in (201, 202), f"spawn: HTTP {status}"
    hubkit.wait_for("the server", lambda: server_ready(hub.url), 180, hub.process, hub.log)
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()
            and any(m in cmdline(p) for m in (b"-m\0jupyterhub.singleuser", b"/bin/jupyterhub-singleuser"))]
    assert len(pids) == 1, pids
    return pids[0]


def stop_server(hub, pid):
    api(f"{hub.url}/hub/api/users/{USER}/server", "DELETE")
    hubkit.wait_for("the server to stop", lambda: not server_ready(hub.url) and not os.path.exists(f"/proc/{pid}"),
                    60, hub.process, hub.log)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def display_name(hub):
    # Read by the server from its own sys.prefix's share/jupyter/kernels at each request.
    status, specs = api(f"{hub.url}/user/{USER}/api/kernelspecs")
    assert status == 200, status
    return specs["kernelspecs"]["python3"]["spec"]["display_name"]


def trees(pid):
    # The version trees the server process maps (its interpreter, libraries, extension modules).
    with open(f"/proc/{pid}/maps") as fh:
        return sorted({p.split("/")[3] for p in (line.split()[-1] for line in fh)
                       if p.startswith("/data0/sw.tmpfs/.py3@")})


report["activate1"] = main(["activate", v1])
config = hubkit.hub_config_with(work, spawner)
with running_hub(work, config) as hub:
    assert api(f"{hub.url}/hub/api/users/{USER}", "POST")[0] in (201, 409)
    old = start_server(hub)
    report["old_before"] = [display_name(hub), trees(old)]
    report["activate2"] = main(["activate", v2])
    report["old_after"] = [display_name(hub), trees(old)]
    report["activate3"] = main(["activate", v3])
    report["prune_running"] = main(["prune", "--keep", "0"])
    report["kept_running"] = sorted(os.listdir("/data0/sw.tmpfs"))
    stop_server(hub, old)
    report["prune_exited"] = main(["prune", "--keep", "0"])
    report["kept_exited"] = sorted(os.listdir("/data0/sw.tmpfs"))
    new = start_server(hub)
    report["new"] = [display_name(hub), trees(new)]
print("REPORT:" + json.dumps(report))
"""


@pytest.mark.slow
def test_running_single_user_server_keeps_its_version_across_a_switch(py3_artifact: Path, tmp_path: Path) -> None:
    """A real single-user server, spawned by a real JupyterHub through the version's launcher, keeps
    reading its own version's files after a switch; prune keeps that version while it runs; the next
    server gets the new version."""
    from tests.support.imagekit import PROJECT

    tree = tmp_path / "tree"
    manifest = unpack_artifact(py3_artifact, tree)
    spec_path = "share/jupyter/kernels/python3/kernel.json"
    spec = json.loads((tree / spec_path).read_text())
    versions = ["2026.12.01", "2026.12.02", "2026.12.03"]
    artifacts = []
    for v in versions:
        named = json.dumps({**spec, "display_name": f"Python 3 (py3 {v})"}, indent=1).encode()
        artifacts.append(repack_tree(tree, manifest, tmp_path / v, v, {spec_path: named}))
    shutil.rmtree(tree)
    root, work = tmp_path / "root", tmp_path / "hub"
    root.mkdir()
    work.mkdir()
    script = tmp_path / "server_check.py"
    script.write_text(SERVER_SCRIPT)
    argv = [sys.executable, str(script), str(work), LOCAL_SPAWNER.format(work=work), *map(str, artifacts)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}  # the script uses the tests' hub helpers
    res = subprocess.run(
        bwrap_argv(root, argv, tmpfs_size=8 << 30), capture_output=True, text=True, timeout=1800, env=env
    )
    hub_log = (work / "hub.log").read_text(errors="replace")[-4000:] if (work / "hub.log").exists() else ""
    assert res.returncode == 0, res.stdout + res.stderr + hub_log
    report = json.loads(res.stdout.split("REPORT:", 1)[1])
    v1, v2, v3 = versions
    assert (report["activate1"], report["activate2"], report["activate3"]) == (0, 0, 0)
    assert report["old_before"] == [f"Python 3 (py3 {v1})", [f".py3@{v1}"]]
    # After the switch the running server still reads, and maps, only its own version.
    assert report["old_after"] == [f"Python 3 (py3 {v1})", [f".py3@{v1}"]]
    assert report["prune_running"] == 3 and f".py3@{v1}" in report["kept_running"]
    assert report["prune_exited"] == 0 and f".py3@{v1}" not in report["kept_exited"]
    assert report["new"] == [f"Python 3 (py3 {v3})", [f".py3@{v3}"]]
