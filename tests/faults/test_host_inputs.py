"""Broken and hostile inputs other than archive members: empty and non-tar tarballs, manifests of the
wrong shape, bad names and versions, release files, OCI references and state files.

Each one, run against a host with a version live, ends in exit 11 and one error line, with no
traceback; the live version, the staging directory and the ramdisk are left as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.host import make_artifact, seal, swstack_argv

from swstack.manifest import Manifest  # noqa: E402


def _tarball(art: Path) -> Path:
    return next(art.glob("*.tar.zst"))


def _reseal_with(art: Path, data: bytes) -> None:
    tarball = _tarball(art)
    tarball.write_bytes(data)
    seal(art, tarball, Manifest.load(art / "manifest.json"))


def _edit_manifest(art: Path, **changes: object) -> None:
    raw = json.loads((art / "manifest.json").read_text())
    raw.update(changes)
    (art / "manifest.json").write_text(json.dumps(raw))


def empty_tarball(art: Path, tmp: Path) -> list[str]:
    _reseal_with(art, b"")
    return [str(art)]


def not_a_tar(art: Path, tmp: Path) -> list[str]:
    _reseal_with(art, os.urandom(4096))
    return [str(art)]


def zstd_of_garbage(art: Path, tmp: Path) -> list[str]:
    import zstandard

    _reseal_with(art, zstandard.ZstdCompressor().compress(os.urandom(10_000)))
    return [str(art)]


def manifest_not_json(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_text("{not json")
    return [str(art)]


def manifest_not_utf8(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_bytes(b'{"stack": "\xff\xfe"}')
    return [str(art)]


def manifest_list(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_text("[1, 2]")
    return [str(art)]


def version_is_a_number(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version=20260101)
    return [str(art)]


def version_with_slash(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version="../../etc")
    return [str(art)]


def version_with_newline(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version="2026.01.02\nswstack: all good")
    return [str(art)]


def stack_reserved(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, stack="tmpfs")
    return [str(art)]


def prefix_relative(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, prefix="sw/py3")
    return [str(art)]


def prefix_root(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, prefix="/")
    return [str(art)]


def packages_wrong_type(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, packages={"numpy": "1"})
    return [str(art)]


def tarball_name_escapes(art: Path, tmp: Path) -> list[str]:
    raw = json.loads((art / "manifest.json").read_text())
    raw["tarball"]["name"] = "../../../../etc/passwd"
    (art / "manifest.json").write_text(json.dumps(raw))
    return [str(art)]


def huge_total_size(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, total_size=1 << 60)
    return [str(art)]


def release_bad_toml(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_text("[stacks\npy3 = ")
    return ["--release", str(tmp / "release.toml")]


def release_wrong_shape(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.json").write_text(json.dumps({"stacks": ["py3"]}))
    return ["--release", str(tmp / "release.json")]


def release_missing(art: Path, tmp: Path) -> list[str]:
    return ["--release", str(tmp / "no-such-release.toml")]


def oci_unreachable(art: Path, tmp: Path) -> list[str]:
    return ["127.0.0.1:9/swstack/py3:2026.01.02"]


def oci_bad_reference(art: Path, tmp: Path) -> list[str]:
    return ["oci://registry.example.org:5000/Py3:bad tag"]


def source_with_newline(art: Path, tmp: Path) -> list[str]:
    return [f"{art}\nswstack: all good"]


def state_corrupt(art: Path, tmp: Path) -> list[str]:
    (tmp / "root" / ".swstack" / "state.json").write_text('{"stacks": {"py3": 5}}')
    return [str(art)]


def _chunked(art: Path, tmp: Path) -> tuple[Path, dict[str, object]]:
    """``art`` packed again by pack's chunked writer (same version); its manifest as raw JSON."""
    from tests.support.host import repack_tree, unpack_artifact

    manifest = unpack_artifact(art, tmp / "tree")
    out = repack_tree(tmp / "tree", manifest, tmp / "chunked", manifest.version, {})
    return out, json.loads((out / "manifest.json").read_text())


def _chunks_edited(art: Path, tmp: Path, edit: Callable[[list[dict[str, object]]], None]) -> list[str]:
    out, raw = _chunked(art, tmp)
    tarball = raw["tarball"]
    assert isinstance(tarball, dict) and len(tarball["chunks"]) > 1
    edit(tarball["chunks"])
    (out / "manifest.json").write_text(json.dumps(raw))
    return [str(out)]


def chunk_table_short_of_the_file(art: Path, tmp: Path) -> list[str]:
    return _chunks_edited(art, tmp, lambda chunks: chunks.pop())


def chunk_table_overlapping(art: Path, tmp: Path) -> list[str]:
    def edit(chunks: list[dict[str, object]]) -> None:
        chunks[1]["offset"] = int(chunks[1]["offset"]) - 16  # type: ignore[call-overload]
        chunks[1]["size"] = int(chunks[1]["size"]) + 16  # type: ignore[call-overload]

    return _chunks_edited(art, tmp, edit)


def chunk_table_past_the_end(art: Path, tmp: Path) -> list[str]:
    def edit(chunks: list[dict[str, object]]) -> None:
        chunks[-1]["size"] = int(chunks[-1]["size"]) + 512  # type: ignore[call-overload]

    return _chunks_edited(art, tmp, edit)


def chunk_with_a_flipped_byte(art: Path, tmp: Path) -> list[str]:
    """One byte of the largest chunk flipped; the whole file's sha256 re-sealed, so only the chunk's
    own sha256 can catch it."""
    from swstack.fsutil import sha256_file

    out, raw = _chunked(art, tmp)
    tarball = raw["tarball"]
    assert isinstance(tarball, dict)
    chunk = max(tarball["chunks"], key=lambda c: c["size"])
    path = out / tarball["name"]
    data = bytearray(path.read_bytes())
    data[chunk["offset"] + chunk["size"] // 2] ^= 0x01
    path.write_bytes(bytes(data))
    tarball["sha256"] = sha256_file(path)
    (out / "manifest.json").write_text(json.dumps(raw))
    (out / f"{path.name}.sha256").write_text(f"{tarball['sha256']}  {path.name}\n")
    return [str(out)]


def chunk_cut_inside_a_member(art: Path, tmp: Path) -> list[str]:
    """Two zstd frames, correctly listed and hashed, but cut in the middle of a member."""
    import hashlib
    import io

    import zstandard

    from swstack.manifest import TarballChunk

    tarball = _tarball(art)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(tarball.read_bytes()), read_across_frames=True).read()
    cut = len(raw) // 2 // 512 * 512 + 100
    frames = [zstandard.ZstdCompressor().compress(part) for part in (raw[:cut], raw[cut:])]
    tarball.write_bytes(b"".join(frames))
    chunks = (
        TarballChunk(0, len(frames[0]), hashlib.sha256(frames[0]).hexdigest()),
        TarballChunk(len(frames[0]), len(frames[1]), hashlib.sha256(frames[1]).hexdigest()),
    )
    seal(art, tarball, Manifest.load(art / "manifest.json"))
    manifest = Manifest.load(art / "manifest.json")
    assert manifest.tarball is not None
    (art / "manifest.json").write_text(replace(manifest, tarball=replace(manifest.tarball, chunks=chunks)).to_json())
    return [str(art)]


CASES: dict[str, Callable[[Path, Path], list[str]]] = {f.__name__: f for f in (
    chunk_table_short_of_the_file, chunk_table_overlapping, chunk_table_past_the_end, chunk_with_a_flipped_byte,
    chunk_cut_inside_a_member,
    empty_tarball, not_a_tar, zstd_of_garbage, manifest_not_json, manifest_not_utf8, manifest_list,
    version_is_a_number, version_with_slash, version_with_newline, stack_reserved, prefix_relative,
    prefix_root, packages_wrong_type, tarball_name_escapes, huge_total_size, release_bad_toml,
    release_wrong_shape, release_missing, oci_unreachable, oci_bad_reference, source_with_newline,
    state_corrupt,
)}


MESSAGES = {  # what the one line says: the cause, not just any error
    "chunk_cut_inside_a_member": "continues past the end of its chunk",
    "chunk_table_overlapping": "tarball.chunks[1]",
    "chunk_table_past_the_end": "tarball.chunks: they cover",
    "chunk_table_short_of_the_file": "tarball.chunks: they cover",
    "chunk_with_a_flipped_byte": "sha256 mismatch",
    "empty_tarball": "the tarball has no conda-meta/swstack-manifest.json",
    "huge_total_size": "not enough space on the disk + ramdisk",
    "manifest_list": "a manifest is a JSON object",
    "manifest_not_json": "manifest.json: not a swstack manifest",
    "manifest_not_utf8": "can't decode byte 0xff",
    "not_a_tar": "in a tar header); its sha256 matches, so it was packed broken",
    "oci_bad_reference": "bad tag 'bad tag'",
    "oci_unreachable": "the registry is unreachable or failing",
    "packages_wrong_type": "packages: expected a list",
    "prefix_relative": "manifest prefix 'sw/py3' is not an absolute path",
    "prefix_root": "prefix '/': a tree is built for a directory under the live path",
    "release_bad_toml": "release.toml: not valid TOML",
    "release_missing": "cannot read the release manifest",
    "release_wrong_shape": "expected a [stacks] table",
    "source_with_newline": "not a source (expected a path, an http(s) URL or an OCI reference)",
    "stack_reserved": "invalid stack name 'tmpfs'",
    "state_corrupt": "state.json: not a swstack state file (stacks.py3: expected an object, got 5)",
    "tarball_name_escapes": "tarball.name '../../../../etc/passwd' is not a file name beside manifest.json",
    "version_is_a_number": "version: expected str, got int",
    "version_with_newline": "invalid version name '2026.01.02\\nswstack: all good'",
    "version_with_slash": "invalid version name '../../etc'",
    "zstd_of_garbage": "in a tar header); its sha256 matches, so it was packed broken",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_ends_in_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    good = make_artifact(tmp_path / "good", version="2026.01.01")
    assert subprocess.run(swstack_argv("activate", str(good), "--root", str(root))).returncode == 0
    ramdisk = sorted(os.listdir(root / "sw.tmpfs"))
    bad = make_artifact(tmp_path / "bad", version="2026.01.02")
    args = CASES[case](bad, tmp_path)
    res = subprocess.run(
        swstack_argv("activate", *args, "--root", str(root)),
        capture_output=True, text=True, timeout=120, env={**os.environ, "SWSTACK_REGISTRY_RETRIES": "0"},
    )
    assert res.returncode == 11, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("swstack activate: error: ")]
    assert len(errors) == 1, res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line.lower()]) == 1, res.stderr
    assert MESSAGES[case] in errors[0], errors[0]
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    assert sorted(os.listdir(root / "sw.tmpfs")) == ramdisk
    assert not (root / ".swstack" / "staging").exists() and not (root / "sw.2026.01.02").exists()
