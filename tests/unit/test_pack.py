"""Unit tests for the pure parts of swstack.pack: versions, names, entry planning, package lists."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from datetime import date
from pathlib import Path

import pytest

from swstack import pack
from swstack.errors import PackError
from swstack.pack import Entry, PipLock

SDE = 1_700_000_000


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], "2026.02.03"),
        (["2026.02.02", "2026.02.02.1"], "2026.02.03"),
        (["2026.02.03"], "2026.02.03.1"),
        (["2026.02.03", "2026.02.03.1", "2026.02.03.7"], "2026.02.03.8"),
        (["2026.02.03.2"], "2026.02.03.3"),
        (["2026.02.03-rc", "2026.02.030"], "2026.02.03"),
    ],
)
def test_next_version(existing: list[str], expected: str) -> None:
    assert pack.next_version(existing, date(2026, 2, 3)) == expected


def test_tarball_name() -> None:
    name = pack.tarball_name("py3-dev", "2026.02.03", "linux-64", "zstd")
    assert name == "py3-dev-2026.02.03-linux-64.tar.zst"
    assert pack.tarball_name("py3", "2026.02.03.1", "linux-64", "gzip") == "py3-2026.02.03.1-linux-64.tar.gz"


def test_parse_owner() -> None:
    assert pack.parse_owner(None) == (0, 0)
    assert pack.parse_owner("899:900") == (899, 900)
    with pytest.raises(PackError, match="uid:gid"):
        pack.parse_owner("antares")
    assert pack.parse_owner("4294967294:0") == (4294967294, 0)
    with pytest.raises(PackError, match="ids go from 0 to 4294967294"):
        pack.parse_owner("0:4294967295")  # (gid_t)-1: no group at all to chown; tar refuses more


def test_options_out_of_range_are_refused() -> None:
    with pytest.raises(PackError, match="threads -1: give a number of threads, or 0 for every core"):
        pack.PackOptions(SDE, threads=-1).resolved_threads()
    pack.PackOptions(0).check_source_date_epoch()
    pack.PackOptions(pack.MAX_EPOCH).check_source_date_epoch()
    for epoch in (-1, pack.MAX_EPOCH + 1, 10**14):
        with pytest.raises(PackError, match="give epoch seconds from 0 to 8589934591"):
            pack.PackOptions(epoch).check_source_date_epoch()


def test_conda_packs_refusals_become_one_line() -> None:
    import conda_pack.core

    uncached = conda_pack.core._uncached_error.format("- a=1   file:///c/a.conda\n- b=2   file:///c/b.conda")
    assert pack.one_line(uncached) == (
        "Conda-managed packages were found without entries in the package cache. This is usually due to "
        "`conda clean -p` being unaware of symlinked or copied packages. Uncached packages: "
        "a=1 file:///c/a.conda; b=2 file:///c/b.conda"
    )
    missing = pack.one_line(conda_pack.core._missing_files_error.format("- a\n- b"))
    assert "\n" not in missing and "following packages: a; b. This is usually" in missing
    assert pack.one_line("  one line  ") == "one line"


def test_help_explains_every_option_and_the_exit_codes() -> None:
    parser = pack._parser()
    assert all(action.help for action in parser._actions)
    assert parser.epilog is not None and "8 a pack error" in parser.epilog and "2 a command line" in parser.epilog


@pytest.mark.parametrize(
    ("kind", "mode", "expected"),
    [
        ("file", 0o100600, 0o644),
        ("file", 0o100700, 0o755),
        ("file", 0o100644, 0o644),
        ("file", 0o104755, 0o755),  # setuid dropped
        ("dir", 0o40700, 0o755),
        ("symlink", 0o120777, 0o777),
    ],
)
def test_normal_mode_keeps_only_the_exec_bit(kind: pack.EntryKind, mode: int, expected: int) -> None:
    assert pack.normal_mode(kind, mode) == expected


def test_plan_entries_sorts_clamps_and_adds_parents() -> None:
    recorded = [
        Entry("lib/python3.11/site.py", "file", 0o100600, SDE + 500, 10, source="/p/site.py"),
        Entry("bin/python", "symlink", 0o120777, 1.5, linkname="python3.11"),
        Entry("bin/conda-unpack", "file", 0o755, None, 3, data=b"abc"),
        Entry("bin-extra", "file", 0o644, SDE - 10, 1, data=b"x"),
    ]
    planned = pack.plan_entries(recorded, SDE)
    assert [e.name for e in planned] == [
        "bin",
        "bin-extra",
        "bin/conda-unpack",
        "bin/python",
        "lib",
        "lib/python3.11",
        "lib/python3.11/site.py",
    ]
    by_name = {e.name: e for e in planned}
    assert by_name["lib/python3.11/site.py"].mtime == SDE  # newer than the epoch: clamped
    assert by_name["lib/python3.11/site.py"].mode == 0o644
    assert by_name["bin-extra"].mtime == SDE - 10  # older: kept, so shipped .pyc stay valid
    assert by_name["bin/python"].mtime == 1
    assert by_name["bin/conda-unpack"].mtime == SDE  # generated: dated at the epoch
    assert by_name["lib"] == Entry("lib", "dir", 0o755, SDE)


def test_plan_entries_later_record_wins() -> None:
    planned = pack.plan_entries(
        [
            Entry("bin/activate", "file", 0o644, 1, 1, data=b"a"),
            Entry("bin/activate", "file", 0o644, 1, 1, data=b"b"),
        ],
        SDE,
    )
    assert [e.data for e in planned if e.name == "bin/activate"] == [b"b"]


def test_tree_totals_counts_files_and_links_not_dirs() -> None:
    entries = [
        Entry("a", "dir", 0o755, 0),
        Entry("a/f", "file", 0o644, 0, 100),
        Entry("a/l", "symlink", 0o777, 0, linkname="f"),
    ]
    assert pack.tree_totals(entries) == (2, 100)


def test_tar_info_has_nothing_machine_specific() -> None:
    info = pack.tar_info(Entry("bin/x", "file", 0o755, SDE, 5, data=b"12345"), 899, 899)
    assert (info.uid, info.gid, info.uname, info.gname) == (899, 899, "", "")
    assert (info.mode, info.mtime, info.size, info.type) == (0o755, SDE, 5, tarfile.REGTYPE)
    link = pack.tar_info(Entry("bin/python", "symlink", 0o777, SDE, linkname="python3.11"), 0, 0)
    assert (link.type, link.linkname, link.size) == (tarfile.SYMTYPE, "python3.11", 0)


def test_platform_of() -> None:
    assert pack.platform_of(["noarch", "linux-64", "linux-64"]) == "linux-64"
    assert pack.platform_of(["noarch"])  # falls back to this machine
    with pytest.raises(PackError, match="several platforms"):
        pack.platform_of(["linux-64", "linux-aarch64"])


def test_options_defaults() -> None:
    opts = pack.PackOptions(source_date_epoch=SDE)
    assert opts.resolved_level() == pack.DEFAULT_ZSTD_LEVEL
    assert opts.resolved_threads() >= 1
    assert pack.PackOptions(SDE, compression="gzip").resolved_level() == pack.DEFAULT_GZIP_LEVEL


def _record(prefix: Path, name: str, files: list[str], subdir: str = "linux-64") -> None:
    meta = prefix / "conda-meta"
    meta.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "version": "1.0",
        "build": "h0_0",
        "channel": "file:///channel/",
        "sha256": "0" * 64,
        "size": 1234,
        "subdir": subdir,
        "files": files,
    }
    (meta / f"{name}-1.0-h0_0.json").write_text(json.dumps(data))


def _dist_info(prefix: Path, dirname: str, name: str, version: str, installer: str) -> None:
    d = prefix / "lib/python3.11/site-packages" / dirname
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")
    (d / "INSTALLER").write_text(installer + "\n")


def test_package_lists_from_conda_meta_and_dist_info(tmp_path: Path) -> None:
    _record(tmp_path, "zlib", ["lib/libz.so"])
    _record(tmp_path, "numpy", ["lib/python3.11/site-packages/numpy-2.0.dist-info/METADATA"])
    _dist_info(tmp_path, "numpy-2.0.dist-info", "numpy", "2.0", "conda")  # owned by conda
    _dist_info(tmp_path, "Foo_Bar-1.2.dist-info", "Foo_Bar", "1.2", "pip")
    _dist_info(tmp_path, "baz-3.dist-info", "baz", "3", "pip")
    (tmp_path / "conda-meta" / "swstack-manifest.json").write_text("{}")  # a previous pack's

    records = pack.read_conda_records(tmp_path)
    assert [r.entry.name for r in records] == ["numpy", "zlib"]
    assert records[1].entry == pack.PackageEntry("zlib", "1.0", "h0_0", "file:///channel/", "0" * 64, 1234)
    owned = {f for r in records for f in r.files}
    locks = {"foo-bar": PipLock("https://files/foo_bar-1.2.whl", "f" * 64, 99)}
    pips = pack.read_pip_packages(tmp_path, owned, locks)
    assert [(p.name, p.version, p.manager) for p in pips] == [("baz", "3", "pip"), ("Foo_Bar", "1.2", "pip")]
    assert (pips[1].channel, pips[1].sha256, pips[1].size) == ("https://files/foo_bar-1.2.whl", "f" * 64, 99)
    assert (pips[0].channel, pips[0].sha256) == ("", "")


def test_unreadable_record_is_a_pack_error(tmp_path: Path) -> None:
    (tmp_path / "conda-meta").mkdir()
    (tmp_path / "conda-meta" / "broken-1-0.json").write_text("{not json")
    with pytest.raises(PackError, match="broken-1-0.json"):
        pack.read_conda_records(tmp_path)


def test_cli_options(tmp_path: Path) -> None:
    locks = tmp_path / "pip.json"
    locks.write_text(json.dumps({"Foo.Bar": {"url": "u", "sha256": "s"}}))
    args = pack._parser().parse_args(
        ["--prefix", "/data0/sw/py3", "--out", "artifacts", "--stack", "py3", "--format", "tar.gz",
         "--source-date-epoch", str(SDE), "--owner", "899:899", "--tool", "rattler=0.28",
         "--pip-locks", str(locks), "--kernel", "python3"]
    )  # fmt: skip
    options, info = pack.options_from_args(args)
    assert options == pack.PackOptions(SDE, compression="gzip", owner="899:899")
    assert info.pip_locks == {"foo-bar": PipLock("u", "s")}
    assert dict(info.tools) == {"rattler": "0.28"}
    assert info.kernels == ("python3",)


def test_cli_needs_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    args = pack._parser().parse_args(["--prefix", "p", "--out", "o", "--stack", "s"])
    with pytest.raises(PackError, match="SOURCE_DATE_EPOCH"):
        pack.options_from_args(args)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "123")
    assert pack.options_from_args(args)[0].source_date_epoch == 123


def test_write_tar_matches_tarfiles_pax_writer(tmp_path: Path) -> None:
    """The direct header path must give exactly what tarfile gives, PAX records included."""
    import io

    src = tmp_path / "payload"
    src.write_bytes(b"x" * 1000)
    entries = [
        Entry("bin", "dir", 0o755, SDE),
        Entry("bin/python", "symlink", 0o777, SDE, linkname="python3.11"),
        Entry("bin/tool", "file", 0o755, SDE - 5, 1000, source=str(src)),
        Entry("share/" + "d" * 120 + "/long-name.txt", "file", 0o644, SDE, 3, data=b"abc"),
        Entry("share/naïve.txt", "file", 0o644, SDE, 0, data=b""),
        Entry("share/link", "symlink", 0o777, SDE, linkname="../" + "l" * 110),
    ]
    sink_out = io.BytesIO()
    sink = pack._TarSink(sink_out.write)
    pack.write_tar(entries, sink, 899, 0, lambda n: None)
    sink.flush()

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for e in entries:
            content = e.data if e.data is not None else src.read_bytes()
            data = io.BytesIO(content) if e.kind == "file" else None
            tar.addfile(pack.tar_info(e, 899, 0), data)
    assert sink_out.getvalue() == expected.getvalue()
    assert pack.ustar_header(entries[4], 0, 0) is None  # non-ASCII: tarfile writes it


@pytest.mark.parametrize("batch", [4096, 1000, 512])  # the file's end inside, at and past a block's end
@pytest.mark.parametrize(("written", "ok"), [(b"y" * 1000, True), (b"y" * 1001, False), (b"y" * 999, False)])
def test_a_file_that_is_not_the_size_it_was_is_refused(tmp_path: Path, batch: int, written: bytes, ok: bool) -> None:
    """A file written to between its lstat and its read (1000 bytes then) is an error, not a torn member."""
    src = tmp_path / "payload"
    src.write_bytes(written)
    out = io.BytesIO()
    sink = pack._TarSink(out.write, batch=batch)
    sink.write(b"h" * 24)
    if ok:
        pack._copy_file(str(src), 1000, sink)
        sink.flush()
        assert out.getvalue() == b"h" * 24 + written and sink.offset == 1024
    else:
        with pytest.raises(PackError, match="changed while packing"):
            pack._copy_file(str(src), 1000, sink)


def test_the_tarball_goes_to_the_disk_as_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sync_step bytes, what is written so far is flushed and written out, so the final fsync waits for little."""
    synced: list[int] = []
    target = tmp_path / "t"
    monkeypatch.setattr(pack.os, "fdatasync", lambda fd: synced.append(target.stat().st_size))
    with open(target, "wb") as fh:
        out = pack._HashingFile(fh, sync_step=10)
        for _ in range(7):
            out.write(b"abcd")
    assert synced == [12, 24]
    assert out.size == 28 and out.digest.hexdigest() == hashlib.sha256(b"abcd" * 7).hexdigest()


def _candidate() -> str:
    """A name whose hash makes it a boundary candidate."""
    return next(f"lib/x{i}" for i in range(10_000) if pack.name_hash(f"lib/x{i}") & pack.CHUNK_MASK == 0)


def _ordinary() -> str:
    return next(f"lib/y{i}" for i in range(10_000) if pack.name_hash(f"lib/y{i}") & pack.CHUNK_MASK)


def test_a_chunk_ends_at_a_candidate_name_once_it_holds_the_minimum() -> None:
    candidate, ordinary = _candidate(), _ordinary()
    small, half = 512, pack.CHUNK_MIN // 2
    assert not pack.starts_chunk(candidate, "a", 0, small)  # nothing held: nothing to end
    assert not pack.starts_chunk(candidate, "a", pack.CHUNK_MIN - 1, small)  # below the minimum
    assert pack.starts_chunk(candidate, "a", pack.CHUNK_MIN, small)
    assert not pack.starts_chunk(ordinary, "a", pack.CHUNK_MIN + half, small)
    assert pack.starts_chunk(ordinary, "a", pack.CHUNK_MAX - small + 1, small)  # would pass the maximum
    assert not pack.starts_chunk(ordinary, "a", pack.CHUNK_MAX - small, small)


def test_members_that_change_every_version_are_chunks_of_their_own() -> None:
    for solo in sorted(pack.SOLO_MEMBERS):
        assert pack.starts_chunk(solo, "a", 512, 512)
        assert pack.starts_chunk("zz", solo, 512, 512)
    assert pack.chunk_starts([("bin", 512), ("bin/conda-unpack", 4096), ("bin/x", 512), ("bin/y", 512)]) == [0, 1, 2]


def test_a_member_over_the_maximum_is_a_chunk_of_its_own() -> None:
    ordinary = [f"lib/{c}" for c in "abcd"]
    members = [(ordinary[0], 512), (ordinary[1], pack.CHUNK_MAX + 512), (ordinary[2], 512), (ordinary[3], 512)]
    assert pack.chunk_starts(members) == [0, 1, 2]


def test_boundaries_depend_on_names_so_a_change_moves_only_its_own() -> None:
    """Growing one member leaves every boundary but the ones right after it in place."""
    names = [f"pkg{p:02d}/file{f:03d}" for p in range(40) for f in range(100)]
    sizes = {name: 40_000 + (pack.name_hash(name) % 20_000) for name in names}
    before = pack.chunk_starts((n, sizes[n]) for n in names)
    changed = names[len(names) // 2]
    sizes[changed] += 300_000
    after = pack.chunk_starts((n, sizes[n]) for n in names)
    assert len(before) > 20  # the test means something: many chunks
    where = names.index(changed)
    assert [s for s in before if s <= where] == [s for s in after if s <= where]
    moved = set(before) ^ set(after)
    assert all(where < s for s in moved) and len(moved) <= 2
    assert before[-10:] == after[-10:]
    # Pinned: another hash would move every boundary between two versions of a stack.
    assert pack.name_hash("bin/python") == 0x802DF2D073633CEB


def test_member_size_is_what_the_writer_writes() -> None:
    entries = [
        Entry("bin", "dir", 0o755, SDE),
        Entry("bin/python", "symlink", 0o777, SDE, linkname="python3.11"),
        Entry("bin/tool", "file", 0o755, SDE - 5, 1000, data=b"x" * 1000),
        Entry("share/" + "d" * 120 + "/long-name.txt", "file", 0o644, SDE, 3, data=b"abc"),
        Entry("share/naïve.txt", "file", 0o644, SDE, 512, data=b"y" * 512),
        Entry("share/link", "symlink", 0o777, SDE, linkname="../" + "l" * 110),
        Entry("d" * 99 + "/", "dir", 0o755, SDE),  # 100 bytes with the slash: still ustar
        Entry("e" * 100, "dir", 0o755, SDE),  # 101 with it: a PAX record
        Entry("f" * 300, "symlink", 0o777, SDE, linkname="g" * 990),  # two records, lengths crossing digits
        Entry("share/big", "file", 0o644, 8**11, 0, data=b""),  # an mtime ustar cannot hold
    ]
    for e in entries:
        out = io.BytesIO()
        sink = pack._TarSink(out.write)
        pack.write_members([e], [pack.member_header(e, 899, 0)], sink)
        sink.flush()
        assert pack.member_size(e, 899, 0) == len(out.getvalue()), e.name


def test_plan_chunks_covers_the_stream_and_ends_it() -> None:
    entries = [Entry(f"lib/f{i:05d}", "file", 0o644, SDE, 20_000, data=bytes(20_000)) for i in range(1500)]
    chunks = pack.plan_chunks(entries, 0, 0)
    assert len(chunks) > 2
    assert [e for c in chunks for e in c.entries] == entries
    assert all(c.tail == b"" for c in chunks[:-1])
    assert chunks[-1].entries == () and chunks[-1].tail  # the end of the archive, alone
    out = io.BytesIO()
    sink = pack._TarSink(out.write)
    pack.write_tar(entries, sink, 0, 0, lambda n: None)
    sink.flush()
    assert sum(c.raw_size for c in chunks) == len(out.getvalue())
    assert out.getvalue().endswith(chunks[-1].tail)
    guess = pack.plan_chunks(entries, 0, 0, last=False)
    assert guess == chunks[:-1]


@pytest.mark.parametrize("threads", [1, 3])
def test_chunk_frames_concatenate_to_the_tar_stream(threads: int) -> None:
    """Chunks up to the maximum are compressed whole, a larger one streamed: both are whole
    frames, with a checksum and the content size, and together they are the tar stream."""
    import zstandard

    big = bytes(range(256)) * ((pack.CHUNK_MAX + 300_000) // 256)
    entries = [Entry(f"lib/f{i:04d}", "file", 0o644, SDE, 30_000, data=bytes([i % 251]) * 30_000) for i in range(300)]
    entries.insert(150, Entry("lib/f0149-big", "file", 0o644, SDE, len(big), data=big))
    chunks = pack.plan_chunks(entries, 0, 0)
    assert any(c.raw_size > pack.CHUNK_MAX for c in chunks) and len(chunks) > 2
    compressor = pack._ChunkCompressor(3, threads, 0, 0)
    try:
        frames = [f.result()[0] for f in [compressor.submit(c) for c in chunks]]
    finally:
        compressor.close()
    for chunk, frame in zip(chunks, frames, strict=True):
        params = zstandard.get_frame_parameters(frame)
        assert params.has_checksum and params.content_size == chunk.raw_size
    out = io.BytesIO()
    sink = pack._TarSink(out.write)
    pack.write_tar(entries, sink, 0, 0, lambda n: None)
    sink.flush()
    joined = io.BytesIO(b"".join(frames))
    assert zstandard.ZstdDecompressor().stream_reader(joined, read_across_frames=True).read() == out.getvalue()


def test_a_level_outside_the_format_range_is_refused() -> None:
    assert pack.PackOptions(1, compression="gzip", level=9).resolved_level() == 9
    assert pack.PackOptions(1, compression="zstd", level=19).resolved_level() == 19
    with pytest.raises(PackError, match="gzip takes levels 1 to 9"):
        pack.PackOptions(1, compression="gzip", level=15).resolved_level()
    with pytest.raises(PackError, match="zstd takes levels 1 to 22"):
        pack.PackOptions(1, compression="zstd", level=0).resolved_level()


@pytest.mark.parametrize("version", ["../../evil", "sub/dir", "1.0+local", "-x"])
def test_a_version_that_is_no_plain_name_is_refused_before_anything_is_written(
    tmp_path: Path, version: str
) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "conda-meta").mkdir(parents=True)
    out = tmp_path / "deep" / "er" / "artifacts"
    out.mkdir(parents=True)
    argv = ["--prefix", str(prefix), "--out", str(out), "--stack", "demo", f"--version={version}",
            "--source-date-epoch", "0"]
    assert pack.main(argv) == PackError.exit_code
    options, info = pack.options_from_args(pack._parser().parse_args(argv))
    with pytest.raises(PackError, match=rf"^version {re.escape(repr(version))}: use letters, digits and \. _ -"):
        pack.pack_prefix(prefix, out, options=options, info=info)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["deep", "deep/er", "deep/er/artifacts", "prefix", "prefix/conda-meta"]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--build-time", "yesterday", r"^build time 'yesterday': give ISO 8601 in UTC"),
    ("--build-time", "2026-11-21T08:00:00+01:00", r"^build time .*: give ISO 8601 in UTC"),
    ("--tool", "rattler", r"^--tool rattler: give NAME=VERSION"),
    ("--tool", "=0.30", r"^--tool =0.30: give NAME=VERSION"),
])
def test_a_manifest_field_the_help_gives_a_form_for_is_refused_in_another_before_anything_is_written(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "conda-meta").mkdir(parents=True)
    out = tmp_path / "artifacts"
    argv = ["--prefix", str(prefix), "--out", str(out), "--stack", "demo", "--source-date-epoch", "0", flag, value]
    assert pack.main(argv) == PackError.exit_code
    with pytest.raises(PackError, match=message):
        options, info = pack.options_from_args(pack._parser().parse_args(argv))
        pack.pack_prefix(prefix, out, options=options, info=info)
    assert not out.exists()


def test_a_build_time_in_utc_is_taken_as_given() -> None:
    pack.check_build_time("2026-11-21T08:00:00Z")
    pack.check_build_time("2026-11-21T08:00:00+00:00")


def test_pack_imports_only_the_light_modules_docs_pack_md_names() -> None:
    """docs/pack.md lists the swstack modules `python -m swstack.pack` loads, so that it runs in
    the builder image; importing it loads those and nothing else of swstack."""
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[2] / "docs/pack.md").read_text()
    listed = re.search(r"swstack's light\s+modules \(([^)]*)\)", doc)
    assert listed is not None
    documented = {f"swstack.{name}" for name in re.findall(r"`(\w+)`", listed.group(1))}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, swstack.pack\n"
         "print(' '.join(m for m in sys.modules if m.startswith('swstack.')))"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    assert set(loaded) - {"swstack.pack"} == documented


@pytest.mark.parametrize("argv", [["--out", "o", "--stack", "s"], ["--prefix", "p", "--out", "o", "--stack", "s",
                                                                   "--level", "abc"]])
def test_a_command_line_argparse_cannot_read_exits_2_as_docs_pack_md_says(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        pack.main(argv)
    assert exited.value.code == 2
