"""Faults during activation: kills at every step and at random instants, broken and hostile tarballs,
a full ramdisk, concurrent runs. After each, the live tree is a complete version and a rerun finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.host import (
    HOSTILE_CASES,
    bwrap_argv,
    hostile_artifact,
    make_artifact,
    swstack_argv,
)
from tests.support.signals import sigint_as_from_a_terminal

from swstack.host.faults import POINTS


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        swstack_argv(*args, "--root", str(root)),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        preexec_fn=sigint_as_from_a_terminal,  # or the Ctrl-C faults never land in a suite run in the background
    )


def tree_listing(tree: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                out[str(p.relative_to(tree))] = p.read_bytes()
    return out


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    arts = {v: make_artifact(tmp_path / "art" / v, version=v, payload=3 << 20) for v in ("1.0", "2.0")}
    assert run(root, "activate", str(arts["1.0"])).returncode == 0
    expected: dict[str, dict[str, bytes]] = {}
    assert run(root, "activate", str(arts["2.0"])).returncode == 0
    expected["2.0"] = tree_listing(root / "sw" / "py3")
    assert run(root, "set-version", "1.0").returncode == 0
    expected["1.0"] = tree_listing(root / "sw" / "py3")
    # Start each test from 1.0 live with 2.0 not yet on the host.
    subprocess.run(["rm", "-rf", str(root / "sw.2.0")], check=True)
    (root / ".swstack" / "state.json").unlink()
    assert run(root, "set-version", "1.0").returncode in (0, 3)
    return {"root": root, "a1": arts["1.0"], "a2": arts["2.0"], "expected": expected}  # type: ignore[dict-item]


def assert_live_complete(host: dict[str, object]) -> str:
    root = host["root"]
    assert isinstance(root, Path)
    live = tree_listing(root / "sw" / "py3")
    version = live["share/version.txt"].decode().strip()
    assert live == host["expected"][version], f"live tree of {version} is incomplete or mixed"  # type: ignore[index]
    return version


def assert_finishes(host: dict[str, object]) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    res = run(root, "activate", str(host["a2"]))
    assert res.returncode in (0, 3), res.stderr
    assert assert_live_complete(host) == "2.0"
    assert run(root, "active", "--verify").returncode == 0
    state = json.loads((root / ".swstack" / "state.json").read_text())
    assert state["stacks"]["py3"]["version"] == "2.0"
    assert os.readlink(root / "sw.hdd") == "sw.2.0"
    assert not (root / ".swstack" / "staging").exists()
    assert not [p for p in (root / "sw.tmpfs").iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_named_point(host: dict[str, object], point: str) -> None:
    res = run(host["root"], "activate", str(host["a2"]), env={"SWSTACK_FAULT_AT": point})  # type: ignore[arg-type]
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert_live_complete(host)
    assert_finishes(host)


def test_a_state_file_half_written_by_a_killed_run_is_removed_by_the_next(host: dict[str, object]) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    leftover = root / ".swstack" / ".state.json.0badf00d.partial"  # each writer names its own
    leftover.write_text('{"schema": 1, "sta')
    assert_finishes(host)
    assert not leftover.exists()


def test_a_kill_between_switch_and_record_is_reported_not_reverted(host: dict[str, object]) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    res = run(root, "activate", str(host["a2"]), env={"SWSTACK_FAULT_AT": "switched"})
    assert res.returncode == -signal.SIGKILL
    assert assert_live_complete(host) == "2.0"
    status = run(root, "active")
    assert status.returncode == 1
    # the commands it names carry this root's --root: pasted as they are, they must not act on /data0
    assert (f"py3: 2.0 is live but 1.0 is recorded; `swstack set-version 2.0 --root {root}` records the live one"
            ) in status.stderr  # fmt: skip
    assert run(root, "set-version", "2.0").returncode == 0
    assert run(root, "active").returncode == 0
    assert json.loads((root / ".swstack" / "state.json").read_text())["stacks"]["py3"]["version"] == "2.0"


@pytest.mark.parametrize("point", ["switched", "state-written"])
def test_ctrl_c_in_the_commit_lands_after_the_record(host: dict[str, object], point: str) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    env = {"SWSTACK_FAULT_AT": point, "SWSTACK_FAULT_SIGNAL": "INT"}
    res = run(root, "activate", str(host["a2"]), env=env)
    assert res.returncode == 130 and "interrupted" in res.stderr, res.stderr
    assert assert_live_complete(host) == "2.0"
    assert json.loads((root / ".swstack" / "state.json").read_text())["stacks"]["py3"]["version"] == "2.0"
    assert os.readlink(root / "sw.hdd") == "sw.2.0"
    assert run(root, "active", "--verify").returncode == 0


@pytest.mark.parametrize("point", ["extracting", "relocated", "ramdisk-copying"])
def test_sigterm_before_the_switch_unwinds_and_says_so(host: dict[str, object], point: str) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    res = run(root, "activate", str(host["a2"]), env={"SWSTACK_FAULT_AT": point, "SWSTACK_FAULT_SIGNAL": "TERM"})
    assert res.returncode == 143, res.stderr
    assert res.stderr.splitlines()[-1] == (
        "swstack activate: terminated (SIGTERM); a step it finished stays done, one it began is undone"
    )
    assert assert_live_complete(host) == "1.0"
    # Unwound, not killed: nothing begun is left for the next run to clear.
    assert not (root / ".swstack" / "staging").exists()
    assert not [p for p in (root / "sw.tmpfs").iterdir() if p.name.endswith(".partial")]
    assert_finishes(host)



@pytest.mark.parametrize("signal_name", ["KILL", "TERM", "INT"])
def test_a_first_activation_stopped_while_extracting_leaves_nothing_live(tmp_path: Path, signal_name: str) -> None:
    """On a host with no version yet the disk tree is written by a thread of its own (nothing to share
    with): killed there, or stopped by SIGTERM or Ctrl-C while it has calls queued, nothing is live, an
    unwound run leaves nothing behind, and the next run activates the version whole."""
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    artifact = make_artifact(tmp_path / "art", version="1.0", payload=3 << 20)
    env = {"SWSTACK_FAULT_AT": "extracting", "SWSTACK_FAULT_SIGNAL": signal_name}
    res = run(root, "activate", str(artifact), env=env)
    assert res.returncode == {"KILL": -signal.SIGKILL, "TERM": 143, "INT": 130}[signal_name], res.stderr
    assert not (root / "sw" / "py3").exists() and not (root / "sw.hdd").exists()
    if signal_name != "KILL":  # unwound, not killed: nothing begun is left for the next run to clear
        assert not (root / ".swstack" / "staging").exists()
        assert not [p for p in (root / "sw.tmpfs").iterdir() if p.name.endswith(".partial")]
    again = run(root, "activate", str(artifact))
    assert again.returncode == 0, again.stderr
    assert tree_listing(root / "sw" / "py3")["share/version.txt"].decode().strip() == "1.0"
    assert run(root, "active", "--verify").returncode == 0
    assert not (root / ".swstack" / "staging").exists()
    assert not [p for p in (root / "sw.tmpfs").iterdir() if p.name.endswith(".partial")]

def test_sigterm_in_the_commit_lands_after_the_record(host: dict[str, object]) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    res = run(root, "activate", str(host["a2"]), env={"SWSTACK_FAULT_AT": "switched", "SWSTACK_FAULT_SIGNAL": "TERM"})
    assert res.returncode == 143 and "terminated (SIGTERM)" in res.stderr, res.stderr
    assert assert_live_complete(host) == "2.0"
    assert os.readlink(root / "sw.hdd") == "sw.2.0"
    assert run(root, "active", "--verify").returncode == 0


@pytest.fixture(scope="module")
def activation_seconds(tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long activating the fixture's 2.0 over 1.0 takes here (the faster of two runs), so
    the kills below land inside a run, not after it."""
    base = tmp_path_factory.mktemp("timing")
    arts = {v: make_artifact(base / "art" / v, version=v, payload=3 << 20) for v in ("1.0", "2.0")}
    times = []
    for i in range(2):
        root = base / f"root{i}"
        (root / "sw.tmpfs").mkdir(parents=True)
        assert run(root, "activate", str(arts["1.0"])).returncode == 0
        start = time.perf_counter()
        assert run(root, "activate", str(arts["2.0"])).returncode == 0
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("fraction", [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75])
def test_kill_at_a_random_instant(host: dict[str, object], activation_seconds: float, fraction: float) -> None:
    proc = subprocess.Popen(
        swstack_argv("activate", str(host["a2"]), "--root", str(host["root"])),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(fraction * activation_seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the activation ended before the kill ({proc.returncode})"
    assert_live_complete(host)
    assert_finishes(host)


def _break(art: Path, how: str) -> None:
    tarball = next(art.glob("*.tar.zst"))
    data = bytearray(tarball.read_bytes())
    if how == "truncated":
        tarball.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bitflip":
        data[len(data) // 2] ^= 0x10
        tarball.write_bytes(bytes(data))
    elif how == "garbage":
        tarball.write_bytes(os.urandom(len(data)))
    elif how == "checksum":
        (art / f"{tarball.name}.sha256").write_text(f"{'0' * 64}  {tarball.name}\n")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "bytes, the manifest says"),
        ("bitflip", "sha256 mismatch"),
        ("garbage", "sha256 mismatch"),
        ("checksum", "disagree on the tarball's sha256"),
    ],
)
def test_broken_tarball_changes_nothing(host: dict[str, object], how: str, message: str) -> None:
    root = host["root"]
    assert isinstance(root, Path)
    _break(host["a2"], how)  # type: ignore[arg-type]
    res = run(root, "activate", str(host["a2"]))
    assert res.returncode == 11 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert assert_live_complete(host) == "1.0"
    assert not (root / "sw.2.0").exists() and not (root / ".swstack" / "staging").exists()


def test_an_artifact_of_another_platform_is_refused(host: dict[str, object], tmp_path: Path) -> None:
    from swstack.manifest import host_platform

    other = "linux-aarch64" if host_platform() != "linux-aarch64" else "linux-64"
    art = make_artifact(tmp_path / "other-platform", version="2.0", payload=1 << 10, platform=other)
    root = host["root"]
    assert isinstance(root, Path)
    res = run(root, "activate", str(art))
    assert res.returncode == 11, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert f"is built for {other}, this host is {host_platform()}" in lines[0]
    assert assert_live_complete(host) == "1.0"
    assert not (root / "sw.2.0").exists() and not (root / ".swstack" / "staging").exists()


def test_checksum_mismatch_even_when_the_size_matches(host: dict[str, object]) -> None:
    art = host["a2"]
    assert isinstance(art, Path)
    tarball = next(art.glob("*.tar.zst"))
    data = bytearray(tarball.read_bytes())
    data[-5] ^= 0xFF  # inside the zstd frame's tail: the size stays right
    tarball.write_bytes(bytes(data))
    res = run(host["root"], "activate", str(art))  # type: ignore[arg-type]
    assert res.returncode == 11 and "sha256 mismatch" in res.stderr


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_tarball(tmp_path: Path, case: str) -> None:
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    art = hostile_artifact(tmp_path / "evil", case)
    before = set(os.listdir("/tmp"))
    res = run(root, "activate", str(art))
    assert res.returncode == 11, res.stdout + res.stderr
    assert "member" in res.stderr and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("swstack activate: error: "), res.stderr
    escaped = [p for p in tmp_path.rglob("escaped*")] + [
        Path("/tmp", n) for n in set(os.listdir("/tmp")) - before if n.startswith("escaped")
    ]
    assert escaped == []
    assert not (root / "sw.2026.06.06").exists() and not (root / ".swstack" / "staging").exists()
    assert not (root / "sw" / "py3").exists()


def test_ramdisk_full_during_copy(tmp_path: Path) -> None:
    """The manifest under-reports the size, so the space check passes and the copy hits ENOSPC."""
    small = make_artifact(tmp_path / "a", version="1.0")
    liar = make_artifact(tmp_path / "b", version="2.0", payload=6 << 20, understate=True)
    root = tmp_path / "root"
    root.mkdir()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    script = (
        f"swstack activate {small}; swstack activate {liar} || echo rc=$?; "
        f"cat /data0/sw/py3/share/version.txt; ls -A /data0/sw.tmpfs"
    )
    res = subprocess.run(
        bwrap_argv(root, ["/bin/sh", "-ec", script], tmpfs_size=4 << 20),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "rc=11" in res.stdout and "onto the ramdisk" in res.stderr and "nothing live changed" in res.stderr
    assert res.stdout.splitlines()[2] == "1.0"
    assert ".partial" not in res.stdout


def test_concurrent_activations(host: dict[str, object], tmp_path: Path) -> None:
    root = host["root"]
    a3 = make_artifact(tmp_path / "art3", version="3.0")
    procs = [
        subprocess.Popen(
            swstack_argv("activate", str(a), "--root", str(root), "--wait", "120"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in (host["a2"], a3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    live = (root / "sw" / "py3" / "share" / "version.txt").read_text().strip()  # type: ignore[operator]
    assert live in ("2.0", "3.0")
    assert run(root, "active", "--verify").returncode == 0  # type: ignore[arg-type]


def _lock_held(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_concurrent_without_wait_fails_clearly(host: dict[str, object]) -> None:
    """A second activation while one holds the lock fails at once, naming the holder; the first finishes."""
    root = host["root"]
    assert isinstance(root, Path)
    slow = subprocess.Popen(
        swstack_argv("activate", str(host["a2"]), "--root", str(root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _lock_held(root / ".swstack" / "lock"):
        assert slow.poll() is None and time.monotonic() < deadline, "the first activation never held the lock"
        time.sleep(0.001)
    os.kill(slow.pid, signal.SIGSTOP)  # hold it there, lock taken, for as long as the check takes
    try:
        res = run(root, "activate", str(host["a1"]))
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    slow.communicate(timeout=120)
    assert res.returncode == 11, res.stdout + res.stderr
    assert f"locked by PID {slow.pid}" in res.stderr and "Traceback" not in res.stderr
    assert slow.returncode == 0
    assert assert_live_complete(host) == "2.0"
