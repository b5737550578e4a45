"""The host CLI on damaged and odd hosts: a ramdisk copy changed behind swstack's back, versions
that are not swstack trees, a recorded tree that is gone, a release failing half-way, foreign
``sw.*`` directories. Every test works under ``tmp_path`` (``--root``); none touches /data0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.host import chunked_pair, make_artifact, swstack_argv

SHARED = "lib/python3.11/site-packages/pkg001/mod05.py"  # the same bytes in every version below


def sw(root: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(swstack_argv(*args, "--root", str(root)), capture_output=True, text=True, timeout=300)
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    return res


def production_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    return root


def damage(path: Path, *, keep_mtime: bool) -> bytes:
    """Change a file's bytes in place, keeping its size; its mtime moves as any write moves it, or
    is set back (``keep_mtime``: a deliberate change only its content tells). Returns the old bytes."""
    st = path.stat()
    old = path.read_bytes()
    with path.open("r+b") as fh:  # the same inode: every name linked to it sees the damage
        fh.write(bytes([old[0] ^ 0x20]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a second later, as a write lands
    assert path.read_bytes() != old and (path.stat().st_mtime_ns == st.st_mtime_ns) == keep_mtime
    return old


def assert_clean(root: Path) -> None:
    status = json.loads(sw(root, "active", "--verify", "--json").stdout)
    assert all(s["in_sync"] is True for s in status["stacks"]), status


def no_error_lines(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- a damaged ramdisk copy


def test_restore_repairs_a_copy_whose_bytes_changed_with_size_and_mtime_kept(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0", small_files=200)))
    copy = root / "sw.tmpfs/.py3@1.0"
    good = damage(copy / SHARED, keep_mtime=True)
    sw(root, "active", check=0)  # by attributes the copy looks whole
    verified = sw(root, "active", "--verify", "--verbose", check=1)
    assert SHARED in verified.stdout  # by content it is not
    # restore copies the persistent tree: the hint says so, and what to do when that tree changed
    assert (f"py3: ramdisk copy missing or different from the persistent tree; `swstack restore --root {root}` "
            "loads that "
            "tree again (if the persistent tree is what changed, activate the artifact again instead)"
            ) in verified.stderr  # fmt: skip
    res = sw(root, "restore")
    assert f"differs from {root / 'sw.1.0/py3'} ({SHARED}); loading it again" in res.stderr
    assert (root / "sw/py3" / SHARED).read_bytes() == good
    assert_clean(root)
    sw(root, "restore", check=3)  # repaired: nothing more to do
    assert not [p for p in (root / "sw.tmpfs").iterdir() if ".damaged-" in p.name]  # unused: dropped


def test_an_update_never_links_a_ramdisk_file_written_since(tmp_path: Path) -> None:
    """Unchunked tarballs: the new copy gets the verified bytes, not the damaged inode."""
    root = production_root(tmp_path)
    old, new = (make_artifact(tmp_path / v, version=v, small_files=200) for v in ("1.0", "2.0"))
    sw(root, "activate", str(old))
    damaged = root / "sw.tmpfs/.py3@1.0" / SHARED
    good = damage(damaged, keep_mtime=False)
    inode = damaged.stat().st_ino
    res = sw(root, "activate", str(new))
    assert f"{damaged}: differs from the verified file (size, mode, mtime or owner); not shared, written again" in (
        res.stderr
    )
    fresh = root / "sw.tmpfs/.py3@2.0" / SHARED
    assert fresh.read_bytes() == good and fresh.stat().st_ino != inode
    assert "shared with the previous version" in res.stderr  # the other files still are
    assert_clean(root)


def test_a_chunked_update_never_links_a_ramdisk_file_written_since_of_a_chunk_not_read(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    one, two = chunked_pair(tmp_path / "art")
    sw(root, "activate", str(one))
    damaged = root / "sw.tmpfs/.py3@1.0" / SHARED
    good = damage(damaged, keep_mtime=False)
    res = sw(root, "activate", str(two))
    assert "chunks unchanged, not read" in res.stderr  # the chunk holding it was replayed
    assert f"{damaged}: differs from the verified file" in res.stderr
    assert (root / "sw.tmpfs/.py3@1.1" / SHARED).read_bytes() == good
    assert_clean(root)


def test_set_version_never_links_a_ramdisk_file_written_since(tmp_path: Path) -> None:
    """Copying a tree already on disk (set-version): a file sharing its disk inode with the live
    version is linked to the live copy only if that copy still has the disk file's attributes."""
    root = production_root(tmp_path)
    old, new = (make_artifact(tmp_path / v, version=v, small_files=200) for v in ("1.0", "2.0"))
    sw(root, "activate", str(old))
    sw(root, "activate", str(new))  # 1.0's copy dropped; 2.0's disk tree shares inodes with 1.0's
    assert (root / "sw.1.0/py3" / SHARED).stat().st_ino == (root / "sw.2.0/py3" / SHARED).stat().st_ino
    damaged = root / "sw.tmpfs/.py3@2.0" / SHARED
    good = damage(damaged, keep_mtime=False)
    res = sw(root, "set-version", "1.0")
    # Named, as an update names it (docs/host.md, Delta activation).
    assert f"{damaged}: differs from the verified file (size, mode, mtime or owner); not shared, written again" in (
        res.stderr
    )
    assert (root / "sw/py3" / SHARED).read_bytes() == good
    assert_clean(root)


# ---------------------------------------------------------------- set-version of what is not a tree


def test_set_version_refuses_an_empty_or_foreign_directory(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    live = os.readlink(root / "sw.tmpfs/py3")
    (root / "sw.2.0").mkdir()
    res = sw(root, "set-version", "2.0", check=11)
    assert res.stderr.count("\n") == 1 and f"{root / 'sw.2.0'} holds no stack" in res.stderr
    (root / "sw.2.0/py3").mkdir()
    res = sw(root, "set-version", "2.0", check=11)
    assert res.stderr.count("\n") == 1, res.stderr
    assert f"{root / 'sw.2.0/py3'}: no conda-meta/swstack-manifest.json, not a swstack tree" in res.stderr
    (root / "sw.2.0/py3/conda-meta").mkdir()
    (root / "sw.2.0/py3/conda-meta/swstack-manifest.json").write_text("{}")
    res = sw(root, "set-version", "2.0", "--stack", "py3", check=11)
    assert res.stderr.count("\n") == 1 and "not a swstack manifest" in res.stderr
    # A real tree under another version's name: its manifest says which it is.
    (root / "sw.3.0").mkdir()
    subprocess.run(["cp", "-a", str(root / "sw.1.0/py3"), str(root / "sw.3.0/")], check=True)
    res = sw(root, "set-version", "3.0", check=11)
    assert res.stderr.count("\n") == 1 and "describes py3 1.0, not py3 3.0" in res.stderr
    assert os.readlink(root / "sw.tmpfs/py3") == live
    assert sorted(p.name for p in (root / "sw.tmpfs").iterdir()) == [".py3@1.0", "py3"]


# ---------------------------------------------------------------- restore, stack by stack


def test_restore_serves_every_stack_it_can_and_names_the_one_it_cannot(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    py3 = make_artifact(tmp_path / "py3", version="1.0")
    r = make_artifact(tmp_path / "r", stack="r", version="1.0")
    sw(root, "activate", str(py3), str(r))
    # Reboot, and py3's persistent tree is gone.
    subprocess.run(["rm", "-rf", str(root / "sw.tmpfs"), str(root / "sw.1.0/py3")], check=True)
    (root / "sw.tmpfs").mkdir()
    res = sw(root, "restore", check=11)
    no_error_lines(res)
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("swstack restore: error: py3: not restored: ")
    assert f"no {root / 'sw.1.0/py3'}" in errors[0]
    assert (root / "sw/r/share/version.txt").read_text() == "1.0\n"
    assert "r: 1.0 active (loaded onto the ramdisk, switched)" in res.stdout
    assert "r: nothing -> 1.0 (r)" in res.stderr  # it switched from nothing, not from a previous version


def test_restore_that_restores_nothing_because_it_failed_does_not_say_nothing_to_do(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    subprocess.run(["rm", "-rf", str(root / "sw.tmpfs"), str(root / "sw.1.0/py3")], check=True)
    (root / "sw.tmpfs").mkdir()
    res = sw(root, "restore", check=11)
    assert "nothing to do" not in res.stdout, res.stdout
    assert "swstack restore: error: py3: not restored: " in res.stderr

def test_restore_logs_the_version_it_switches_from(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    for v in ("1.0", "2.0"):
        sw(root, "activate", str(make_artifact(tmp_path / v, version=v)))
    subprocess.run(["rm", "-rf", str(root / "sw.tmpfs")], check=True)
    (root / "sw.tmpfs").mkdir()
    res = sw(root, "restore")
    assert "py3: nothing -> 2.0 (py3)" in res.stderr and "1.0 -> 2.0" not in res.stderr
    assert "previous 1.0" in res.stdout  # the record keeps its previous version


# ---------------------------------------------------------------- a release failing at a later stack


def test_a_release_failing_at_its_second_stack_leaves_nothing_on_the_ramdisk(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "old", version="0.9")))
    py3 = make_artifact(tmp_path / "py3", version="1.0")
    bad = make_artifact(tmp_path / "r", stack="r", version="1.0")
    tarball = next(bad.glob("*.tar.zst"))
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: refused while extracting, after py3's copy was written
    tarball.write_bytes(bytes(data))
    res = sw(root, "activate", str(py3), str(bad), check=11)
    no_error_lines(res)
    assert res.stderr.count("error:") == 1
    assert sorted(p.name for p in (root / "sw.tmpfs").iterdir()) == [".py3@0.9", "py3"]
    assert os.readlink(root / "sw.tmpfs/py3") == ".py3@0.9"


# ---------------------------------------------------------------- prune


def test_prune_leaves_directories_it_did_not_make(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    for v in ("1.0", "2.0", "3.0", "4.0"):  # 4.0 active, 3.0 previous
        sw(root, "activate", str(make_artifact(tmp_path / v, version=v)))
    foreign = {
        "sw.hdd-old": "notes.txt",  # an admin's copy of the seed's sw.hdd
        "sw.0.1": "anaconda3/bin/python",  # a version installed by hand, before swstack
        "sw.0.2": ".py3.chunks.json",  # nothing but a stray record
    }
    for d, f in foreign.items():
        (root / d / f).parent.mkdir(parents=True, exist_ok=True)
        (root / d / f).write_text("mine\n")
    (root / "sw.1.0/README").write_text("a note beside the tree\n")
    res = json.loads(sw(root, "prune", "--keep", "0", "--json").stdout)
    assert res["removed"] == ["2.0"]
    for v, why in (("hdd-old", "notes.txt is not a tree"), ("0.1", "anaconda3 has no readable"),
                   ("0.2", "no tree"), ("1.0", "README is not a tree")):  # fmt: skip
        assert why in res["kept"][v], res["kept"]
        assert (root / f"sw.{v}").is_dir()
    assert res["kept"]["4.0"] == "live version of py3 (py3)"


def test_prune_reports_the_ramdisk_copies_it_removes(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    for v in ("1.0", "2.0"):
        sw(root, "activate", str(make_artifact(tmp_path / v, version=v)))
    # A copy no longer live (as a run cut short before its last step leaves one).
    subprocess.run(["cp", "-a", str(root / "sw.tmpfs/.py3@2.0"), str(root / "sw.tmpfs/.py3@1.0")], check=True)
    dry = json.loads(sw(root, "prune", "--keep", "5", "--dry-run", "--json", check=3).stdout)
    assert (dry["removed_copies"], dry["would_remove_copies"]) == ([], [str(root / "sw.tmpfs/.py3@1.0")])
    dry_text = sw(root, "prune", "--keep", "5", "--dry-run", check=3).stdout
    assert f"would remove {root / 'sw.tmpfs/.py3@1.0'} (ramdisk copy no longer live)" in dry_text
    assert (root / "sw.tmpfs/.py3@1.0").is_dir()  # a dry run names it only
    res = sw(root, "prune", "--keep", "5", "--json")
    assert json.loads(res.stdout)["removed_copies"] == [str(root / "sw.tmpfs/.py3@1.0")]
    assert not (root / "sw.tmpfs/.py3@1.0").exists()
    subprocess.run(["cp", "-a", str(root / "sw.tmpfs/.py3@2.0"), str(root / "sw.tmpfs/.py3@1.0")], check=True)
    res = sw(root, "prune", "--keep", "5")
    assert f"removed {root / 'sw.tmpfs/.py3@1.0'} (ramdisk copy no longer live)" in res.stdout
    sw(root, "prune", "--keep", "5", check=3)


# ---------------------------------------------------------------- active --verbose


def test_active_verbose_prints_no_none(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    (root / "sw.tmpfs/py3").unlink()  # recorded, not live
    res = sw(root, "active", "--verbose", check=1)
    assert "None" not in res.stdout
    assert "served from: -" in res.stdout and "persistent:  -" in res.stdout


# ---------------------------------------------------------------- a tree of another owner


def test_a_tree_another_user_owns_lends_no_file_to_a_root_owned_version(tmp_path: Path) -> None:
    """A tree given to its owner (899:899) is that user's to change, its in-tree manifest included:
    one that claims no owner (as the next, root-owned version has) must still lend it nothing, or
    bytes that user wrote (size, mode and mtime kept) go live in the root-owned version."""
    from dataclasses import replace

    from tests.support.host import repack_tree, unpack_artifact

    root = production_root(tmp_path)
    # Built for this root's live path: nothing is relocated, so every unchanged chunk is in the record.
    plain = make_artifact(tmp_path / "plain", version="1.0", prefix=str(root / "sw/py3"), owner="899:899",
                          small_files=200)  # fmt: skip
    tree = tmp_path / "tree"
    manifest = unpack_artifact(plain, tree)
    one = repack_tree(tree, manifest, tmp_path / "one", "1.0", {})
    two = repack_tree(tree, replace(manifest, owner=None), tmp_path / "two", "1.1", {})
    modules = sorted(str(f.relative_to(tree)) for f in (tree / "lib/python3.11/site-packages").rglob("*.py"))
    sw(root, "activate", str(one))
    assert os.stat(root / "sw.1.0/py3" / SHARED).st_uid == 899
    # What user 899 can do to its own tree: drop the owner from the in-tree manifest, change its
    # files on disk and on the ramdisk with their size, mode and mtime kept.
    in_tree = root / "sw.1.0/py3/conda-meta/swstack-manifest.json"
    data = json.loads(in_tree.read_text())
    data["owner"] = None
    in_tree.write_text(json.dumps(data))
    for name in modules:
        for path in (root / "sw.1.0/py3" / name, root / "sw.tmpfs/.py3@1.0" / name):
            st = os.stat(path)
            path.write_bytes(path.read_bytes().replace(b"x = 1", b"y = 2"))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    sw(root, "activate", str(two))
    changed = [n for n in modules if (root / "sw/py3" / n).read_bytes() != (tree / n).read_bytes()]
    assert changed == []
    assert os.stat(root / "sw.1.1/py3" / SHARED).st_uid == os.geteuid()


def test_a_removed_ramdisk_directory_is_one_line_with_the_steps_back(tmp_path: Path) -> None:
    """``sw -> sw.tmpfs`` with ``sw.tmpfs`` itself removed: every command that changes the host says
    to recreate it with init, then restore (exit 11, nothing changed), never a bare "File exists"."""
    root = production_root(tmp_path)
    sw(root, "activate", str(make_artifact(tmp_path / "a", version="1.0")))
    sw(root, "activate", str(make_artifact(tmp_path / "b", version="1.1")))
    shutil.rmtree(root / "sw.tmpfs")
    steps = (f"run `swstack init --root {root}` to create it (and mount the ramdisk), "
             f"then `swstack restore --root {root}`")
    status = sw(root, "active", check=1)
    assert steps in status.stderr  # not "`swstack restore` makes the recorded version live again": it cannot
    third = make_artifact(tmp_path / "c", version="1.2")
    for args in (("restore",), ("set-version", "1.0"), ("activate", str(third)), ("prune", "--keep", "0")):
        res = sw(root, *args, "--json", check=11)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and steps in lines[0], res.stderr
        assert json.loads(res.stdout) == {"error": lines[0].split(": error: ", 1)[1], "exit_code": 11}
    assert os.readlink(root / "sw") == "sw.tmpfs" and not (root / "sw.1.2").exists()
    assert json.loads((root / ".swstack/state.json").read_text())["stacks"]["py3"]["version"] == "1.1"
    subprocess.run(swstack_argv("init", "--root", str(root)), check=True, capture_output=True)
    sw(root, "restore")  # the steps given work
    assert json.loads(sw(root, "active", "--json").stdout)["stacks"][0]["version"] == "1.1"
