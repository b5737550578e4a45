"""Host-side test support: hostile tarballs, a private /data0 via bubblewrap, artifacts unpacked and repacked.

``make_artifact``, ``base_manifest`` and ``seal`` live in ``tests/support/artifacts.py`` (one
helper for every side) and are importable from here too, as the host tests and
``benchmarks/activate.py`` import them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

from tests.support.artifacts import PLATFORM, base_manifest, make_artifact, seal, tar_link, tar_member, write_tar

from swstack.manifest import IN_TREE_PATH, Manifest

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "HOSTILE_CASES",
    "base_manifest",
    "bwrap_argv",
    "hostile_artifact",
    "make_artifact",
    "repack_tree",
    "seal",
    "swstack_argv",
    "unpack_artifact",
]


def _pax(info: tarfile.TarInfo, **headers: str) -> tarfile.TarInfo:
    """A member whose PAX extended header overrides what its plain header says."""
    info.pax_headers = dict(headers)
    return info


def hostile_artifact(out: Path, case: str, stack: str = "py3", version: str = "2026.06.06") -> Path:
    """An artifact whose tarball is valid and correctly checksummed but hostile in one way."""
    manifest = base_manifest(stack, version, f"/data0/sw/{stack}")
    good = [
        (tar_member("conda-meta", mode=0o755, kind=tarfile.DIRTYPE), None),
        (tar_member(IN_TREE_PATH, len(manifest.to_json())), manifest.to_json().encode()),
    ]
    payload = b"owned\n"
    evil: list[tuple[tarfile.TarInfo, bytes | None]] = {
        "traversal": [(tar_member("../escaped.txt", len(payload)), payload)],
        "deep-traversal": [(tar_member("lib/../../escaped.txt", len(payload)), payload)],
        "absolute": [(tar_member("/tmp/escaped-abs.txt", len(payload)), payload)],
        "symlink-write": [(tar_link("lib", "/tmp"), None), (tar_member("lib/escaped.txt", len(payload)), payload)],
        "symlink-out": [(tar_link("lib", "../.."), None)],
        "symlink-chain": [
            (tar_link("a", "b/.."), None),
            (tar_member("b", mode=0o755, kind=tarfile.DIRTYPE), None),
            (tar_link("c", "a/.."), None),
        ],
        "symlink-dot-trick": [(tar_link("s", "."), None), (tar_link("x", "s/.."), None)],
        "hardlink-out": [(tar_link("passwd", "/etc/passwd", tarfile.LNKTYPE), None)],
        "hardlink-traversal": [(tar_link("passwd", "../../etc/passwd", tarfile.LNKTYPE), None)],
        "device": [(tar_member("dev-null", kind=tarfile.CHRTYPE), None)],
        "fifo": [(tar_member("pipe", kind=tarfile.FIFOTYPE), None)],
        "setuid": [(tar_member("bin-su", len(payload), 0o4755), payload)],
        "setgid": [(tar_member("bin-sg", len(payload), 0o2755), payload)],
        "duplicate-over-symlink": [(tar_link("etc", "/tmp"), None), (tar_member("etc", len(payload)), payload)],
        "newline-name": [(tar_member("lib/evil\nname.py", len(payload)), payload)],
        "escape-in-name": [(tar_member("lib/\x1b[2Jclear.py", len(payload)), payload)],
        "non-utf8-name": [(tar_member("lib/bad-\udcff-name.py", len(payload)), payload)],
        "newline-link-target": [(tar_link("lib", "ok\nthere"), None)],
        "pax-path-override": [(_pax(tar_member("harmless.txt", len(payload)), path="../escaped.txt"), payload)],
        "pax-linkpath-override": [(_pax(tar_link("lib", "ok"), linkpath="/tmp"), None)],
        "gnu-longname-traversal": [(tar_member("../" * 40 + "escaped-long.txt", len(payload)), payload)],
        "gnu-longlink-absolute": [(tar_link("lib", "/" + "x" * 200), None)],
        "root-symlink": [(tar_link(".", "/tmp"), None)],
        "root-file": [(tar_member("./", len(payload)), payload)],
        "huge-size": [(tar_member("share/huge.bin", 1 << 50), None)],
    }[case]
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"{stack}-{version}-{PLATFORM}.tar.zst"
    fmt = tarfile.GNU_FORMAT if case.startswith("gnu-") else tarfile.PAX_FORMAT
    write_tar(tarball, good + evil, fmt=fmt)
    seal(out, tarball, manifest)
    return out


HOSTILE_CASES = (
    "traversal",
    "deep-traversal",
    "absolute",
    "symlink-write",
    "symlink-out",
    "symlink-chain",
    "symlink-dot-trick",
    "hardlink-out",
    "hardlink-traversal",
    "device",
    "fifo",
    "setuid",
    "setgid",
    "duplicate-over-symlink",
    "newline-name",
    "escape-in-name",
    "non-utf8-name",
    "newline-link-target",
    "pax-path-override",
    "pax-linkpath-override",
    "gnu-longname-traversal",
    "gnu-longlink-absolute",
    "root-symlink",
    "root-file",
    "huge-size",
)


def swstack_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "swstack.cli", *args]


def bwrap_argv(
    root: Path, cmd: list[str], tmpfs_size: int | None = None, production: bool = True
) -> list[str]:
    """Run ``cmd`` with ``root`` bind-mounted at a private /data0 (and a size-limited tmpfs at sw.tmpfs).

    Binds each top-level directory except /data0, /proc and /dev; never ``--bind / /``,
    so nothing can land on the machine's own /data0.
    """
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is needed (scripts/setup installs it)"
    argv = [bwrap]
    for entry in sorted(Path("/").iterdir()):
        if entry.name in ("data0", "proc", "dev") or not entry.exists():
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), str(entry)]
        else:
            argv += ["--bind", str(entry), str(entry)]
    argv += ["--proc", "/proc", "--dev", "/dev", "--bind", str(root), "/data0"]
    if production:
        (root / "sw.tmpfs").mkdir(exist_ok=True)
        if tmpfs_size is not None:
            argv += ["--size", str(tmpfs_size), "--tmpfs", "/data0/sw.tmpfs"]
    argv += ["--chdir", "/", "--", *cmd]
    return argv


def unpack_artifact(artifact: Path, dest: Path) -> Manifest:
    """Extract an artifact's tarball into the new directory ``dest`` (checked, as the host does)."""
    from swstack.host.extract import extract
    from swstack.host.verify import Expected

    manifest = Manifest.load(artifact / "manifest.json")
    assert manifest.tarball is not None
    dest.mkdir(parents=True)
    extract(artifact / manifest.tarball.name, dest, Expected(manifest.tarball.sha256, manifest.tarball.size))
    return manifest


def repack_tree(tree: Path, manifest: Manifest, out: Path, version: str, changes: dict[str, bytes]) -> Path:
    """Pack an unpacked artifact tree again as ``version``, with ``changes`` (name -> content) written
    over or added, through pack's own tar writer; return the new artifact directory ``out``.

    A cheap second version of a real stack: every other file keeps its bytes, mode and mtime.
    """
    from swstack.pack import Entry, PackOptions, _ChunkCompressor, _write_tarball, in_tree_manifest_entry, plan_entries

    recorded: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, tree)
            st = os.lstat(path)
            if os.path.islink(path):
                recorded.append(Entry(rel, "symlink", 0o777, st.st_mtime, linkname=os.readlink(path)))
            elif os.path.isdir(path):
                recorded.append(Entry(rel, "dir", st.st_mode & 0o7777, st.st_mtime))
            elif rel != IN_TREE_PATH and rel not in changes:
                recorded.append(Entry(rel, "file", st.st_mode & 0o7777, st.st_mtime, st.st_size, source=path))
    epoch = manifest.source_date_epoch
    for rel, data in changes.items():
        recorded.append(Entry(rel, "file", 0o644, epoch, len(data), data=data))
    entries = plan_entries(recorded, epoch)
    count = sum(1 for e in entries if e.kind != "dir")
    size = sum(e.size for e in entries if e.kind == "file")
    new = replace(manifest, version=version, tarball=None, file_count=count + 1, total_size=size)
    entries = sorted([*entries, in_tree_manifest_entry(new, epoch)], key=lambda e: e.name)
    out.mkdir(parents=True)
    tarball = out / f"{new.stack_id}-{version}-{new.platform}.tar.zst"
    options = PackOptions(epoch, level=1)
    compressor = _ChunkCompressor(options.resolved_level(), options.resolved_threads(), 0, 0)
    try:
        info = _write_tarball(tarball, entries, options, 0, 0, compressor, {})
    finally:
        compressor.close()
    seal(out, tarball, new)
    (out / "manifest.json").write_text(replace(new, tarball=info).to_json())  # with pack's chunk table
    return out


def chunked_pair(work: Path, first: str = "1.0", second: str = "1.1", *, payload: int = 4 << 20,
                 small_files: int = 600) -> tuple[Path, Path]:  # fmt: skip
    """Two chunked artifacts (pack's writer) of one tree: ``first``, and ``second`` with one package's
    modules (``lib/python3.11/site-packages/pkg000``) rewritten; every other file keeps its bytes."""
    plain = make_artifact(work / "plain", version=first, payload=payload, small_files=small_files)
    tree = work / "tree"
    manifest = unpack_artifact(plain, tree)
    one = repack_tree(tree, manifest, work / first, first, {})
    package = tree / "lib/python3.11/site-packages/pkg000"
    changes = {str(f.relative_to(tree)): f.read_bytes() + b"# changed\n" for f in sorted(package.iterdir())}
    two = repack_tree(tree, manifest, work / second, second, changes)
    shutil.rmtree(tree)
    return one, two
