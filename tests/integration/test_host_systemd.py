"""The restore unit: `systemd-analyze verify` accepts it, its ExecStart is where the Ansible role
installs swstack (the role renders the same line from its variables), and restore works inside the
sandbox it sets up, as far as that can be reproduced without systemd."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "swstack-restore.service"
DEFAULTS = REPO / "ansible" / "roles" / "swstack_host" / "defaults" / "main.yml"


def _exec_start(text: str) -> str:
    (line,) = re.findall(r"(?m)^ExecStart=(.*)$", text)
    return line


def _render(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: _render(str(variables[m.group(1)]), variables), value)


def _directives(text: str) -> dict[str, list[str]]:
    """Each key the unit sets -> its values, in order (a key may be given more than once)."""
    found: dict[str, list[str]] = {}
    for key, value in re.findall(r"(?m)^([A-Za-z]+)=(.*)$", text):
        found.setdefault(key, []).append(value)
    return found


def test_exec_start_is_where_the_role_installs_swstack() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text())
    swstack_bin = _render(defaults["swstack_bin"], defaults)
    assert _exec_start(UNIT.read_text()) == f"{swstack_bin} restore --root {defaults['swstack_root']} --wait 600"


def test_the_unit_may_write_the_root_it_restores_and_nothing_else() -> None:
    unit = _directives(UNIT.read_text())
    root = yaml.safe_load(DEFAULTS.read_text())["swstack_root"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == [f"-{root}"]
    assert unit["RequiresMountsFor"] == [f"{root} {root}/sw.tmpfs"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian's systemd package; scripts/setup installs it)"
    swstack = Path(sys.executable).with_name("swstack")
    assert swstack.exists()
    # As the role renders it: ExecStart names the swstack really installed (verify checks it runs).
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={swstack}", UNIT.read_text())
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


@pytest.mark.parametrize("broken", ["ExecStart=/nonexistent/swstack restore", "Type=oneshotx"])
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path, broken: str) -> None:
    """The check above can fail: a unit whose command is missing or whose type is wrong is reported."""
    key = broken.split("=", 1)[0]
    text = re.sub(rf"(?m)^{key}=.*$", broken, UNIT.read_text())
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0 or res.stderr.strip(), (res.returncode, res.stderr)


def _sandbox(unit: dict[str, list[str]], root: Path, proc: Path) -> list[str]:
    """The argv prefix that reproduces, from the unit's own lines, what its sandbox leaves restore.

    CapabilityBoundingSet= and NoNewPrivileges= through setpriv: root's exec then starts from that
    bounding set, as under systemd. ProtectSystem=strict with ReadWritePaths=: / bound read-only,
    ``root`` writable (standing for the /data0 named, as the role puts swstack_root there).
    PrivateNetwork=: a network namespace. MemoryDenyWriteExecute=: the kernel's
    own (PR_SET_MDWE, Linux 6.3), where it has one. ProcSubset=pid: ``proc``, where the caller
    mounted a /proc with subset=pid, bound at /proc.
    """
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"] == ["-/data0"]
    argv = ["bwrap", "--ro-bind", "/", "/", "--bind", str(root), str(root), "--dev", "/dev"]
    if unit.get("PrivateNetwork") == ["yes"]:
        argv.append("--unshare-net")
    if unit.get("ProcSubset") == ["pid"]:
        argv += ["--ro-bind", str(proc), "/proc"]
    (caps,) = unit["CapabilityBoundingSet"]
    bounding = ",".join(["-all"] + [f"+{c.removeprefix('CAP_').lower()}" for c in caps.split()])
    argv += ["--", "setpriv", f"--bounding-set={bounding}"]
    if unit.get("NoNewPrivileges") == ["yes"]:
        argv.append("--no-new-privs")
    argv.append("--")
    if unit.get("MemoryDenyWriteExecute") == ["yes"] and ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0:
        # PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN; kept across the exec that follows.
        code = "import ctypes, os, sys; assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0; os.execvp(sys.argv[1], sys.argv[1:])"  # noqa: E501
        argv += [sys.executable, "-c", code]
    return argv


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("bwrap", "setpriv", "unshare")),
    reason="mounting a ramdisk and giving trees to another user need root",
)
def test_restore_works_inside_what_the_unit_grants(tmp_path: Path) -> None:
    """systemd is not PID 1 where the tests run, so the unit cannot be started; what its sandbox
    leaves restore is reproduced instead (``_sandbox``). Inside it, with the ramdisk mounted outside
    its mount namespace as /etc/fstab mounts it on a host, restore loads copies that another user
    owns (CAP_CHOWN, CAP_FOWNER), keeps a damaged copy that user's kernel runs from (CAP_SYS_PTRACE)
    and drops it once unused (CAP_DAC_OVERRIDE); after a reboot it loads the empty ramdisk again."""
    from tests.support.host import make_artifact

    unit = _directives(UNIT.read_text())
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    art = make_artifact(tmp_path / "art", stack="py3", version="2026.11.21", owner="1234:1234")
    copy = root / "sw.tmpfs" / ".py3@2026.11.21"
    proc = tmp_path / "proc"
    proc.mkdir()
    sandbox = _sandbox(unit, root, proc)
    restore = shlex.join([*sandbox, sys.executable, "-m", "swstack.cli", "restore", "--root", str(root)])
    probe = shlex.join([*sandbox, "sh", "-c", f"touch {tmp_path}/outside; echo $?; test -e /proc/meminfo; echo $?"])
    ramdisk = f"mount -t tmpfs -o nodev,nosuid,mode=0755,size=64M tmpfs {root}/sw.tmpfs"
    script = f"""
        {ramdisk}
        {sys.executable} -m swstack.cli activate {art} --root {root} > /dev/null || exit 90
        echo damaged >> {copy}/share/version.txt
        (cd {root}/sw/py3 && exec setpriv --reuid 1234 --regid 1234 --clear-groups sleep 120) &
        kernel=$!
        until [ "$(readlink /proc/$kernel/exe)" = "$(readlink -f "$(command -v sleep)")" ]; do sleep 0.05; done
        mount -t proc -o subset=pid proc {proc}
        echo "== probe"; {probe}
        {restore} >&2; echo "== in-use $?"; ls -A {root}/sw.tmpfs
        kill $kernel; wait $kernel
        {restore} >&2; echo "== unused $?"; ls -A {root}/sw.tmpfs
        umount {root}/sw.tmpfs && {ramdisk}
        {restore} >&2; echo "== rebooted $?"; ls -A {root}/sw.tmpfs
        echo "== owner $(stat -c %u:%g {copy}/share/version.txt)"
        {sys.executable} -m swstack.cli active --verify --root {root} >&2; echo "== verify $?"
    """
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, (res.stdout, res.stderr)
    steps = {}  # step -> (its status, the lines after it); the commands' own output went to stderr
    for block in res.stdout.split("== ")[1:]:
        head, *lines = block.strip().splitlines()
        name, _, status = head.partition(" ")
        steps[name] = (status, lines)
    # The sandbox is in force: nothing outside the root is writable, /proc shows processes only.
    touched, meminfo = steps["probe"][1]
    assert touched != "0" and "Read-only file system" in res.stderr and not (tmp_path / "outside").exists()
    assert meminfo != "0" or unit.get("ProcSubset") != ["pid"]
    status, entries = steps["in-use"]
    assert status == "0" and len(entries) == 3 and entries[0] == copy.name, res.stderr
    assert entries[1].startswith(f"{copy.name}.damaged-")  # kept: the kernel runs from it
    assert steps["unused"] == ("3", [copy.name, "py3"]), res.stderr  # 3: nothing to load, the copy dropped
    assert steps["rebooted"] == ("0", [copy.name, "py3"]), res.stderr
    assert steps["owner"][0] == "1234:1234"
    assert steps["verify"][0] == "0" and "ramdisk copy matches" in res.stderr, res.stderr
