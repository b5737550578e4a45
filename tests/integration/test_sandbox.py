"""Both sandbox backends for real: /data0/sw inside is the build dir outside, owned by the
invoking user; the machine's /data0 stays absent; network=False really cuts the network.

The docker backend needs an engine (scripts/with-engine starts one); without it the docker
cases fail with the "no Docker engine answers" message instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from swstack import proc
from swstack.errors import SandboxError
from swstack.sandbox import Mount, Sandbox, open_sandbox, private_root_argv

DOCKER = pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow])

WRITE_HELLO = """
import os, pathlib
pathlib.Path("/data0/sw/x").mkdir(parents=True)
pathlib.Path("/data0/sw/x/hello").write_text("hello from " + os.environ["WHO"])
import swstack, rattler, conda_pack, zstandard
"""

# Exit 0 when a TCP connection to the address succeeds, 1 when it cannot be opened.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 443), timeout=5).close()
except OSError as exc:
    print("no connection:", exc)
    sys.exit(1)
print("connected")
"""


@pytest.fixture(autouse=True)
def machine_data0_is_never_created() -> object:
    assert not os.path.lexists("/data0"), "this machine has a /data0: the tests would prove nothing"
    yield
    assert not os.path.lexists("/data0"), "a sandbox created the machine's /data0"


@pytest.fixture(scope="module", params=["namespace", DOCKER])
def box(request: pytest.FixtureRequest) -> Sandbox:
    return opened(request.param)


def opened(kind: str, **kwargs: object) -> Sandbox:
    """open_sandbox, failing (never skipping) with the user's message when no engine answers."""
    try:
        return open_sandbox(kind, **kwargs)  # type: ignore[arg-type]
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def pypi_address() -> str:
    return socket.gethostbyname("pypi.org")


def test_a_write_to_data0_sw_lands_in_the_build_dir_as_the_user(box: Sandbox, tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    box.run([*box.python(), "-c", WRITE_HELLO], mounts=[Mount(build, "/data0/sw")], env={"WHO": box.name})
    hello = build / "x" / "hello"
    assert hello.read_text() == f"hello from {box.name}"
    for made in (hello, hello.parent):
        assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())


@pytest.mark.docker
@pytest.mark.slow
def test_docker_files_belong_to_the_user_asked_for(tmp_path: Path) -> None:
    # The invoking user here may be root, so show ownership follows `user` with another id.
    build = tmp_path / "build"
    build.mkdir()
    build.chmod(0o777)
    box = opened("docker", user=(4321, 4322))
    box.run([*box.python(), "-c", WRITE_HELLO], mounts=[Mount(build, "/data0/sw")], env={"WHO": "4321"})
    hello = build / "x" / "hello"
    assert (hello.stat().st_uid, hello.stat().st_gid) == (4321, 4322)
    assert (hello.parent.stat().st_uid, hello.parent.stat().st_gid) == (4321, 4322)


def test_read_only_mounts_stay_read_only(box: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("original")
    code = "open('/data0/ro/keep', 'w').write('changed')"
    with pytest.raises(SandboxError, match="(Read-only file system|Permission denied)"):
        box.run([*box.python(), "-c", code], mounts=[Mount(tmp_path, "/data0/ro", read_only=True)])
    assert (tmp_path / "keep").read_text() == "original"


def test_network_off_cannot_reach_pypi(box: Sandbox, pypi_address: str) -> None:
    probe = [*box.python(), "-c", CONNECT, pypi_address]
    box.run(probe, mounts=[], network=True)  # the probe itself works
    with pytest.raises(SandboxError, match="no connection"):
        box.run(probe, mounts=[], network=False)


def test_failure_carries_the_output_tail(box: Sandbox) -> None:
    with pytest.raises(SandboxError, match=r"(?s)exit 5.*the-last-words"):
        box.run(["sh", "-c", "echo the-last-words; exit 5"], mounts=[])


def test_workdir_and_env(box: Sandbox, tmp_path: Path) -> None:
    code = "import os, pathlib; pathlib.Path('out').write_text(os.getcwd() + ' ' + os.environ['PROBE'])"
    box.run(
        [*box.python(), "-c", code],
        mounts=[Mount(tmp_path, "/data0/sw")],
        env={"PROBE": "1"},
        workdir="/data0/sw",
    )
    assert (tmp_path / "out").read_text() == "/data0/sw 1"


# What a step's code sees of the host's /tmp: whether a file and a socket there exist, whether the
# socket answers; then it leaves a file in its /tmp.
TMP_PROBE = """
import json, os, socket, sys
file, sock, leave = sys.argv[1:4]
seen = {"file": os.path.lexists(file), "socket": os.path.lexists(sock)}
try:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(sock)
    seen["connected"] = True
except OSError:
    seen["connected"] = False
with open(leave, "w") as fh:
    fh.write("left behind")
seen["tmpdir"] = os.environ["TMPDIR"]
with open("/data0/sw/seen.json", "w") as fh:
    json.dump(seen, fh)
"""


def test_a_step_has_a_private_tmp_without_the_host_s_files_or_sockets(tmp_path: Path) -> None:
    """The host's /tmp holds every user's files and sockets (ssh-agent's, X11's), which a network
    namespace does not cut: a step (the stack's code) sees none of it, and what it writes to its
    /tmp is gone when it ends."""
    box = opened("namespace")
    token = uuid.uuid4().hex
    leave = Path(f"/tmp/swstack-left-behind-{token}")
    with tempfile.TemporaryDirectory(prefix="ssh-", dir="/tmp") as agent_dir, \
            socket.socket(socket.AF_UNIX) as agent:
        secret = Path(agent_dir) / "id_secret"
        secret.write_text("another user's file")
        sock = Path(agent_dir) / f"agent.{os.getpid()}"
        agent.bind(str(sock))
        agent.listen(1)
        try:
            # The host's TMPDIR, when below /tmp (pam_tmpdir's /tmp/user/<uid>), is no directory inside.
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TMPDIR", str(tmp_path))
                box.run([*box.python(), "-c", TMP_PROBE, str(secret), str(sock), str(leave)],
                        mounts=[Mount(tmp_path, "/data0/sw")], network=False)
            seen = json.loads((tmp_path / "seen.json").read_text())
            assert seen == {"file": False, "socket": False, "connected": False, "tmpdir": "/tmp"}
            assert not leave.exists()
        finally:
            leave.unlink(missing_ok=True)


def test_private_root_gives_a_size_limited_ramdisk_and_symlinks(tmp_path: Path) -> None:
    code = """
import errno, os
assert os.path.realpath("/data0/sw") == "/data0/sw.tmpfs", os.path.realpath("/data0/sw")
st = os.statvfs("/data0/sw")
print("size", st.f_blocks * st.f_frsize)
with open("/data0/sw/small", "wb") as fh:
    fh.write(b"x" * (2 << 20))
try:
    with open("/data0/sw/big", "wb") as fh:
        fh.write(b"x" * (16 << 20))
except OSError as exc:
    assert exc.errno == errno.ENOSPC
    print("full")
"""
    argv = private_root_argv(
        tmpfs=[("/data0/sw.tmpfs", 8 << 20)], symlinks=[("/data0/sw.tmpfs", "/data0/sw")]
    )
    out = proc.output([*argv, sys.executable, "-c", code])
    assert out.splitlines() == [f"size {8 << 20}", "full"]


# A build step as compileall runs: it starts a worker of its own, then works (here: sleeps).
STEP_WITH_A_WORKER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]])
time.sleep(600)
"""
# The build: a Python running that step in the namespace sandbox, as `doit build` does.
# SIGINT back to Python's Ctrl-C: a suite started in the background by a shell inherits it ignored.
BUILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from swstack.sandbox import NamespaceSandbox
NamespaceSandbox().run([sys.executable, "-c", sys.argv[1], sys.argv[2]], mounts=[])
"""


def _pids_naming(token: str) -> set[int]:
    """The processes whose command line holds ``token``."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass  # it ended while we looked
    return found


def _wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f}s: {what}", pytrace=False)
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_a_build_killed_or_interrupted_leaves_no_process_in_the_sandbox(sig: signal.Signals, tmp_path: Path) -> None:
    token = f"swstack-orphan-probe-{uuid.uuid4().hex}"
    # A build killed cannot remove its step's /tmp directory: here it is left in the test's directory.
    build = proc.spawn([sys.executable, "-c", BUILD, STEP_WITH_A_WORKER, token],
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        worker = f"import time; time.sleep(600)\0{token}"  # its argv, as /proc shows it
        _wait_for(lambda: _pids_naming(worker), "the sandboxed step never started its worker")
        build.send_signal(sig)
        build.wait(timeout=30)
        _wait_for(lambda: not _pids_naming(token), "processes of the sandbox outlived the build")
    finally:
        build.kill()
        build.wait()
        for pid in _pids_naming(token):  # only ours: the token is this test's
            os.kill(pid, signal.SIGKILL)


def test_a_mount_point_the_host_lacks_is_made_in_the_private_root_not_on_the_host(tmp_path: Path) -> None:
    """Host directories are bound read-only: a mount below one where the host has no such directory
    still works, and nothing is created on the host's disk."""
    target = f"/usr/local/swstack-probe-{uuid.uuid4().hex}/work"
    (tmp_path / "hello").write_text("hi\n")
    argv = private_root_argv([Mount(tmp_path, target, read_only=True)])
    script = f"cat {target}/hello; touch /usr/local/x 2>/dev/null || echo /usr/local is read-only; " \
             "touch /usr/local/bin/x 2>/dev/null || echo /usr/local/bin is read-only"
    out = proc.output([*argv, "sh", "-c", script]).splitlines()
    assert out[0] == "hi" and out[-1] == "/usr/local/bin is read-only"
    assert not Path(target).parent.exists() and not Path("/usr/local/x").exists()
