"""`swstack init`: the layout created once (exit 3 after), owners set, the ramdisk checked on a real tmpfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.host import bwrap_argv, swstack_argv

from swstack.host.init import fstab_line, parse_mountinfo, tmpfs_mode  # noqa: E402


def sw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(swstack_argv(*args), capture_output=True, text=True, timeout=120)


def test_init_creates_the_layout_once_and_prints_the_fstab_line(tmp_path: Path) -> None:
    root = tmp_path / "data0"
    first = sw("init", "--root", str(root), "--ramdisk-size", "16G")
    assert first.returncode == 0, first.stderr
    assert os.readlink(root / "sw") == "sw.tmpfs" and (root / "sw.tmpfs").is_dir() and (root / ".swstack").is_dir()
    line = f"tmpfs {root}/sw.tmpfs tmpfs nodev,nosuid,nodiratime,size=16G,mode=0755 0 0"
    assert line in first.stderr and "not a tmpfs" in first.stderr
    second = sw("init", "--root", str(root), "--ramdisk-size", "16G")
    assert second.returncode == 3 and "nothing changed" in second.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")
def test_init_gives_the_layout_back_to_root(tmp_path: Path) -> None:
    root = tmp_path / "data0"
    assert sw("init", "--root", str(root)).returncode == 0
    os.chown(root / ".swstack", 1234, 1234)
    os.chmod(root / "sw.tmpfs", 0o777)
    res = sw("init", "--root", str(root))
    assert res.returncode == 0, res.stderr
    assert "owner of" in res.stdout and "mode of" in res.stdout
    st = os.stat(root / ".swstack")
    assert (st.st_uid, st.st_gid) == (0, 0) and os.stat(root / "sw.tmpfs").st_mode & 0o7777 == 0o755
    assert sw("init", "--root", str(root)).returncode == 3


def test_init_on_a_real_tmpfs_checks_its_size(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    script = "swstack init --ramdisk-size 1G; echo rc=$?; swstack init --ramdisk-size 64M; echo rc=$?"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(
        bwrap_argv(root, ["/bin/sh", "-c", script], tmpfs_size=256 << 20),
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert "rc=0" in out and "rc=3" in out
    assert "/data0/sw.tmpfs is a tmpfs mount (256.0 MiB)" in res.stdout
    assert "less than the 1G asked for" in res.stderr and "fstab" not in res.stderr.split("less than")[0]
    assert "not a tmpfs" not in res.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounting a tmpfs needs root")
def test_the_fstab_line_mounts_a_ramdisk_only_root_may_write(tmp_path: Path) -> None:
    """Mounted with the options init prints, the ramdisk is 0755 at each mount; one mounted without
    mode= (tmpfs's default is 1777: any user could add live paths) is warned about with the line."""
    root = tmp_path / "data0"
    (root / "sw.tmpfs").mkdir(parents=True)
    line = fstab_line(root / "sw.tmpfs", "1M")
    options = line.split()[3]
    script = (
        f'mount -t tmpfs -o {options} tmpfs "$1/sw.tmpfs" && stat -c %a "$1/sw.tmpfs" && umount "$1/sw.tmpfs" && '
        f'mount -t tmpfs -o size=1M tmpfs "$1/sw.tmpfs" && stat -c %a "$1/sw.tmpfs" && '
        f'"$2" -m swstack.cli init --root "$1" --ramdisk-size 1M'
    )
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(root), sys.executable],
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines()[:2] == ["755", "1777"], (res.stdout, res.stderr)
    assert res.returncode == 0, res.stderr
    assert f"{root}/sw.tmpfs is a tmpfs mounted with mode 1777, writable by every user" in res.stderr
    assert f"add mode=0755 to its options in /etc/fstab: {line}" in res.stderr


def test_mountinfo_gives_a_tmpfs_its_mode() -> None:
    mounts = parse_mountinfo(
        "70 47 0:40 / /data0/sw.tmpfs rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k,mode=755\n"
        "71 47 0:41 / /data1/sw.tmpfs rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k\n"
    )
    assert [tmpfs_mode(m) for m in mounts] == [0o755, 0o1777]


def test_init_refuses_a_real_sw_directory_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data0"
    (root / "sw" / "anaconda3" / "bin").mkdir(parents=True)  # the seed's hand-made tree
    res = sw("init", "--root", str(root))
    assert res.returncode == 11
    assert res.stderr.strip().count("\n") == 0 and "is a real directory; move its trees" in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in root.iterdir()) == ["sw"]  # no sw.tmpfs, no .swstack
    bad = sw("init", "--root", str(root), "--ramdisk-size", "lots")
    assert bad.returncode == 2 and "--ramdisk-size: 'lots': give a tmpfs size" in bad.stderr  # a usage error


def test_a_root_activated_before_init_gets_the_steps_to_the_ramdisk(tmp_path: Path) -> None:
    """`activate` on a bare root serves from disk (sw/ holds links); a later `init` names the steps to
    the ramdisk instead of half-converting; after them the stack is live from sw.tmpfs. A refused
    activation's empty sw/ is no obstacle."""
    from tests.support.host import make_artifact

    artifact = make_artifact(tmp_path / "art", version="1.0")
    refused = tmp_path / "refused"
    refused.mkdir()
    assert sw("activate", str(tmp_path / "nope"), "--root", str(refused)).returncode == 11
    assert sw("init", "--root", str(refused)).returncode == 0
    assert os.readlink(refused / "sw") == "sw.tmpfs"

    root = tmp_path / "data0"
    root.mkdir()
    assert sw("activate", str(artifact), "--root", str(root)).returncode == 0
    assert (root / "sw" / "py3").is_symlink()
    res = sw("init", "--root", str(root))
    assert res.returncode == 11 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "holds the live links of this root served from disk" in res.stderr
    assert f"`rm -r {root / 'sw'}`" in res.stderr and f"`swstack restore --root {root}`" in res.stderr
    assert not (root / "sw.tmpfs").exists()  # the refusal changed nothing
    assert sw("active", "--root", str(root)).returncode == 0
    # The steps it names.
    subprocess.run(["rm", "-r", str(root / "sw")], check=True)
    assert sw("init", "--root", str(root)).returncode == 0
    restored = sw("restore", "--root", str(root))
    assert restored.returncode == 0, restored.stderr
    assert os.path.realpath(root / "sw" / "py3") == str(root / "sw.tmpfs" / ".py3@1.0")
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text().strip() == "1.0"
    assert sw("active", "--root", str(root)).returncode == 0


def test_init_refuses_a_root_that_is_not_a_directory_in_one_line(tmp_path: Path) -> None:
    """A bad --root is a bad input: exit 11 and one line, as for every host command, not an OSError's exit 1."""
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0::/root:/bin/sh\n")
    for root, why in (
        (afile, f"--root {afile}: not a directory; pass --root a directory, or a path to create"),
        (afile / "data0", f"--root {afile}/data0: cannot create it (Not a directory); "
         "pass --root a directory, or a path under one you may write to"),
    ):
        res = sw("init", "--root", str(root))
        assert res.returncode == 11, res.stderr
        assert res.stderr.splitlines() == [f"swstack init: error: {why}"] and not res.stdout
    assert afile.read_text() == "root:x:0:0::/root:/bin/sh\n"
    res = sw("set-version", "2026.01.01", "--root", str(afile))
    assert res.returncode == 11
    assert res.stderr.splitlines() == [
        f"swstack set-version: error: {afile}: not a directory; pass --root the directory holding sw.<version>"
    ]


def test_mountinfo_parsing_unescapes_mount_points() -> None:
    text = (
        "36 25 0:32 / /data0/sw.tmpfs rw,nosuid,nodev - tmpfs tmpfs rw,size=33554432k\n"
        "37 25 8:1 / /srv/with\\040space rw - ext4 /dev/sda1 rw\n"
    )
    mounts = parse_mountinfo(text)
    assert [(m.point, m.fstype) for m in mounts] == [("/data0/sw.tmpfs", "tmpfs"), ("/srv/with space", "ext4")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounting a tmpfs needs root")
def test_init_changes_nothing_through_a_linked_sw_tmpfs(tmp_path: Path) -> None:
    """sw.tmpfs linked to a shared tmpfs (as /dev/shm: 1777) is refused in one line; chown and chmod
    would follow the link and lock every other user out of it. Mounted in a private namespace."""
    root, shm = tmp_path / "data0", tmp_path / "shm"
    root.mkdir()
    shm.mkdir()
    (root / "sw.tmpfs").symlink_to(shm)
    script = ('mount -t tmpfs -o size=1M tmpfs "$1" && "$2" -m swstack.cli init --root "$3"; '
              'echo "rc=$?"; stat -c %a "$1"')
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(shm), sys.executable, str(root)],
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines() == ["rc=11", "1777"], (res.stdout, res.stderr)
    assert res.stderr.splitlines() == [
        f"swstack init: error: {root}/sw.tmpfs is a link to {shm} (owner 0:0, mode 1777), which init would give "
        f"to root with mode 755; it changes nothing through a link: make {root}/sw.tmpfs a directory of its own "
        "(for sw.tmpfs: the ramdisk's mount point) and run again"
    ]
    assert sorted(p.name for p in root.iterdir()) == ["sw.tmpfs"]  # no .swstack, no sw
