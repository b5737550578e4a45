"""Host-side test support: conda-pack-like artifacts, hostile tarballs and a private /data0 via bubblewrap.

``make_artifact`` writes ``<out>/<stack>-<version>-linux-64.tar.zst`` + ``.sha256`` +
``manifest.json`` whose tree looks like a conda-pack one: text files holding the
prefix, an optional binary one, ``conda-meta/``, and a ``bin/conda-unpack`` shaped like
conda-pack's (``update_prefix`` + ``_prefix_records``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import zstandard

from swstack.fsutil import sha256_file
from swstack.manifest import IN_TREE_PATH, Manifest, PackageEntry, TarballInfo

PLATFORM = "linux-64"
MTIME = 1_700_000_000
REPO = Path(__file__).resolve().parents[2]

CONDA_UNPACK = """\
#!/usr/bin/env python
import os


def update_prefix(path, new_prefix, placeholder, mode="text"):
    with open(path, "rb+") as fh:
        data = fh.read()
        if mode == "text":
            new = data.replace(placeholder.encode(), new_prefix.encode())
        else:
            old_b, new_b = placeholder.encode(), new_prefix.encode()
            if len(new_b) > len(old_b):
                raise ValueError("new prefix longer than placeholder in binary file")
            parts = data.split(b"\\0")
            new = b"\\0".join(
                p.replace(old_b, new_b) + b"\\0" * (p.count(old_b) * (len(old_b) - len(new_b))) for p in parts
            )
            assert len(new) == len(data)
        if new != data:
            fh.seek(0)
            fh.write(new)
            fh.truncate()


_prefix_records = [
{records}
]

if __name__ == "__main__":
    new_prefix = os.path.abspath(os.path.dirname(os.path.dirname(__file__)))
    for path, placeholder, mode in _prefix_records:
        update_prefix(os.path.join(new_prefix, path), new_prefix, placeholder, mode=mode)
"""


def base_manifest(
    stack: str,
    version: str,
    prefix: str,
    owner: str | None = None,
    packages: tuple[PackageEntry, ...] | None = None,
    platform: str = PLATFORM,
) -> Manifest:
    pkgs = (
        packages
        if packages is not None
        else (
            PackageEntry("python", "3.11.7", "h1_0", "https://conda.anaconda.org/conda-forge", "a" * 64, 100),
            PackageEntry(
                "numpy", "1.26.4", "py311_0", "https://conda.anaconda.org/conda-forge", "b" * 64, 200
            ),
        )
    )
    return Manifest(
        stack=stack,
        variant="default",
        version=version,
        platform=platform,
        prefix=prefix,
        lockfile_sha256="0" * 64,
        stackfile_sha256="1" * 64,
        tools={"swstack": "0.1.0"},
        packages=pkgs,
        file_count=0,
        total_size=0,
        git_commit="0" * 40,
        build_time="2026-11-21T00:00:00+00:00",
        source_date_epoch=MTIME,
        owner=owner,
    )


def tree_files(prefix: str, binary: bool, payload: int, manifest: Manifest) -> dict[str, tuple[bytes, int]]:
    """name -> (content, mode) of a small conda-pack-like tree."""
    records = [("etc/prefix.txt", prefix, "text"), ("bin/tool", prefix, "text")]
    files = {
        "bin/python": (f'#!/bin/sh\nexec {sys.executable} "$@"\n'.encode(), 0o755),
        "bin/tool": (f"#!/bin/sh\necho {prefix}\n".encode(), 0o755),
        "etc/prefix.txt": (f"prefix={prefix}\n".encode(), 0o644),
        "conda-meta/fake-1.0-0.json": (json.dumps({"name": "fake", "version": "1.0"}).encode(), 0o644),
        "conda-meta/history": (b"", 0o644),
        "share/version.txt": (f"{manifest.version}\n".encode(), 0o644),
    }
    if binary:
        files["lib/libfake.so"] = (b"\x7fELF\x00\x01" + prefix.encode() + b"/lib\x00" + b"\x00" * 16, 0o755)
        records.append(("lib/libfake.so", prefix, "binary"))
    if payload:
        chunk = 1 << 20
        for i in range((payload + chunk - 1) // chunk):
            files[f"share/payload/blob{i:04d}.bin"] = (os.urandom(min(chunk, payload - i * chunk)), 0o644)
    files["bin/conda-unpack"] = (
        CONDA_UNPACK.replace(
            "{records}", "\n".join(f"    ({p!r}, {ph!r}, {m!r})," for p, ph, m in records)
        ).encode(),
        0o755,
    )
    return files


def _info(name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, mode, MTIME, kind
    return info


def write_tar(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    compression: str = "zstd",
    fmt: int = tarfile.PAX_FORMAT,
) -> None:
    with path.open("wb") as raw:
        if compression == "zstd":
            with (
                zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as fh,
                tarfile.open(fileobj=fh, mode="w|", format=fmt) as tar,
            ):
                _add_all(tar, members)
        else:
            mode = "w|gz" if compression == "gzip" else "w|"
            with tarfile.open(fileobj=raw, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
                _add_all(tar, members)


def _add_all(tar: tarfile.TarFile, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    for info, data in members:
        tar.addfile(info, io.BytesIO(data) if data is not None else None)


def make_artifact(
    out: Path,
    stack: str = "py3",
    version: str = "2026.01.01",
    prefix: str | None = None,
    *,
    binary: bool = False,
    payload: int = 0,
    owner: str | None = None,
    compression: str = "zstd",
    packages: tuple[PackageEntry, ...] | None = None,
    understate: bool = False,
    small_files: int = 0,
    platform: str = PLATFORM,
) -> Path:
    """Write an artifact directory ``out`` and return it (``understate``: a manifest claiming 1 kB)."""
    prefix = prefix or f"/data0/sw/{stack}"
    manifest = base_manifest(stack, version, prefix, owner, packages, platform)
    files = tree_files(prefix, binary, payload, manifest)
    for i in range(small_files):  # a site-packages-like mass of small text files
        files[f"lib/python3.11/site-packages/pkg{i // 100:03d}/mod{i % 100:02d}.py"] = (
            (f"# module {i}\n" + "x = 1\n" * (50 + i % 400)).encode(),
            0o644,
        )
    total = sum(len(d) for d, _ in files.values())
    manifest = replace(manifest, file_count=len(files) + 2, total_size=total)
    if understate:
        manifest = replace(manifest, file_count=3, total_size=1000)
    files[IN_TREE_PATH] = (manifest.to_json().encode(), 0o644)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs = sorted({str(Path(n).parent) for n in files} - {"."})
    all_dirs = sorted({str(p) for d in dirs for p in [Path(d), *Path(d).parents] if str(p) != "."})
    for d in all_dirs:
        members.append((_info(d, mode=0o755, kind=tarfile.DIRTYPE), None))
    for name, (data, mode) in sorted(files.items()):
        members.append((_info(name, len(data), mode), data))
    members.append((_link("bin/python3", "python"), None))
    if binary:
        members.append((_link("lib/libfake.so.1", "libfake.so"), None))
    out.mkdir(parents=True, exist_ok=True)
    ext = {"zstd": "tar.zst", "gzip": "tar.gz", "none": "tar"}[compression]
    tarball = out / f"{manifest.stack_id}-{version}-{platform}.{ext}"
    write_tar(tarball, members, compression)
    seal(out, tarball, manifest, compression)
    return out


def _pax(info: tarfile.TarInfo, **headers: str) -> tarfile.TarInfo:
    """A member whose PAX extended header overrides what its plain header says."""
    info.pax_headers = dict(headers)
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = _info(name, mode=0o777, kind=kind)
    info.linkname = target
    return info


def seal(out: Path, tarball: Path, manifest: Manifest, compression: str = "zstd") -> None:
    """Write the .sha256 and manifest.json for ``tarball`` as pack does."""
    digest = sha256_file(tarball)
    (out / f"{tarball.name}.sha256").write_text(f"{digest}  {tarball.name}\n")
    full = replace(
        manifest,
        tarball=TarballInfo(
            tarball.name, digest, tarball.stat().st_size, "gzip" if compression == "gzip" else "zstd"
        ),
    )
    (out / "manifest.json").write_text(full.to_json())


def hostile_artifact(out: Path, case: str, stack: str = "py3", version: str = "2026.06.06") -> Path:
    """An artifact whose tarball is valid and correctly checksummed but hostile in one way."""
    manifest = base_manifest(stack, version, f"/data0/sw/{stack}")
    good = [
        (_info("conda-meta", mode=0o755, kind=tarfile.DIRTYPE), None),
        (_info(IN_TREE_PATH, len(manifest.to_json())), manifest.to_json().encode()),
    ]
    payload = b"owned\n"
    evil: list[tuple[tarfile.TarInfo, bytes | None]] = {
        "traversal": [(_info("../escaped.txt", len(payload)), payload)],
        "deep-traversal": [(_info("lib/../../escaped.txt", len(payload)), payload)],
        "absolute": [(_info("/tmp/escaped-abs.txt", len(payload)), payload)],
        "symlink-write": [(_link("lib", "/tmp"), None), (_info("lib/escaped.txt", len(payload)), payload)],
        "symlink-out": [(_link("lib", "../.."), None)],
        "symlink-chain": [
            (_link("a", "b/.."), None),
            (_info("b", mode=0o755, kind=tarfile.DIRTYPE), None),
            (_link("c", "a/.."), None),
        ],
        "symlink-dot-trick": [(_link("s", "."), None), (_link("x", "s/.."), None)],
        "hardlink-out": [(_link("passwd", "/etc/passwd", tarfile.LNKTYPE), None)],
        "hardlink-traversal": [(_link("passwd", "../../etc/passwd", tarfile.LNKTYPE), None)],
        "device": [(_info("dev-null", kind=tarfile.CHRTYPE), None)],
        "fifo": [(_info("pipe", kind=tarfile.FIFOTYPE), None)],
        "setuid": [(_info("bin-su", len(payload), 0o4755), payload)],
        "setgid": [(_info("bin-sg", len(payload), 0o2755), payload)],
        "duplicate-over-symlink": [(_link("etc", "/tmp"), None), (_info("etc", len(payload)), payload)],
        "newline-name": [(_info("lib/evil\nname.py", len(payload)), payload)],
        "escape-in-name": [(_info("lib/\x1b[2Jclear.py", len(payload)), payload)],
        "non-utf8-name": [(_info("lib/bad-\udcff-name.py", len(payload)), payload)],
        "newline-link-target": [(_link("lib", "ok\nthere"), None)],
        "pax-path-override": [(_pax(_info("harmless.txt", len(payload)), path="../escaped.txt"), payload)],
        "pax-linkpath-override": [(_pax(_link("lib", "ok"), linkpath="/tmp"), None)],
        "gnu-longname-traversal": [(_info("../" * 40 + "escaped-long.txt", len(payload)), payload)],
        "gnu-longlink-absolute": [(_link("lib", "/" + "x" * 200), None)],
        "root-symlink": [(_link(".", "/tmp"), None)],
        "root-file": [(_info("./", len(payload)), payload)],
        "huge-size": [(_info("share/huge.bin", 1 << 50), None)],
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
