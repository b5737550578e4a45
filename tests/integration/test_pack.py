"""Pack real conda prefixes: reproducibility, relocation with conda-unpack, manifest, atomicity.

The small prefix is installed from two packages built here with rattler-build: a noarch
package with a text file holding the prefix, and a C program with the prefix compiled
in. The python + numpy prefix comes from the offline channel when it has been built.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

from swstack import pack, proc
from swstack.errors import ExternalCommandError, PackError
from swstack.manifest import IN_TREE_PATH, Manifest
from swstack.pack import ArtifactInfo, PackOptions
from swstack.site import Site

SDE = 1_700_000_000
REPO = Path(__file__).resolve().parents[2]

DATA_RECIPE = """\
package: {name: hello-data, version: "1.0"}
build:
  number: 0
  noarch: generic
  script:
    - mkdir -p $PREFIX/share/hello $PREFIX/bin
    - echo "hello-data installed at $PREFIX" > $PREFIX/share/hello/data.txt
    - printf '#!/bin/sh\\necho "%s"\\n' "$PREFIX" > $PREFIX/bin/hello-where
    - chmod 755 $PREFIX/bin/hello-where
"""

HELLO_C = r"""#include <stdio.h>
int main(void) {
    char buf[512];
    size_t n;
    FILE *f;
    printf("prefix=%s\n", PREFIX);
    f = fopen(PREFIX "/share/hello/data.txt", "r");
    if (!f) { perror("open"); return 1; }
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    printf("%s", buf);
    return 0;
}
"""

BIN_RECIPE = """\
package: {name: hello-bin, version: "1.0"}
build:
  number: 0
  script:
    - mkdir -p $PREFIX/bin
    - gcc -O2 -DPREFIX="\\"$PREFIX\\"" -o $PREFIX/bin/hello $RECIPE_DIR/hello.c
    - ln -s hello $PREFIX/bin/hello-link
requirements:
  run: [hello-data]
"""


def _install(channel: Path, specs: list[str], prefix: Path, cache: Path) -> None:
    import rattler

    solve = rattler.solve([rattler.Channel(channel.as_uri())], specs, platforms=["linux-64", "noarch"])
    records = asyncio.run(solve)
    asyncio.run(rattler.install(records, prefix, cache_dir=cache, show_progress=False))


@pytest.fixture(scope="session")
def hello_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import rattler_build

    root = tmp_path_factory.mktemp("hello")
    for name, text in (("hello-data", DATA_RECIPE), ("hello-bin", BIN_RECIPE)):
        (root / name).mkdir()
        (root / name / "recipe.yaml").write_text(text)
    (root / "hello-bin" / "hello.c").write_text(HELLO_C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rattler_build.build_recipes([root / "hello-data" / "recipe.yaml"], output_dir=root / "channel",
                                    test="skip")  # fmt: skip
        channel = root / "channel"
        bin_recipe = root / "hello-bin" / "recipe.yaml"
        rattler_build.build_recipes([bin_recipe], output_dir=channel, channel=[str(channel)], test="skip")
    prefix = root / "env"
    _install(root / "channel", ["hello-bin"], prefix, root / "pkgs")
    return prefix


def _options(**kw: object) -> PackOptions:
    return PackOptions(source_date_epoch=SDE, **kw)  # type: ignore[arg-type]


INFO = ArtifactInfo(
    stack="hello",
    variant="dev",
    version="2026.02.03",
    lockfile_sha256="1" * 64,
    stackfile_sha256="2" * 64,
    git_commit="abc123",
    build_time="2026-02-03T10:00:00Z",
    tools={"rattler": "0.28"},
    kernels=("hello",),
)


def _members(tarball: Path) -> list[tarfile.TarInfo]:
    with _open_tar(tarball) as tar:
        return list(tar)


def _open_tar(tarball: Path) -> tarfile.TarFile:
    raw = tarball.read_bytes()
    if tarball.name.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    else:
        raw = gzip.decompress(raw)
    return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")


def test_two_packs_are_byte_identical_whatever_the_thread_count(hello_prefix: Path, tmp_path: Path) -> None:
    one = pack.pack_prefix(hello_prefix, tmp_path / "a", options=_options(threads=1), info=INFO)
    two = pack.pack_prefix(hello_prefix, tmp_path / "b", options=_options(threads=2), info=INFO)
    assert one.tarball.read_bytes() == two.tarball.read_bytes()
    assert one.manifest_path.read_text() == two.manifest_path.read_text()


def test_layout_checksum_and_manifest(hello_prefix: Path, tmp_path: Path) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    version_dir = tmp_path / "hello-dev" / "2026.02.03"
    assert result.tarball == version_dir / "hello-dev-2026.02.03-linux-64.tar.zst"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "hello-dev-2026.02.03-linux-64.tar.zst",
        "hello-dev-2026.02.03-linux-64.tar.zst.sha256",
        "manifest.json",
    ]
    proc.run(["sha256sum", "-c", result.checksum.name], cwd=version_dir, what="sha256sum -c")

    manifest = Manifest.load(result.manifest_path)
    assert manifest == result.manifest
    assert manifest.tarball is not None
    assert manifest.tarball.sha256 == hashlib.sha256(result.tarball.read_bytes()).hexdigest()
    assert manifest.tarball.size == result.tarball.stat().st_size
    assert (manifest.stack, manifest.variant, manifest.version, manifest.platform) == (
        "hello", "dev", "2026.02.03", "linux-64"
    )  # fmt: skip
    assert manifest.prefix == str(hello_prefix)
    assert (manifest.lockfile_sha256, manifest.stackfile_sha256) == ("1" * 64, "2" * 64)
    assert (manifest.git_commit, manifest.build_time) == ("abc123", "2026-02-03T10:00:00Z")
    assert manifest.kernels == ("hello",)
    assert manifest.tools["rattler"] == "0.28" and manifest.tools["conda-pack"] == "0.9.2"
    by_name = {p.name: p for p in manifest.packages}
    assert sorted(by_name) == ["hello-bin", "hello-data"]
    record = json.loads(next((hello_prefix / "conda-meta").glob("hello-bin-*.json")).read_text())
    assert (by_name["hello-bin"].sha256, by_name["hello-bin"].size) == (record["sha256"], record["size"])
    assert by_name["hello-bin"].channel.startswith("file://")

    members = _members(result.tarball)
    files = [m for m in members if not m.isdir() and m.name != IN_TREE_PATH]
    assert manifest.file_count == len(files)
    assert manifest.total_size == sum(m.size for m in files)
    with _open_tar(result.tarball) as tar:
        in_tree = tar.extractfile(IN_TREE_PATH)
        assert in_tree is not None
        # dated at the epoch (reproducible); the manifest beside the tarball has the build time
        expected = replace(manifest.without_tarball(), build_time="2023-11-14T22:13:20Z")
        assert Manifest.from_json(in_tree.read().decode()) == expected


def test_members_are_sorted_and_normalised(hello_prefix: Path, tmp_path: Path) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path, options=_options(owner="899:898"), info=INFO)
    members = _members(result.tarball)
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {"bin/conda-unpack", "bin/activate", "bin/hello", "bin/hello-link", IN_TREE_PATH} <= set(names)
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (899, 898, "", "")
        assert m.mtime <= SDE
        assert m.mode in (0o644, 0o755, 0o777)
        assert not m.pax_headers or set(m.pax_headers) <= {"path", "linkpath", "size"}
    by_name = {m.name: m for m in members}
    assert by_name["bin/hello"].mode == 0o755 and by_name["bin/conda-unpack"].mode == 0o755
    assert by_name["bin/hello-link"].issym() and by_name["bin/hello-link"].linkname == "hello"
    assert by_name["bin"].isdir()
    assert Manifest.load(result.manifest_path).owner == "899:898"


def test_conda_packs_own_scripts_are_dated_at_the_epoch(hello_prefix: Path, tmp_path: Path) -> None:
    """Copied from conda-pack's installation, their mtime is when it was installed on this
    machine: with an epoch after that, clamping alone would let it into the tarball."""
    import conda_pack

    later = int(Path(conda_pack.__file__).parent.joinpath("scripts/posix/activate").stat().st_mtime) + 86_400
    result = pack.pack_prefix(hello_prefix, tmp_path, options=PackOptions(source_date_epoch=later), info=INFO)
    by_name = {m.name: m for m in _members(result.tarball)}
    assert [by_name[n].mtime for n in ("bin/activate", "bin/deactivate", "bin/activate.fish")] == [later] * 3


def _unpack_and_run(tarball: Path, dest: Path) -> str:
    dest.mkdir(parents=True)
    flag = "--zstd" if tarball.name.endswith(".zst") else "--gzip"
    proc.run(["tar", flag, "-xf", tarball, "-C", dest], what="tar -x")
    proc.run([dest / "bin" / "conda-unpack"], what="conda-unpack")
    return proc.output([dest / "bin" / "hello"], what="hello")


def _short_dest(tmp_path: Path, name: str) -> Path:
    """A relocation target no longer than the packed prefix: binaries carry the production
    prefix itself, so conda-unpack can only put a prefix of at most its length in them."""
    import secrets
    import shutil

    dest = Path("/tmp") / f"r{secrets.token_hex(2)}" / name
    shutil.rmtree(dest.parent, ignore_errors=True)
    return dest


def test_unpacks_elsewhere_and_runs_after_conda_unpack(hello_prefix: Path, tmp_path: Path) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path / "out", options=_options(), info=INFO)
    dest = _short_dest(tmp_path, "else")
    assert len(str(dest)) <= len(str(hello_prefix))
    out = _unpack_and_run(result.tarball, dest)
    assert out.splitlines() == [f"prefix={dest}", f"hello-data installed at {dest}"]
    assert proc.output([dest / "bin" / "hello-where"], what="hello-where") == str(dest)
    assert proc.output([dest / "bin" / "hello-link"]).splitlines()[0] == f"prefix={dest}"


def test_tarball_holds_the_installed_tree_and_refuses_a_longer_binary_prefix(
    hello_prefix: Path, tmp_path: Path
) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path / "out", options=_options(), info=INFO)
    members = {m.name: m for m in _members(result.tarball)}
    with _open_tar(result.tarball) as tar:
        data = tar.extractfile(members["bin/hello-where"]).read()  # type: ignore[union-attr]
    assert str(hello_prefix).encode() in data  # the production prefix, not a placeholder
    with pytest.raises(ExternalCommandError, match="negative padding"):
        _unpack_and_run(result.tarball, tmp_path / ("x" * 40))


def test_gzip_variant_is_reproducible_and_relocates(hello_prefix: Path, tmp_path: Path) -> None:
    opts = _options(compression="gzip")
    one = pack.pack_prefix(hello_prefix, tmp_path / "a", options=opts, info=INFO)
    two = pack.pack_prefix(hello_prefix, tmp_path / "b", options=opts, info=INFO)
    assert one.tarball.name.endswith("-linux-64.tar.gz")
    assert one.tarball.read_bytes() == two.tarball.read_bytes()
    header = one.tarball.read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08  # mtime 0, no file name
    assert Manifest.load(one.manifest_path).tarball.compression == "gzip"  # type: ignore[union-attr]
    dest = _short_dest(tmp_path, "gz")
    assert _unpack_and_run(one.tarball, dest).splitlines()[0] == f"prefix={dest}"


def _disk_full_after_first_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = pack._HashingFile.write

    def write(self: pack._HashingFile, data: bytes) -> int:
        if self.size:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(pack._HashingFile, "write", write)


def _read_error_in_a_compressing_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    real_copy = pack._copy_file
    calls = iter(range(1_000_000))

    def copy(source: str, size: int, sink: pack._TarSink) -> None:
        if next(calls) == 3:
            raise OSError(28, "No space left on device")
        real_copy(source, size, sink)

    monkeypatch.setattr(pack, "_copy_file", copy)


@pytest.mark.parametrize("fault", [_disk_full_after_first_write, _read_error_in_a_compressing_thread])
@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_failure_mid_pack_leaves_nothing_that_looks_finished(
    hello_prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Any, compression: str
) -> None:
    fault(monkeypatch)
    with pytest.raises(PackError, match="No space left"):
        pack.pack_prefix(hello_prefix, tmp_path, options=_options(compression=compression), info=INFO)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_finished_version_is_not_replaced_unless_asked(hello_prefix: Path, tmp_path: Path) -> None:
    first = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    with pytest.raises(PackError, match="already holds a finished artifact"):
        pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    again = pack.pack_prefix(hello_prefix, tmp_path, options=_options(overwrite=True), info=INFO)
    assert again.manifest.tarball == first.manifest.tarball


def test_default_version_counts_builds_of_the_day(hello_prefix: Path, tmp_path: Path) -> None:
    info = ArtifactInfo(stack="hello")
    first = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=info)
    second = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=info)
    assert second.manifest.version == first.manifest.version + ".1"
    assert second.tarball.parent.parent == tmp_path / "hello"


def test_cli_exits_with_the_pack_error_code(hello_prefix: Path, tmp_path: Path) -> None:
    argv = ["--prefix", str(hello_prefix), "--out", str(tmp_path), "--stack", "hello", "--version", "1",
            "--source-date-epoch", str(SDE)]  # fmt: skip
    assert pack.main(argv) == 0
    assert (tmp_path / "hello" / "1" / "manifest.json").is_file()
    assert pack.main(argv) == PackError.exit_code
    assert pack.main(["--prefix", str(tmp_path), "--out", str(tmp_path), "--stack", "x",
                      "--source-date-epoch", "1"]) == PackError.exit_code  # fmt: skip


def _without_package_cache(hello_prefix: Path, tmp_path: Path) -> Path:
    """A copy of the prefix whose package records point at package-cache entries that are gone."""
    import shutil

    prefix = tmp_path / "copy"
    shutil.copytree(hello_prefix, prefix, symlinks=True)
    for record in (prefix / "conda-meta").glob("*.json"):
        data = json.loads(record.read_text())
        data["link"]["source"] = str(tmp_path / "gone" / record.stem)
        record.write_text(json.dumps(data))
    return prefix


def test_missing_package_cache_is_refused(hello_prefix: Path, tmp_path: Path) -> None:
    prefix = _without_package_cache(hello_prefix, tmp_path)
    with pytest.raises(PackError, match="package cache"):
        pack.pack_prefix(prefix, tmp_path / "out", options=_options(), info=INFO)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


@pytest.mark.slow
def test_python_numpy_prefix_relocates(tmp_path: Path, offline_site: Site) -> None:
    prefix = tmp_path / "env"
    _install(offline_site.cache / "offline-channel", ["python 3.11.*", "numpy"], prefix, tmp_path / "pkgs")
    one = pack.pack_prefix(prefix, tmp_path / "a", options=_options(), info=INFO)
    two = pack.pack_prefix(prefix, tmp_path / "b", options=_options(), info=INFO)
    assert one.tarball.read_bytes() == two.tarball.read_bytes()
    assert {"python", "numpy"} <= {p.name for p in one.manifest.packages}
    dest = tmp_path / "moved"  # no longer than the packed prefix (binaries keep their padding)
    dest.mkdir(parents=True)
    proc.run(["tar", "--zstd", "-xf", one.tarball, "-C", dest], what="tar -x")
    proc.run([dest / "bin" / "python", dest / "bin" / "conda-unpack"], what="conda-unpack")
    out = proc.output(
        [dest / "bin" / "python", "-c", "import sys, numpy; print(sys.prefix); print(numpy.__file__)"],
        env={"PATH": "/usr/bin:/bin"},
    )
    lines = out.splitlines()
    assert lines[0] == str(dest)
    assert lines[1].startswith(str(dest) + "/")


def _private_root_argv(build_dir: Path) -> list[str]:
    """bwrap argv giving a root where /data0/sw is ``build_dir`` (the machine's /data0 untouched)."""
    argv = ["bwrap"]
    for top in sorted(Path("/").iterdir()):
        if top.name in ("data0", "proc", "dev", "tmp"):
            continue
        if top.is_symlink():
            argv += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            argv += ["--bind", str(top), str(top)]
    return argv + ["--proc", "/proc", "--dev", "/dev", "--bind", "/tmp", "/tmp", "--dir", "/data0",
                   "--bind", str(build_dir), "/data0/sw"]  # fmt: skip


INSTALL_AND_PACK = """
import asyncio, sys
from pathlib import Path
import rattler
from swstack import pack
channel, cache, out = (Path(a) for a in sys.argv[1:4])
records = asyncio.run(rattler.solve([rattler.Channel(channel.as_uri())], ["hello-bin"],
                                    platforms=["linux-64", "noarch"]))
asyncio.run(rattler.install(records, "/data0/sw/hello", cache_dir=cache, show_progress=False))
pack.pack_prefix(Path("/data0/sw/hello"), out, options=pack.PackOptions(1700000000),
                 info=pack.ArtifactInfo(stack="hello", version="1"))
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_packs_at_the_production_path_in_a_private_root(hello_prefix: Path, tmp_path: Path) -> None:
    build_dir, out = tmp_path / "sw", tmp_path / "out"
    build_dir.mkdir()
    channel = hello_prefix.parent / "channel"
    argv = [*_private_root_argv(build_dir), sys.executable, "-c", INSTALL_AND_PACK,
            str(channel), str(tmp_path / "pkgs"), str(out)]  # fmt: skip
    proc.run(argv, what="install and pack in a private root")
    manifest = Manifest.load(out / "hello" / "1" / "manifest.json")
    assert manifest.prefix == "/data0/sw/hello"
    tarball = out / "hello" / "1" / manifest.tarball.name  # type: ignore[union-attr]
    # Untarred at the production path the tree works as it is, without conda-unpack.
    host_sw = tmp_path / "host-sw"
    (host_sw / "hello").mkdir(parents=True)
    proc.run(["tar", "--zstd", "-xf", tarball, "-C", host_sw / "hello"], what="tar -x")
    lines = proc.output([*_private_root_argv(host_sw), "/data0/sw/hello/bin/hello"], what="hello").splitlines()
    assert lines == ["prefix=/data0/sw/hello", "hello-data installed at /data0/sw/hello"]
    # Elsewhere (no longer a path than the production one), conda-unpack relocates it.
    dest = _short_dest(tmp_path, "h")
    lines = _unpack_and_run(tarball, dest).splitlines()
    assert lines == [f"prefix={dest}", f"hello-data installed at {dest}"]


def _records_through_the_packer(prefix: Path, sde: int) -> list[pack.Entry]:
    """The entries as conda-pack's Packer records them when it sees every file (the slow way)."""
    from unittest import mock

    import conda_pack.core
    from conda_pack.core import CondaEnv, Packer

    archive = pack._RecordingArchive(str(Path(conda_pack.core.__file__).parent))

    class RecordingPacker(Packer):  # type: ignore[misc]
        def _write_text_file(self, fpath: str, ftext: str, executable: bool = False) -> None:
            archive.add_text(fpath, ftext, executable)

    env = CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
    packer = RecordingPacker(env.prefix, archive)
    with mock.patch.object(conda_pack.core, "rewrite_shebang", pack._keep_shebang):
        for f in env.files:
            packer.add(pack._from_installed_tree(f, env.prefix))
        packer.finish()
    return pack.plan_entries(archive.entries, sde)


def test_plain_files_skip_the_packer_and_give_the_same_entries(tmp_path: Path, offline_site: Site) -> None:
    """_pack_records records files of no prefix straight from lstat: the same plan as the Packer's."""
    prefix = tmp_path / "env"
    _install(offline_site.cache / "offline-channel", ["python 3.11.*", "numpy"], prefix, tmp_path / "pkgs")
    spec = prefix / "share/jupyter/kernels/k/kernel.json"  # written after linking, holding the prefix
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [f"{prefix}/bin/python"]}))
    sde = 1_700_000_000
    fast = pack.plan_entries(pack._pack_records(prefix, True, sde), sde)
    assert fast == _records_through_the_packer(prefix, sde)
    # The entries read before the scan (for the guess) stand for the lstat of the same files.
    installed: dict[str, pack.Entry] = {}
    guess = list(pack.guess_entries(prefix, pack.read_conda_records(prefix), sde, installed))
    read = [e for e in guess if (e.source or "").startswith(f"{prefix}/")]  # not conda-pack's own scripts
    assert len(installed) > 1000 and all(installed[e.name] is e for e in read)
    assert guess == pack.plan_entries(guess, sde)  # in the order the plan takes: sorted, with every parent
    assert pack.plan_entries(pack._pack_records(prefix, True, sde, installed), sde) == fast
    assert len(fast) > 1000 and any(e.name == "bin/conda-unpack" for e in fast)


def _chunk_bytes(tarball: Path, manifest: Manifest) -> list[bytes]:
    assert manifest.tarball is not None
    raw = tarball.read_bytes()
    return [raw[c.offset : c.offset + c.size] for c in manifest.tarball.chunks]


def _members_of_chunk(frame: bytes) -> list[str]:
    """The members a chunk holds, decompressed alone: one zstd frame of whole tar members."""
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame)).read()  # this frame only
    assert len(data) % tarfile.BLOCKSIZE == 0
    names, end = [], 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            names.append(m.name)
            end = m.offset_data + (m.size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
    assert data[end:] == bytes(len(data) - end)  # nothing after the last member but the end blocks
    return names


def test_the_tarball_is_a_table_of_independently_verifiable_chunks(hello_prefix: Path, tmp_path: Path) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    manifest = Manifest.load(result.manifest_path)
    assert manifest.tarball is not None
    chunks = manifest.tarball.chunks
    assert chunks[0].offset == 0 and sum(c.size for c in chunks) == result.tarball.stat().st_size
    frames = _chunk_bytes(result.tarball, manifest)
    assert [hashlib.sha256(f).hexdigest() for f in frames] == [c.sha256 for c in chunks]
    per_chunk = [_members_of_chunk(f) for f in frames]
    assert [n for names in per_chunk for n in names] == [m.name for m in _members(result.tarball)]
    assert ["bin/conda-unpack"] in per_chunk and [IN_TREE_PATH] in per_chunk
    last = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames[-1])).read()
    assert last.endswith(bytes(2 * tarfile.BLOCKSIZE))  # tar's end-of-archive blocks
    # Still one ordinary .tar.zst for the standard tools.
    proc.run(["zstd", "-q", "-t", result.tarball], what="zstd -t")
    dest = tmp_path / "x"
    dest.mkdir()
    proc.run(["tar", "--zstd", "-xf", result.tarball, "-C", dest], what="tar -x")
    assert (dest / "bin" / "hello").is_file() and (dest / IN_TREE_PATH).is_file()


def test_gzip_tarballs_have_no_chunks(hello_prefix: Path, tmp_path: Path) -> None:
    result = pack.pack_prefix(hello_prefix, tmp_path, options=_options(compression="gzip"), info=INFO)
    assert result.manifest.tarball is not None and result.manifest.tarball.chunks == ()


def _synthetic_tree(prefix: Path) -> list[str]:
    """40 packages of 60 files of 2-14 KiB, of random bytes: ~24 MiB, many chunks."""
    import random

    rng = random.Random(7)
    names = []
    for p in range(40):
        for f in range(60):
            rel = f"share/synth/pkg{p:02d}/file{f:02d}.bin"
            path = prefix / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randrange(2048, 14336)))
            names.append(rel)
    return names


def test_a_one_file_change_changes_only_its_chunk_and_the_manifests(hello_prefix: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    shutil.copytree(hello_prefix, prefix, symlinks=True)
    names = _synthetic_tree(prefix)
    one = pack.pack_prefix(prefix, tmp_path / "out", options=_options(), info=replace(INFO, version="1"))
    changed = prefix / names[len(names) // 2]
    changed.write_bytes(bytes(b ^ 0xFF for b in changed.read_bytes()))  # same size, new bytes
    two = pack.pack_prefix(prefix, tmp_path / "out", options=_options(threads=1), info=replace(INFO, version="2"))

    def table(result: pack.PackResult) -> list[tuple[str, list[str]]]:
        frames = _chunk_bytes(result.tarball, result.manifest)
        return [(hashlib.sha256(f).hexdigest(), _members_of_chunk(f)) for f in frames]

    before, after = table(one), table(two)
    assert len(before) > 6
    assert [names for _, names in before] == [names for _, names in after]  # the same boundaries
    differing = [names for (a, names), (b, _) in zip(before, after, strict=True) if a != b]
    assert sorted(differing) == sorted([[IN_TREE_PATH], next(n for _, n in before if names[len(names) // 2] in n)])


def test_frames_compressed_on_a_guess_are_the_frames_compressed_after_the_scan(
    tmp_path: Path, offline_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks compressed while conda-pack scans are taken only when equal to the real ones."""
    prefix = tmp_path / "env"
    _install(offline_site.cache / "offline-channel", ["python 3.11.*", "numpy"], prefix, tmp_path / "pkgs")
    taken: list[int] = []
    totals: list[int] = []
    real_write_chunks = pack._write_chunks

    def counting(out, chunks, compressor, guessed, window, advance):  # type: ignore[no-untyped-def]
        taken.append(sum(1 for c in chunks if c in guessed))
        totals.append(len(chunks))
        return real_write_chunks(out, chunks, compressor, guessed, window, advance)

    monkeypatch.setattr(pack, "_write_chunks", counting)
    guessing = pack.pack_prefix(prefix, tmp_path / "a", options=_options(), info=INFO)
    monkeypatch.setattr(pack, "SPECULATION_PER_THREAD", 0)
    after_scan = pack.pack_prefix(prefix, tmp_path / "b", options=_options(), info=INFO)
    # Most are guessed right: not those holding what conda-pack writes itself (package
    # records, conda-unpack), the in-tree manifest, the end, or unmanaged files.
    assert taken[0] >= 0.75 * totals[0] and taken[1] == 0
    assert guessing.tarball.read_bytes() == after_scan.tarball.read_bytes()
    assert guessing.manifest.tarball == after_scan.manifest.tarball


def test_a_bug_in_the_scan_process_keeps_its_traceback(
    hello_prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> tuple[list[tuple[str, str]], list[pack.Entry]]:
        raise KeyError("link")

    monkeypatch.setattr(pack, "_scan_prefix", broken)  # the forked child inherits it
    with pytest.raises(RuntimeError, match=r"(?s)in its process:.*Traceback.*KeyError: 'link'"):
        pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("fails", ["tarball", "manifest"])
def test_a_full_disk_is_one_line_saying_to_free_space_and_leaves_no_finished_file(
    hello_prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """The disk fills up while the tarball is written, or just after it, at the manifest (a
    fault: the real write is replaced by one that raises ENOSPC, as a full file system does)."""
    import errno

    full = OSError(errno.ENOSPC, "No space left on device")
    if fails == "tarball":
        def sync(fd: int) -> None:
            raise full
        monkeypatch.setattr(pack.os, "fsync", sync)
    else:
        real = pack.atomic_write_text

        def write(path: Path, text: str) -> None:
            if path.name == "manifest.json":
                raise full
            real(path, text)
        monkeypatch.setattr(pack, "atomic_write_text", write)
    with pytest.raises(PackError) as caught:
        pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO)
    message = str(caught.value)
    assert "No space left on device; free space on that file system" in message and "\n" not in message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no tarball without its manifest


def _pack_cli(*args: str | Path, cwd: Path | None = None) -> tuple[int, list[str]]:
    """``python -m swstack.pack`` in a process of its own: its exit code and its stderr's lines
    but the step and progress lines."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "swstack.pack", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, check=False)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("==> ", "packing "))]
    return done.returncode, lines


def test_a_missing_package_cache_is_one_line_the_build_can_report(hello_prefix: Path, tmp_path: Path) -> None:
    """conda-pack's refusal is paragraphs and a list; the build reports pack's error by its last
    line, ``error: ...`` (``build.own_errors``), so it must be that one line."""
    prefix = _without_package_cache(hello_prefix, tmp_path)
    for fmt in ("tar.zst", "tar.gz"):
        code, lines = _pack_cli("--prefix", prefix, "--out", tmp_path / "out", "--stack", "hello", "--version", "1",
                                "--source-date-epoch", SDE, "--format", fmt)  # fmt: skip
        assert code == PackError.exit_code
        assert len(lines) == 1 and lines[0].startswith("error: conda-pack cannot pack"), lines
        assert "hello-bin=" in lines[0] and "hello-data=" in lines[0] and "package cache" in lines[0]
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--threads", "-1"], "threads -1"),
        (["--owner", "1:99999999999999999999"], "user and group ids go from 0 to 4294967294"),
        (["--owner", "4294967295:0"], "user and group ids"),
        (["--source-date-epoch", "99999999999999"], "give epoch seconds from 0 to"),
        (["--source-date-epoch", "-1"], "give epoch seconds from 0 to"),
    ],
)
def test_a_bad_option_is_one_line_and_writes_nothing(
    hello_prefix: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    """Not a traceback (an epoch past year 9999), and not a tarball that tar complains about
    for every member (an id past 32 bits) or that carries PAX mtime records (a negative epoch)."""
    code, lines = _pack_cli("--prefix", hello_prefix, "--out", tmp_path, "--stack", "hello", "--version", "1",
                            "--source-date-epoch", SDE, *args)  # fmt: skip
    assert code == PackError.exit_code, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def _pack_on_a_small_disk(prefix: Path, size: int) -> tuple[int, list[str], list[str]]:
    """Pack onto a tmpfs of ``size`` bytes (a private mount, gone after): the exit code, the
    error lines, and the files left on that disk."""
    script = ('"$@"; code=$?; cd /mnt && find . -type f | sort; exit $code')
    argv = ["bwrap", "--dev-bind", "/", "/", "--size", str(size), "--tmpfs", "/mnt", "--", "sh", "-c", script, "sh",
            sys.executable, "-m", "swstack.pack", "--prefix", str(prefix), "--out", "/mnt/a", "--stack", "hello",
            "--source-date-epoch", str(SDE), "--quiet"]  # fmt: skip
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    return done.returncode, errors, done.stdout.split()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
@pytest.mark.parametrize("fails_at", [".sha256", "manifest.json"])
def test_a_disk_full_after_the_tarball_leaves_no_tarball(hello_prefix: Path, tmp_path: Path, fails_at: str) -> None:
    """A real full disk (tmpfs), once the tarball fits: the tarball must not stay behind, taking the
    space the message asks to free (and a next run of the default version writes another beside it)."""
    size = pack.pack_prefix(hello_prefix, tmp_path, options=_options(), info=INFO).tarball.stat().st_size
    pages = -(-size // 4096) + (1 if fails_at == "manifest.json" else 0)  # tmpfs counts whole pages
    code, errors, left = _pack_on_a_small_disk(hello_prefix, pages * 4096)
    assert code == PackError.exit_code
    assert len(errors) == 1 and f"{fails_at} failed" in errors[0] and "No space left on device" in errors[0], errors
    assert left == []
