"""The host CLI end to end on real trees: activate, switch, revert, list, diff, prune, restore, locking.

Every test works under ``tmp_path`` (``--root``) or in a private /data0 made with
bubblewrap; none touches the machine's /data0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.host import bwrap_argv, make_artifact, swstack_argv


def sw(root: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        swstack_argv(*args, "--root", str(root)), capture_output=True, text=True, timeout=120
    )
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    return res


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, Path]:
    return {
        v: make_artifact(tmp_path / "art" / v, version=v) for v in ("2026.01.01", "2026.02.01", "2026.03.01")
    }


@pytest.fixture(params=["minimal", "production"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    if request.param == "production":
        (r / "sw.tmpfs").mkdir()
    return r


def test_activate_switch_revert_and_idempotence(root: Path, artifacts: dict[str, Path]) -> None:
    out = sw(root, "activate", str(artifacts["2026.01.01"])).stdout
    assert "2026.01.01 active" in out and "relocated from /data0/sw/py3" in out
    live = root / "sw" / "py3"
    assert (live / "etc" / "prefix.txt").read_text() == f"prefix={live}\n"
    assert subprocess.run([str(live / "bin" / "tool")], capture_output=True, text=True).stdout.strip() == str(
        live
    )
    assert os.readlink(root / "sw.hdd") == "sw.2026.01.01"

    again = sw(root, "activate", str(artifacts["2026.01.01"]), check=3)
    assert "already active" in again.stdout

    sw(root, "activate", str(artifacts["2026.02.01"]))
    assert (live / "share" / "version.txt").read_text() == "2026.02.01\n"
    status = json.loads(sw(root, "active", "--json").stdout)
    assert status["stacks"][0]["version"] == "2026.02.01"
    assert status["stacks"][0]["previous"] == "2026.01.01"
    if (root / "sw.tmpfs").is_dir():
        assert status["stacks"][0]["in_sync"] is True
        assert not (root / "sw.tmpfs" / ".py3@2026.01.01").exists()  # old ramdisk copy dropped
    else:  # no ramdisk: the live path is the persistent tree, there is no copy to be in sync
        assert status["stacks"][0]["in_sync"] is None
        assert os.readlink(live) == "../sw.2026.02.01/py3"

    sw(root, "set-version", "sw.2026.01.01")
    assert (live / "share" / "version.txt").read_text() == "2026.01.01\n"
    sw(root, "set-version", str(root / "sw.2026.01.01"), check=3)
    assert os.readlink(root / "sw.hdd") == "sw.2026.01.01"

    listing = json.loads(sw(root, "list", "--json").stdout)
    assert [v["version"] for v in listing["versions"]] == ["2026.01.01", "2026.02.01"]
    bad = sw(root, "set-version", "2030.01.01", check=11)
    assert "no such version" in bad.stderr and "2026.02.01" in bad.stderr


def test_prune_keeps_active_previous_and_in_use(
    root: Path, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    for v in ("2026.01.01", "2026.02.01", "2026.03.01"):
        sw(root, "activate", str(artifacts[v]))
    sw(root, "set-version", "2026.01.01")  # active 01, previous 03
    res = json.loads(sw(root, "prune", "--keep", "0", "--json").stdout)
    assert res["removed"] == ["2026.02.01"] and res["would_remove"] == []  # "would" is for --dry-run
    assert set(res["kept"]) == {"2026.01.01", "2026.03.01"}
    assert not (root / "sw.2026.02.01").exists()
    sw(root, "prune", "--keep", "0", check=3)


def test_prune_spares_a_version_in_use(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for v in ("2026.01.01", "2026.02.01", "2026.03.01"):
        sw(root, "activate", str(artifacts[v]))
    # A process working inside 2026.01.01, neither active nor previous.
    holder = subprocess.Popen(["sleep", "60"], cwd=root / "sw.2026.01.01" / "py3")
    try:
        res = json.loads(sw(root, "prune", "--keep", "0", "--json", check=3).stdout)
        assert res["removed"] == []
        assert "in use by PID" in res["kept"]["2026.01.01"]
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(sw(root, "prune", "--keep", "0", "--json").stdout)["removed"] == ["2026.01.01"]


def test_old_ramdisk_copy_in_use_is_kept(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    # A running "kernel" of the old version: it keeps working after the switch.
    kernel = subprocess.Popen(
        [
            str(root / "sw" / "py3" / "bin" / "python"),
            "-c",
            "import sys, time; sys.stdin.readline(); print(open('etc/prefix.txt').read())",
        ],
        cwd=root / "sw" / "py3",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    out = sw(root, "activate", str(artifacts["2026.02.01"])).stdout
    assert "kept" in out and "in use by PID" in out
    assert (root / "sw.tmpfs" / ".py3@2026.01.01").is_dir()
    stdout, _ = kernel.communicate("go\n", timeout=30)
    assert stdout.startswith("prefix=")
    sw(root, "set-version", "2026.02.01", check=3)
    sw(root, "prune", "--keep", "5", check=3)  # nothing to prune; the unused copy goes
    assert not (root / "sw.tmpfs" / ".py3@2026.01.01").exists()


def test_prune_names_the_ramdisk_copy_it_keeps_in_use(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """Its --json said only removed_copies: [] while a running process kept an old copy on the ramdisk."""
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    old = root / "sw.tmpfs" / ".py3@2026.01.01"
    holder = subprocess.Popen(["sleep", "60"], cwd=old)
    try:
        sw(root, "activate", str(artifacts["2026.02.01"]))
        sw(root, "activate", str(artifacts["2026.03.01"]))
        kept = f"{old} (in use by PID {holder.pid})"
        for args in (["--dry-run"], []):
            res = json.loads(sw(root, "prune", "--keep", "0", "--json", *args, check=3).stdout)
            assert res["kept_in_use"] == [kept] and res["removed_copies"] == res["would_remove_copies"] == []
        assert f"kept {kept}" in sw(root, "prune", "--keep", "0", check=3).stdout.splitlines()
    finally:
        holder.kill()
        holder.wait()
    res = json.loads(sw(root, "prune", "--keep", "0", "--json").stdout)
    assert res["kept_in_use"] == [] and res["removed_copies"] == [str(old)]


def test_active_reads_again_a_stack_switched_while_it_compares(
    tmp_path: Path, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``active`` takes no lock: a set-version landing while it compares the live copy (whose old
    version is then removed under it) is read again, not reported as a copy that differs."""
    from swstack.host import commands

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    sw(root, "activate", str(artifacts["2026.02.01"]))
    real = commands.compare_trees
    switched: list[str] = []

    def compare_during_a_switch(a: Path, b: Path, by_hash: bool) -> list[str]:
        if not switched:  # another admin's set-version, between reading the link and the compare
            switched.append("2026.01.01")
            commands.set_version(root, "2026.01.01", None)
        return real(a, b, by_hash)

    monkeypatch.setattr(commands, "compare_trees", compare_during_a_switch)
    [status] = commands.active(root)
    assert switched
    assert (status.version, status.recorded, status.in_sync, status.differences) == (
        "2026.01.01", "2026.01.01", True, ()
    )  # fmt: skip


def test_a_stack_not_live_is_named_so_and_restore_relinks_it(root: Path, artifacts: dict[str, Path]) -> None:
    """Its link gone (a reboot's empty ramdisk; in the minimal configuration there is no ramdisk
    copy at all): 'active' says it is not live, not that a ramdisk copy differs."""
    sw(root, "activate", str(artifacts["2026.01.01"]))
    (root / "sw" / "py3").unlink()
    res = sw(root, "active", check=1)
    assert "py3: NOT LIVE" in res.stdout
    assert res.stderr.splitlines() == [
        f"warning: py3: not live; `swstack restore --root {root}` makes the recorded version live again"
    ]
    restored = json.loads(sw(root, "restore", "--json").stdout)
    assert sw(root, "active").stderr == ""
    # "hdd" is where sw.hdd points after the run, as in activate's and active's --json: it was null.
    assert restored["hdd"] == json.loads(sw(root, "active", "--json").stdout)["hdd"] == "2026.01.01"


def test_active_verify_names_files_and_restore_reloads(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    copy = root / "sw.tmpfs" / ".py3@2026.01.01"
    target = copy / "share" / "version.txt"
    st = target.stat()
    target.write_text("2099.99.99\n")  # same size, same mtime: only the hash sees it
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sw(root, "active").returncode == 0
    res = sw(root, "active", "--verify", "--verbose", check=1)
    assert "share/version.txt" in res.stdout
    # Reboot: the ramdisk comes back empty.
    subprocess.run(["rm", "-rf", str(root / "sw.tmpfs")], check=True)
    (root / "sw.tmpfs").mkdir()
    assert sw(root, "active", check=1)
    sw(root, "restore")
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    sw(root, "restore", check=3)
    assert sw(root, "active", "--verify").returncode == 0


def test_restore_reloads_a_ramdisk_copy_that_differs_while_a_process_holds_it(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    copy = root / "sw.tmpfs" / ".py3@2026.01.01"
    with (copy / "etc" / "prefix.txt").open("a") as fh:
        fh.write("junk\n")
    (copy / "share" / "version.txt").unlink()
    assert "differs: " in sw(root, "active", check=1).stdout
    holder = subprocess.Popen(["sleep", "60"], cwd=copy)  # a kernel started from the damaged copy
    try:
        res = sw(root, "restore")
        assert "loaded onto the ramdisk" in res.stdout and "loading it again" in res.stderr
        assert sw(root, "active", "--verify").returncode == 0
        assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
        aside = [p for p in (root / "sw.tmpfs").iterdir() if ".damaged-" in p.name]
        assert len(aside) == 1 and os.readlink(f"/proc/{holder.pid}/cwd") == str(aside[0])
    finally:
        holder.kill()
        holder.wait()
    sw(root, "restore", check=3)
    sw(root, "prune", "--keep", "1", check=None)
    assert not [p for p in (root / "sw.tmpfs").iterdir() if ".damaged-" in p.name]


def test_release_with_two_stacks_and_foreign_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a tree to uid 899 needs root")
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    make_artifact(tmp_path / "rel" / "py3", version="2026.05.01")
    make_artifact(tmp_path / "rel" / "antares", stack="antares", version="2026.04.01", owner="899:899")
    release = tmp_path / "rel" / "release.toml"
    release.write_text('[stacks]\npy3 = "py3"\nantares = "antares"\n')
    out = json.loads(sw(root, "activate", "--release", str(release), "--json").stdout)
    assert {s["stack"]: s["version"] for s in out["stacks"]} == {"py3": "2026.05.01", "antares": "2026.04.01"}
    for path in (root / "sw" / "antares" / "bin" / "tool", root / "sw.2026.04.01" / "antares" / "etc"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (899, 899)
    assert (root / "sw" / "py3" / "bin" / "tool").stat().st_uid == 0
    sw(root, "activate", "--release", str(release), check=3)
    release.write_text('[stacks]\npy3 = "antares"\n')
    res = sw(root, "activate", "--release", str(release), check=11)
    assert "the release names" in res.stderr and "py3, but it holds antares" in res.stderr


def test_diff_between_versions(tmp_path: Path) -> None:
    from swstack.manifest import PackageEntry

    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    newer = (
        PackageEntry("python", "3.12.1", "h0", "c", "e" * 64, 1),
        PackageEntry("astropy", "6.1", "py312_0", "c", "f" * 64, 1),
    )
    sw(root, "activate", str(make_artifact(tmp_path / "b", version="2.0", packages=newer)))
    out = sw(root, "diff", "1.0", "2.0").stdout
    assert "+ astropy 6.1=py312_0" in out and "- numpy" in out and "~ python 3.11.7=h1_0 -> 3.12.1=h0" in out
    assert json.loads(sw(root, "diff", "1.0", str(tmp_path / "b"), "--json").stdout)["added"]


def test_two_sources_for_one_live_path_are_refused_naming_both(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    one, two = str(artifacts["2026.01.01"]), str(artifacts["2026.02.01"])
    res = sw(root, "activate", one, two, check=11)
    assert res.stderr.splitlines() == [
        f"swstack activate: error: {one} (py3 2026.01.01) and {two} (py3 2026.02.01) both answer to "
        f"{root}/sw/py3; give one artifact per live path"
    ]
    assert not (root / "sw.2026.01.01").exists()


def test_diff_refuses_two_stacks_and_names_what_a_version_holds(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    other = make_artifact(tmp_path / "t", version="1.0", stack="tool", prefix="/data0/sw/tool")
    res = sw(root, "diff", "1.0", str(other), check=11)
    assert "is py3 and" in res.stderr and "is tool: diff compares two versions of one stack" in res.stderr
    res = sw(root, "diff", "1.0", "1.0", "--stack", "tool", check=11)
    assert "version 1.0 has no tool; stacks there: py3" in res.stderr
    (tmp_path / "e.json").write_text("{}")
    res = sw(root, "diff", "1.0", str(tmp_path / "e.json"), check=11)
    assert "e.json: not a swstack manifest" in res.stderr and "Traceback" not in res.stderr


def test_usage_errors_exit_2_and_a_missing_root_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert "--ramdisk-size: 'bogus'" in sw(root, "init", "--ramdisk-size", "bogus", check=2).stderr
    assert "--keep: '-1'" in sw(root, "prune", "--keep", "-1", check=2).stderr
    assert "nothing to activate" in sw(root, "activate", check=2).stderr
    for command in ("active", "list", "activate"):
        missing = sw(tmp_path / "nope", command, *(["x.tar.zst"] if command == "activate" else []), check=11)
        # the command that makes it, not a step of the install notes it replaced
        assert f"root directory missing; create it with `swstack init --root {tmp_path / 'nope'}`" in missing.stderr
    (tmp_path / "afile").write_text("")
    res = sw(tmp_path / "afile", "init", check=11)
    assert res.stderr.count("\n") == 1 and "afile" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "command",
    [["activate", "x.tar.zst"], ["set-version", "1.0"], ["restore"], ["prune", "--keep", "1"], ["active"],
     ["list"], ["diff", "1.0", "2.0"]],
)  # fmt: skip
def test_json_errors_are_a_json_document_too(tmp_path: Path, command: list[str]) -> None:
    """Under --json a refusal prints, besides its line on stderr, {"error", "exit_code"} on stdout:
    an Ansible task reading stdout with from_json got an empty string."""
    res = sw(tmp_path / "nope", *command, "--json", check=11)
    line = res.stderr.strip().split(": error: ", 1)[1]
    assert json.loads(res.stdout) == {"error": line, "exit_code": 11}
    assert "root directory missing" in line or "neither a manifest.json nor a version" in line


def test_a_refused_activation_under_json_says_why_and_changes_nothing(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(artifacts["2026.01.01"]))
    broken = tmp_path / "broken"
    shutil.copytree(artifacts["2026.02.01"], broken)
    (broken / "manifest.json").write_text("{")
    res = sw(root, "activate", str(broken), "--json", check=11)
    assert json.loads(res.stdout)["exit_code"] == 11 and "manifest.json" in json.loads(res.stdout)["error"]
    assert (root / "sw/py3/share/version.txt").read_text() == "2026.01.01\n"
    res = subprocess.run(swstack_argv("verify", str(tmp_path / "nothing"), "--json"), capture_output=True, text=True)
    assert res.returncode == 11 and "no such file" in json.loads(res.stdout)["error"]


def test_a_relative_root_is_taken_as_written_without_its_dots(tmp_path: Path) -> None:
    """`--root ../root`: the live path, what relocation writes into files, is <root>/sw/py3, not
    <cwd>/../root/sw/py3 (longer, so a binary relocation would be refused, and never typed by users)."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "cwd").mkdir()
    artifact = make_artifact(tmp_path / "a", version="1.0")
    res = subprocess.run(swstack_argv("activate", str(artifact), "--root", "../root"), cwd=tmp_path / "cwd",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"is live at {root}/sw/py3" in res.stderr and "/../" not in res.stderr
    status = json.loads(sw(root, "active", "--json").stdout)
    assert "/../" not in json.dumps(status) and str(root) in json.dumps(status)
    empty = subprocess.run(swstack_argv("list", "--root", ""), capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "argument --root/-R: an empty path" in empty.stderr


def test_the_record_of_a_version_set_again_is_its_own(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """After set-version, state.json says nothing of the version switched from: not its source, and
    the relocation is that of the tree now live (read from its in-tree manifest)."""
    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(artifacts["2026.01.01"]))
    sw(root, "activate", str(artifacts["2026.02.01"]))
    sw(root, "set-version", "2026.01.01")
    record = json.loads((root / ".swstack" / "state.json").read_text())["stacks"]["py3"]
    assert record["version"] == "2026.01.01" and record["previous"] == "2026.02.01"
    assert record["source"] == ""  # not 2026.02.01's tarball
    assert record["relocated_from"] == "/data0/sw/py3"  # built there, live under the test's root


def test_a_closed_pipe_ends_quietly(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(artifacts["2026.01.01"]))
    argv = " ".join(swstack_argv("active", "--json", "--verbose", "--root", str(root)))
    res = subprocess.run(["bash", "-c", f"{argv} | head -c0"], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_a_state_file_naming_paths_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / ".swstack").mkdir(parents=True)
    for entry in ({"version": "1.0", "tree": "../../etc"}, {"version": "1.0", "previous": "../../x"}):
        (root / ".swstack" / "state.json").write_text(json.dumps({"stacks": {"py3": entry}}))
        res = sw(root, "restore", check=11)
        assert "not a swstack state file (invalid" in res.stderr and "../../" in res.stderr


def test_same_version_different_content_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    other = make_artifact(tmp_path / "b", version="1.0", packages=())
    res = sw(root, "activate", str(other), check=11)
    assert "differs from manifest.json in packages" in res.stderr


def test_lock_fails_naming_pid_then_waits(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / ".swstack").mkdir(parents=True)
    fd = os.open(root / ".swstack" / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        res = sw(root, "activate", str(artifacts["2026.01.01"]), check=11)
        assert f"locked by PID {os.getpid()}" in res.stderr
        threading.Timer(1.0, lambda: os.close(fd)).start()
        sw(root, "activate", str(artifacts["2026.01.01"]), "--wait", "30")
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_http_source(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(artifacts["2026.01.01"]))
    with _serving(handler) as server:
        root = tmp_path / "root"
        root.mkdir()
        url = f"http://127.0.0.1:{server.server_address[1]}/py3-2026.01.01-linux-64.tar.zst"
        sw(root, "activate", url)
        assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
        assert list((root / ".swstack/downloads").iterdir()) == []  # extracted: the download is gone
        # A refused download is not kept either (here: the tarball's bytes do not match the manifest).
        bad = tmp_path / "bad"
        shutil.copytree(artifacts["2026.02.01"], bad)
        tarball = bad / "py3-2026.02.01-linux-64.tar.zst"
        tarball.write_bytes(tarball.read_bytes()[:-1] + b"\0")
        handler_bad = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bad))
        server.RequestHandlerClass = handler_bad  # type: ignore[assignment]
        sw(root, "activate", url.replace("2026.01.01", "2026.02.01"), check=11)
        assert list((root / ".swstack/downloads").iterdir()) == []
        assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"


@contextlib.contextmanager
def _serving(handler: Callable[..., Any]) -> Iterator[Any]:
    """An HTTP server on 127.0.0.1 (any free port) for the block, stopped after it."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_http_source_asks_for_the_side_files_with_the_tarballs_query(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    """A server that wants a token in the query gets it for manifest.json and the .sha256
    too, and the suffix goes on the path, not after the query."""
    import functools
    import http.server

    asked: list[str] = []

    class TokenHandler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if not self.path.endswith("?token=t0k"):
                self.send_error(403, "no token")
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(TokenHandler, directory=str(artifacts["2026.01.01"]))
    with _serving(handler) as server:
        root = tmp_path / "root"
        root.mkdir()
        tarball = "py3-2026.01.01-linux-64.tar.zst"
        sw(root, "activate", f"http://127.0.0.1:{server.server_address[1]}/{tarball}?token=t0k")
        assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
        assert asked == ["/manifest.json?token=t0k", f"/{tarball}?token=t0k", f"/{tarball}.sha256?token=t0k"]


def _in_private_data0(
    root: Path, script: str, tmpfs_size: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private /data0 (root bound there), swstack on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        bwrap_argv(root, ["/bin/sh", "-ec", script], tmpfs_size=tmpfs_size),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _on_a_small_disk(scratch: Path, script: str, disk: int, ramdisk: int) -> subprocess.CompletedProcess[str]:
    """Run a shell script with /data0 a size-limited tmpfs (the disk) and sw.tmpfs another (the ramdisk)."""
    scratch.mkdir(exist_ok=True)
    argv = bwrap_argv(scratch, ["/bin/sh", "-c", script], production=False)
    at = argv.index("/data0")  # the root's bind mount gives way to the small disk
    argv[at - 2 : at + 1] = ["--size", str(disk), "--tmpfs", "/data0", "--size", str(ramdisk), "--tmpfs",
                             "/data0/sw.tmpfs"]  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_a_full_disk_at_the_record_leaves_no_partial_file(tmp_path: Path) -> None:
    """set-version writes nothing on disk but state.json: with the disk full, the switch is made and
    the record fails, and it left a .partial state file behind in .swstack."""
    one, two = (make_artifact(tmp_path / v, version=v) for v in ("1.0", "2.0"))
    res = _on_a_small_disk(
        tmp_path / "scratch",
        f"swstack activate {one}; swstack activate {two}; "
        "dd if=/dev/zero of=/data0/filler bs=4k 2>/dev/null || true; "
        "swstack set-version 1.0 || echo rc=$?; ls -A /data0/.swstack; rm /data0/filler; "
        "swstack set-version 1.0 --stack py3; cat /data0/.swstack/state.json",
        disk=1 << 20, ramdisk=4 << 20,
    )  # fmt: skip
    assert "rc=1" in res.stdout.splitlines(), res.stdout + res.stderr
    assert not [line for line in res.stdout.splitlines() if line.endswith(".partial")], res.stdout
    # The line said only 'error: No space left on device' (exit 1, read as 'nothing happened'),
    # while 1.0 was live and 2.0 still recorded: what restore and a reboot would bring back.
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert errors == [
        "swstack set-version: error: /data0/.swstack/state.json: No space left on device; switched but not "
        "recorded: py3 1.0 is live, the record (what restore and a reboot bring back) is unchanged; free the "
        "disk, then `swstack set-version 1.0 --stack py3` records it"
    ]
    assert '"version": "1.0"' in res.stdout  # the command it names records the live version


def test_literal_data0_needs_no_relocation(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a", version="2026.07.01", binary=True)
    root = tmp_path / "root"
    root.mkdir()
    res = _in_private_data0(
        root,
        f"swstack activate {art}; cat /data0/sw/py3/etc/prefix.txt; swstack active --verbose",
        tmpfs_size=64 << 20,
    )
    assert res.returncode == 0, res.stderr
    assert "prefix=/data0/sw/py3" in res.stdout and "relocated" not in res.stdout
    assert "ramdisk copy matches" in res.stdout
    assert os.readlink(root / "sw") == "sw.tmpfs"
    assert (root / "sw.2026.07.01" / "py3" / "lib" / "libfake.so").is_file()


def test_ramdisk_too_small_is_refused_up_front(tmp_path: Path) -> None:
    small = make_artifact(tmp_path / "a", version="1.0")
    big = make_artifact(tmp_path / "b", version="2.0", payload=6 << 20)
    root = tmp_path / "root"
    root.mkdir()
    res = _in_private_data0(
        root,
        f"swstack activate {small}; swstack activate {big} || echo rc=$?; "
        f"cat /data0/sw/py3/share/version.txt; ls -A /data0/sw.tmpfs",
        tmpfs_size=4 << 20,
    )
    assert res.returncode == 0, res.stderr
    assert "rc=11" in res.stdout and "need " in res.stderr and ", have " in res.stderr
    # prune cannot free a ramdisk that holds the live version: the line says to grow it
    assert res.stderr.rstrip().endswith(
        "; grow the ramdisk (`mount -o remount,size=...`, and size= in its fstab line); `swstack prune` frees only "
        "copies that are neither live nor in use"
    ), res.stderr
    assert "1.0\n" in res.stdout
    assert ".partial" not in res.stdout and not (root / ".swstack" / "staging").exists()


def test_a_truncated_tarball_is_refused_at_fetch_before_the_space_check(tmp_path: Path) -> None:
    small = make_artifact(tmp_path / "a", version="1.0")
    big = make_artifact(tmp_path / "b", version="2.0", payload=6 << 20)
    tarball = next(big.glob("*.tar.zst"))
    with tarball.open("r+b") as fh:
        fh.truncate(tarball.stat().st_size - 4096)
    root = tmp_path / "root"
    root.mkdir()
    res = _in_private_data0(
        root, f"swstack activate {small}; swstack activate {big} || echo rc=$?", tmpfs_size=4 << 20
    )
    assert "rc=11" in res.stdout
    assert "truncated or replaced; re-download it" in res.stderr and ", have " not in res.stderr


def test_a_broken_artifact_of_a_version_already_here_is_refused(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a", version="1.0")
    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(art))
    side = next(art.glob("*.sha256"))
    side.write_text("0" * 64 + side.read_text()[64:])
    res = sw(root, "activate", str(art), check=11)
    assert "manifest.json and" in res.stderr and "disagree" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "1.0\n"


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions(tmp_path: Path, compression: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    art = make_artifact(tmp_path / "a", version="1.0", compression=compression)
    sw(
        root,
        "activate",
        str(next(p for p in art.iterdir() if ".tar" in p.name and not p.name.endswith("sha256"))),
    )
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "1.0\n"


def _inodes(tree: Path) -> dict[str, int]:
    return {
        str(p.relative_to(tree)): p.lstat().st_ino for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
    }


def test_update_shares_unchanged_files_on_disk_and_ramdisk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    old, new = (make_artifact(tmp_path / v, version=v, small_files=300) for v in ("2026.01.01", "2026.02.01"))
    sw(root, "activate", str(old))
    before = {p: p.read_bytes() for p in (root / "sw.2026.01.01/py3").rglob("*") if p.is_file()}
    out = sw(root, "activate", str(new), "--debug")
    assert "shared with the previous version" in out.stdout + out.stderr
    disk_old, disk_new = _inodes(root / "sw.2026.01.01/py3"), _inodes(root / "sw.2026.02.01/py3")
    shared = {n for n in disk_new if disk_old.get(n) == disk_new[n]}
    # Everything but the version file, the in-tree manifest and the relocated files is one inode.
    assert "share/version.txt" not in shared and "conda-meta/swstack-manifest.json" not in shared
    assert "etc/prefix.txt" not in shared and "bin/tool" not in shared  # rewritten by relocation
    assert len(shared) >= len(disk_new) - 6
    # The old version's files were never written through a shared inode.
    assert all(p.read_bytes() == data for p, data in before.items())
    ram_old = _inodes(root / "sw.tmpfs/.py3@2026.01.01") if (root / "sw.tmpfs/.py3@2026.01.01").exists() else {}
    ram_new = _inodes(root / "sw.tmpfs/.py3@2026.02.01")
    assert not ram_old  # the old copy was dropped: nothing uses it
    nlinks = [(root / "sw.tmpfs/.py3@2026.02.01" / n).stat().st_nlink for n in ram_new]
    assert sum(n > 1 for n in nlinks) == 0  # its last other name went with the old copy
    status = json.loads(sw(root, "active", "--verify", "--json").stdout)
    assert status["stacks"][0]["in_sync"] is True
    live = root / "sw/py3"
    assert (live / "etc/prefix.txt").read_text() == f"prefix={live}\n"


def test_ramdisk_update_links_the_previous_copy_while_it_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    old, new = (make_artifact(tmp_path / v, version=v, small_files=300) for v in ("2026.01.01", "2026.02.01"))
    sw(root, "activate", str(old))
    holder = subprocess.Popen(["sleep", "60"], cwd=root / "sw.tmpfs/.py3@2026.01.01")
    try:
        sw(root, "activate", str(new))
        ram_old, ram_new = _inodes(root / "sw.tmpfs/.py3@2026.01.01"), _inodes(root / "sw.tmpfs/.py3@2026.02.01")
        shared = {n for n in ram_new if ram_old.get(n) == ram_new[n]}
        assert len(shared) >= len(ram_new) - 6 and "share/version.txt" not in shared
        assert (root / "sw.tmpfs/.py3@2026.01.01/share/version.txt").read_text() == "2026.01.01\n"
        status = json.loads(sw(root, "active", "--verify", "--json").stdout)
        assert status["stacks"][0]["in_sync"] is True
    finally:
        holder.kill()
        holder.wait()


def test_an_update_that_fits_only_shared_goes_on_and_one_that_does_not_stops_cleanly(tmp_path: Path) -> None:
    """On a real tmpfs with room for one full copy and a bit: a one-file update of the live version
    (everything else shared) is activated; an unrelated version of the same size hits ENOSPC and
    leaves the live version as it was."""
    from tests.support.host import repack_tree, unpack_artifact

    first = make_artifact(tmp_path / "a", version="1.0", payload=6 << 20)
    tree = tmp_path / "tree"
    manifest = unpack_artifact(first, tree)
    update = repack_tree(tree, manifest, tmp_path / "b", "1.1", {"share/note.txt": b"one new file\n"})
    other = make_artifact(tmp_path / "c", version="2.0", payload=6 << 20)
    root = tmp_path / "root"
    root.mkdir()
    res = _in_private_data0(
        root,
        f"swstack activate {first}; swstack activate {update}; echo rc=$?; "
        f"cat /data0/sw/py3/share/note.txt; swstack activate {other} || echo rc=$?; "
        f"cat /data0/sw/py3/share/version.txt; ls -A /data0/sw.tmpfs",
        tmpfs_size=9 << 20,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "rc=0" in lines and "one new file" in lines, res.stdout + res.stderr
    assert "less than a full copy" in res.stderr and "shared with the previous version" in res.stderr
    assert "rc=11" in lines and "onto the ramdisk" in res.stderr and "nothing live changed" in res.stderr
    assert "1.0" in lines  # version.txt of 1.1 is 1.0's: only note.txt changed
    assert ".partial" not in res.stdout and ".py3@2.0" not in res.stdout


# ---------------------------------------------------------------- chunked tarballs


def _chunk_names(art: Path) -> list[tuple[str, list[str]]]:
    """(sha256, member names) of each chunk of an artifact's tarball, read chunk by chunk."""
    import io
    import tarfile

    import zstandard

    from swstack.manifest import Manifest

    tb = Manifest.load(art / "manifest.json").tarball
    assert tb is not None and tb.chunks
    data = (art / tb.name).read_bytes()
    out = []
    for c in tb.chunks:
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data[c.offset : c.offset + c.size])).read()
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            out.append((c.sha256, [os.path.normpath(n) for n in tar.getnames()]))
    return out


def _files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file() and not p.is_symlink()}


RELOCATED = {"etc/prefix.txt", "bin/tool"}  # rewritten for the live path under tmp_path


def test_chunked_update_reads_only_the_changed_chunks(tmp_path: Path) -> None:
    from tests.support.host import chunked_pair, unpack_artifact

    one, two = chunked_pair(tmp_path / "art")
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(one))
    old_disk, old_ram = root / "sw.1.0/py3", root / "sw.tmpfs/.py3@1.0"
    before = _files(old_disk)
    record = json.loads((root / "sw.1.0/.py3.chunks.json").read_text())["chunks"]
    held = {sha for sha, names in _chunk_names(one) if RELOCATED & set(names)}
    assert held and not held & set(record)  # chunks holding relocated files are read again
    holder = subprocess.Popen(["sleep", "60"], cwd=old_ram)
    try:
        out = sw(root, "activate", str(two))
        ram_old, ram_new = _inodes(old_ram), _inodes(root / "sw.tmpfs/.py3@1.1")
    finally:
        holder.kill()
        holder.wait()
    unchanged = len({sha for sha, _ in _chunk_names(one)} & {sha for sha, _ in _chunk_names(two)} - held)
    assert f"{unchanged} of {len(_chunk_names(two))} chunks unchanged, not read" in out.stderr, out.stderr
    new_disk = root / "sw.1.1/py3"
    disk_old, disk_new = _inodes(old_disk), _inodes(new_disk)
    changed = {n for n in disk_new if n.startswith("lib/python3.11/site-packages/pkg000/")}
    assert len(changed) == 100
    not_shared = {n for n in disk_new if disk_old.get(n) != disk_new[n]}
    assert changed <= not_shared <= changed | RELOCATED | {"conda-meta/swstack-manifest.json"}
    assert {n for n in ram_new if ram_old.get(n) != ram_new[n]} == not_shared
    # The new tree is the tarball's, the old one untouched; the ramdisk copy matches.
    expected = _files(tmp_path / "unpacked") if unpack_artifact(two, tmp_path / "unpacked") else {}
    got = _files(new_disk)
    assert {n: d for n, d in got.items() if n not in RELOCATED} == {
        n: d for n, d in expected.items() if n not in RELOCATED
    }
    assert (new_disk / "etc/prefix.txt").read_text() == f"prefix={root / 'sw/py3'}\n"
    assert _files(old_disk) == before
    assert not (root / "sw.1.1/.py3.files.json").exists() and (root / "sw.1.1/.py3.chunks.json").is_file()
    assert json.loads(sw(root, "active", "--verify", "--json").stdout)["stacks"][0]["in_sync"] is True


def _flip_in_chunk(art: Path, sha: str) -> None:
    """Flip a byte inside chunk ``sha`` and re-seal the whole file's sha256 (the chunk table stays)."""
    from swstack.fsutil import sha256_file
    from swstack.manifest import Manifest

    raw = json.loads((art / "manifest.json").read_text())
    chunk = next(c for c in raw["tarball"]["chunks"] if c["sha256"] == sha)
    tarball = art / raw["tarball"]["name"]
    data = bytearray(tarball.read_bytes())
    data[chunk["offset"] + chunk["size"] // 2] ^= 0x01
    tarball.write_bytes(bytes(data))
    raw["tarball"]["sha256"] = sha256_file(tarball)
    (art / "manifest.json").write_text(json.dumps(raw))
    (art / f"{tarball.name}.sha256").write_text(f"{raw['tarball']['sha256']}  {tarball.name}\n")
    Manifest.load(art / "manifest.json")


def test_a_chunk_the_live_version_holds_is_not_read(tmp_path: Path) -> None:
    """A damaged chunk that the live version already holds is never read (its files are linked); the
    same damage on a host without that version is refused naming the chunk."""
    from tests.support.host import chunked_pair

    one, two = chunked_pair(tmp_path / "art")
    shared = [sha for sha, names in _chunk_names(two)[1:-1] if not RELOCATED & set(names)]
    shared = [sha for sha in shared if sha in {s for s, _ in _chunk_names(one)}]
    _flip_in_chunk(two, shared[0])
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(one))
    sw(root, "activate", str(two))
    assert json.loads(sw(root, "active", "--verify", "--json").stdout)["stacks"][0]["in_sync"] is True
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    res = sw(fresh, "activate", str(two), check=11)
    assert "sha256 mismatch" in res.stderr and "chunk " in res.stderr and "Traceback" not in res.stderr
    assert not (fresh / "sw.1.1").exists()


def test_a_torn_chunk_record_means_every_chunk_is_read(tmp_path: Path) -> None:
    from tests.support.host import chunked_pair

    one, two = chunked_pair(tmp_path / "art")
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    sw(root, "activate", str(one))
    (root / "sw.1.0/.py3.chunks.json").write_text('{"schema": 1, "chunks": {"ab')
    out = sw(root, "activate", str(two))
    assert "not read" not in out.stderr and "shared with the previous version" in out.stderr
    assert json.loads(sw(root, "active", "--verify", "--json").stdout)["stacks"][0]["in_sync"] is True


def _artifact_of(out: Path, root: Path, version: str, members: list[tuple[str, bytes, str, bytes]]) -> Path:
    """An unchunked artifact built for ``root``'s live path (nothing to relocate) holding
    ``members`` as (name, tar type, link target, data), plus its in-tree manifest."""
    import io
    import tarfile

    import zstandard
    from tests.support.host import base_manifest, seal

    from swstack.manifest import IN_TREE_PATH

    manifest = base_manifest("py3", version, str(root / "sw/py3"))
    meta = ("conda-meta", tarfile.DIRTYPE, "", b""), (IN_TREE_PATH, tarfile.REGTYPE, "", manifest.to_json().encode())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data in (*members, *meta):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname, info.mode, info.mtime = kind, len(data), link, 0o755, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    out.mkdir(parents=True)
    tarball = out / f"py3-{version}-linux-64.tar.zst"
    tarball.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    seal(out, tarball, manifest)
    return out


def test_hardlinked_members_share_an_inode_on_disk_and_on_the_ramdisk(tmp_path: Path) -> None:
    import tarfile

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    body = b"#!/bin/sh\necho hi\n"
    art = _artifact_of(tmp_path / "art", root, "1.0", [
        ("bin", tarfile.DIRTYPE, "", b""), ("bin/tool", tarfile.REGTYPE, "", body),
        ("bin/tool2", tarfile.LNKTYPE, "bin/tool", b""),
    ])  # fmt: skip
    sw(root, "activate", str(art))
    for tree in (root / "sw.1.0/py3", root / "sw.tmpfs/.py3@1.0"):
        assert (tree / "bin/tool").stat().st_ino == (tree / "bin/tool2").stat().st_ino
        assert (tree / "bin/tool2").read_bytes() == body


def test_a_large_unchanged_file_streams_then_is_shared(tmp_path: Path) -> None:
    """A file over the 8 MiB read-whole limit is written while compared with the live one, then
    swapped for a link to it, on disk and on the ramdisk; a changed one stays its own."""
    import tarfile

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    same, old, new = os.urandom(9 << 20), os.urandom(9 << 20), os.urandom(9 << 20)
    files = [("share", tarfile.DIRTYPE, "", b""), ("share/same.bin", tarfile.REGTYPE, "", same)]
    one = _artifact_of(tmp_path / "one", root, "1.0", [*files, ("share/changed.bin", tarfile.REGTYPE, "", old)])
    two = _artifact_of(tmp_path / "two", root, "2.0", [*files, ("share/changed.bin", tarfile.REGTYPE, "", new)])
    sw(root, "activate", str(one))
    holder = subprocess.Popen(["sleep", "60"], cwd=root / "sw.tmpfs/.py3@1.0")
    try:
        sw(root, "activate", str(two))
        pairs = ((root / "sw.1.0/py3", root / "sw.2.0/py3"), (root / "sw.tmpfs/.py3@1.0", root / "sw.tmpfs/.py3@2.0"))
        for a, b in pairs:
            assert (a / "share/same.bin").stat().st_ino == (b / "share/same.bin").stat().st_ino
            assert (a / "share/changed.bin").stat().st_ino != (b / "share/changed.bin").stat().st_ino
            assert (b / "share/changed.bin").read_bytes() == new and (a / "share/changed.bin").read_bytes() == old
            assert not list(b.rglob(".*.shared"))
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(sw(root, "active", "--verify", "--json").stdout)["stacks"][0]["in_sync"] is True


def test_a_side_file_given_for_the_tarball_is_named_as_one(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    art = artifacts["2026.01.01"]
    side = next(art.glob("*.sha256"))
    res = sw(root, "activate", str(side), check=11)
    [tarball] = art.glob("*.tar.zst")
    assert res.stderr.strip() == (
        f"swstack activate: error: {side}: not the artifact's tarball ({art / 'manifest.json'} names "
        f"{tarball.name}); give the tarball or its directory {art}"
    )
    assert not list((root / "sw").iterdir())  # nothing live


def _redirecting(to: str) -> type:
    import http.server

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", to + self.path)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Redirect


def _self_signed(work: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (openssl) and its key."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_download_redirected_off_https_or_to_ftp_is_refused(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """Where anyone on the path could swap what is served: urllib follows https -> http and
    http -> ftp redirects; the host refuses both in one line, nothing live changes."""
    import functools
    import http.server
    import ssl

    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(artifacts["2026.01.01"]))
    tarball = "py3-2026.02.01-linux-64.tar.zst"
    plain = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(artifacts["2026.02.01"]))
    cert, key = _self_signed(tmp_path)
    with _serving(plain) as target:
        with _serving(_redirecting(f"http://127.0.0.1:{target.server_address[1]}")) as secure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            secure.socket = context.wrap_socket(secure.socket, server_side=True)
            url = f"https://127.0.0.1:{secure.server_address[1]}/{tarball}"
            env = dict(os.environ, SSL_CERT_FILE=str(cert))  # the client trusts this server, as a site's CA
            res = subprocess.run(swstack_argv("activate", url, "--root", str(root)), capture_output=True,
                                 text=True, env=env, timeout=120)  # fmt: skip
            assert res.returncode == 11, res.stderr
            assert res.stderr.splitlines()[-1].endswith(
                "from https:// to http://; refused (a download is never redirected off https, nor to anything "
                "but http or https): use the final URL"
            ), res.stderr
        with _serving(_redirecting("ftp://127.0.0.1:9")) as insecure:
            res = sw(root, "activate", f"http://127.0.0.1:{insecure.server_address[1]}/{tarball}", check=11)
            assert "from http:// to ftp://; refused" in res.stderr.splitlines()[-1], res.stderr
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"


def test_a_download_that_trickles_is_refused_as_stalled(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """The socket's timeout restarts with every byte: a server trickling the tarball held the
    host lock for as long as it liked. Fewer than 64 KiB in a window is a stall (here 1 s)."""
    import http.server

    served = artifacts["2026.02.01"]

    class Trickle(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.endswith(".tar.zst"):
                super().do_GET()
                return
            self.send_response(200)
            self.send_header("Content-Length", str((served / self.path.lstrip("/")).stat().st_size))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                for _ in range(400):  # 100 s at most: the test server must end too
                    self.wfile.write(b"\x28")
                    self.wfile.flush()
                    time.sleep(0.25)

        def translate_path(self, path: str) -> str:
            return str(served / path.split("?")[0].lstrip("/"))

        def log_message(self, *args: object) -> None:
            pass

    root = tmp_path / "root"
    root.mkdir()
    sw(root, "activate", str(artifacts["2026.01.01"]))
    with _serving(Trickle) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/py3-2026.02.01-linux-64.tar.zst"
        env = dict(os.environ, SWSTACK_DOWNLOAD_STALL="1")
        res = subprocess.run(swstack_argv("activate", url, "--root", str(root)), capture_output=True, text=True,
                             env=env, timeout=120)  # fmt: skip
        assert res.returncode == 11, res.stderr
        line = res.stderr.splitlines()[-1]
        assert f"{url}: stalled, " in line and "bytes in the last 1 s (fewer than 64 KiB); refused" in line, line
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    assert list((root / ".swstack/downloads").iterdir()) == []


def test_a_source_given_as_a_relative_path_is_recorded_absolute(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """state.json's ``source`` was the path as typed, relative to wherever the command ran: meaningless
    to the next reader (an operator, `active --verbose`, a script)."""
    root = tmp_path / "root"
    root.mkdir()
    relative = os.path.relpath(artifacts["2026.01.01"], tmp_path)
    res = subprocess.run(swstack_argv("activate", relative, "--root", str(root)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads((root / ".swstack" / "state.json").read_text())["stacks"]["py3"]
    assert record["source"] == str(artifacts["2026.01.01"])
