"""Pure parts of the host side: names, versions, member checks, relocation plans, prune plans, diffs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from tests.support.artifacts import tar_member, write_tar
from tests.support.host import base_manifest

from swstack.errors import ActivateError
from swstack.host import commands, extract, relocate, source
from swstack.host.layout import Layout, live_name, normalize_version, version_key
from swstack.host.verify import Expected, read_checksum_file
from swstack.manifest import Manifest, PackageEntry


def test_version_order_is_natural() -> None:
    assert sorted(["2026.10.1", "2026.9.1", "2025.12.31"], key=version_key) == [
        "2025.12.31",
        "2026.9.1",
        "2026.10.1",
    ]


@pytest.mark.parametrize(
    "arg", ["2020-02-05", "sw.2020-02-05", "/data0/sw.2020-02-05", "/data0/sw.2020-02-05/"]
)
def test_seed_spellings_of_a_version(arg: str) -> None:
    assert normalize_version(arg) == "2020-02-05"


def test_link_targets_round_trip(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.tree_of_target(layout.link_target("py3", "2026.01.01")) == ("py3", "2026.01.01")
    (tmp_path / "sw.tmpfs").mkdir()
    assert layout.link_target("py3-dev", "v1") == ".py3-dev@v1"
    assert layout.tree_of_target(".py3-dev@v1") == ("py3-dev", "v1")
    assert layout.tree_of_target("../sw.v1/py3") == ("py3", "v1")
    assert layout.tree_of_target("../elsewhere/py3") is None


@pytest.mark.parametrize(
    ("prefix", "live"), [("/data0/sw/py3", "py3"), ("/data0/sw/anaconda3", "anaconda3"), ("/opt/x/py3/", "py3")]
)
def test_live_name_is_the_built_prefix(prefix: str, live: str) -> None:
    assert live_name(prefix) == live


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "x\x00y"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(extract.UnsafeMember):
        extract.normalize_name(name)


def test_names_are_normalised() -> None:
    assert extract.normalize_name("./bin//python") == "bin/python"


@pytest.mark.parametrize(
    ("start", "target", "links", "inside"),
    [
        ([], "bin/python", {}, True),
        (["bin"], "python3.11", {}, True),
        (["lib"], "../..", {}, False),
        ([], "s/..", {"s": "."}, False),  # lexically inside, really the parent of the root
        ([], "a/b", {"a": "x/y"}, True),
        ([], "loop", {"loop": "loop"}, False),
        (["lib"], "../bin/x", {}, True),
    ],
)
def test_symlink_resolution(start: list[str], target: str, links: dict[str, str], inside: bool) -> None:
    assert extract.resolves_inside(start, target, links) is inside


def _member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


def test_member_checks() -> None:
    tree = extract._Tree()
    tree.symlinks["lib"] = "sub"
    tree.files.add("bin/python")
    with pytest.raises(extract.UnsafeMember, match="through the symlink"):
        extract.check_member(_member("lib/x"), tree)
    with pytest.raises(extract.UnsafeMember, match="setuid"):
        extract.check_member(_member("su", mode=0o4755), tree)
    with pytest.raises(extract.UnsafeMember, match="device"):
        extract.check_member(_member("null", tarfile.CHRTYPE), tree)
    with pytest.raises(extract.UnsafeMember, match="hardlink"):
        extract.check_member(_member("h", tarfile.LNKTYPE, link="/etc/passwd"), tree)
    with pytest.raises(extract.UnsafeMember, match="twice"):
        extract.check_member(_member("bin/python"), tree)
    assert extract.check_member(_member("h", tarfile.LNKTYPE, link="bin/python"), tree) == "h"


def test_checksum_file_formats() -> None:
    digest = "ab" * 32
    assert read_checksum_file(f"{digest}  x.tar.zst\n", "x.tar.zst") == digest
    assert read_checksum_file(f"{digest} *x.tar.zst\n", "x.tar.zst") == digest
    assert read_checksum_file(f"{digest}\n", "x.tar.zst") == digest
    with pytest.raises(ActivateError):
        read_checksum_file(f"{digest}  other.tar.zst\n{digest}  more\n", "x.tar.zst")


def _unpack_script(tmp_path: Path, records: str) -> Path:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "conda-unpack").write_text(f"_prefix_records = [\n{records}\n]\n")
    return tmp_path


def test_relocation_plan_text_only(tmp_path: Path) -> None:
    tree = _unpack_script(tmp_path, "('etc/a', '/data0/sw/py3', 'text'),")
    plan = relocate.plan(tree, "/data0/sw/py3", "/a/much/longer/root/sw/py3")
    assert plan is not None and plan.files == 1
    assert relocate.plan(tree, "/data0/sw/py3", "/data0/sw/py3") is None


def test_relocation_refused_for_longer_binary_prefix(tmp_path: Path) -> None:
    tree = _unpack_script(tmp_path, "('lib/x.so', '/data0/sw/py3', 'binary'),")
    assert relocate.plan(tree, "/data0/sw/py3", "/d/sw/py3") is not None  # shorter: fine
    with pytest.raises(ActivateError, match="binary files .*lib/x.so"):
        relocate.plan(tree, "/data0/sw/py3", "/much/longer/root/sw/py3")


def test_relocation_without_conda_unpack(tmp_path: Path) -> None:
    assert relocate.plan(tmp_path, "/data0/sw/py3", "/data0/sw/py3") is None
    with pytest.raises(ActivateError, match="no bin/conda-unpack"):
        relocate.plan(tmp_path, "/data0/sw/py3", "/x/sw/py3")


def test_prune_plan_keeps_newest_and_protected() -> None:
    plan = commands.plan_prune(["1", "2", "3", "4", "5"], 2, {"1": "previous version of py3"})
    assert plan.remove == ("2", "3")
    assert set(plan.keep) == {"1", "4", "5"}


def test_prune_plan_never_removes_nor_counts_foreign_directories() -> None:
    plan = commands.plan_prune(["1", "2", "3", "9"], 1, {}, {"9": "notes.txt is not a tree"})
    assert plan.remove == ("1", "2")  # 3 is the newest swstack version: 9 does not count
    assert plan.keep == {"3": "newest", "9": "not made by swstack: notes.txt is not a tree"}


def test_versions_are_only_sw_directories_with_a_version_name(tmp_path: Path) -> None:
    for name in ("sw.1.0", "sw.hdd", "sw.tmpfs", "sw.a@b", "sw.-x", "sw.2.0.partial", "sw.hdd-old", "swx.3"):
        (tmp_path / name).mkdir()
    (tmp_path / "sw.4.0").symlink_to("sw.1.0")
    assert Layout(tmp_path).versions() == ["1.0", "hdd-old"]
    assert Layout(tmp_path).foreign_content("hdd-old") == "no tree"


def test_package_diff() -> None:
    a = base_manifest("py3", "1", "/data0/sw/py3")
    pkgs = (
        PackageEntry("python", "3.11.7", "h1_0", "c", "a" * 64, 100),
        PackageEntry("scipy", "1.14.0", "py311_0", "c", "c" * 64, 1),
    )
    b = base_manifest("py3", "2", "/data0/sw/py3", packages=(*pkgs[:1], pkgs[1]))
    b = b.__class__(
        **{**b.__dict__, "packages": (PackageEntry("python", "3.12.0", "h2_0", "c", "d" * 64, 1), pkgs[1])}
    )
    d = commands.diff_packages(a, b)
    assert d.added == (("scipy", "1.14.0=py311_0"),)
    assert d.removed == (("numpy", "1.26.4=py311_0"),)
    assert d.changed == (("python", "3.11.7=h1_0", "3.12.0=h2_0"),)


def test_package_diff_shows_a_rebuild_by_its_sha256() -> None:
    """Same version and build, other bytes: the line says the build changed, not ``1.0 -> 1.0``."""
    from dataclasses import replace

    old = PackageEntry("numpy", "1.26.4", "py311_0", "c", "a1b2c3d4e5f6" + "0" * 52, 100)
    a = replace(base_manifest("py3", "1", "/data0/sw/py3"), packages=(old,))
    b = replace(a, version="2", packages=(replace(old, sha256="f6e5d4c3b2a1" + "1" * 52),))
    assert commands.diff_packages(a, b).changed == (
        ("numpy", "1.26.4=py311_0 sha256:a1b2c3d4e5f6", "1.26.4=py311_0 sha256:f6e5d4c3b2a1"),
    )
    assert commands.diff_packages(a, a).empty


def test_host_config_values_are_type_checked(tmp_path: Path) -> None:
    from swstack.host.signature import load_policy, read_host_config

    config = tmp_path / "host.toml"
    config.write_text('[signatures]\nrequire = false\ntrusted_keys = ["keys/site.pub", "/etc/k.pub"]\n')
    assert read_host_config(config) == (False, [tmp_path / "keys/site.pub", Path("/etc/k.pub")])
    policy = load_policy(config, False, [Path("/x.pub")])
    assert not policy.require_signature and policy.trusted_keys == (Path("/x.pub"), tmp_path / "keys/site.pub",
                                                                    Path("/etc/k.pub"))
    config.write_text("")
    assert read_host_config(config) == (False, [])
    for text, message in (
        ("signatures = 5\n", "host.toml:1: signatures: expected a table, got 5"),
        ('[signatures]\nrequire = "false"\n', 'host.toml:2: signatures.require: expected true or false'),
        ("[signatures]\nrequire = 1\n", "host.toml:2: signatures.require: expected true or false"),
        ("[signatures]\ntrusted_keys = [1]\n", "host.toml:2: signatures.trusted_keys[0]: expected the path"),
        ('[signatures]\ntrusted_keys = ["k", [""]]\n', "host.toml:2: signatures.trusted_keys[1]: expected"),
    ):
        config.write_text(text)
        with pytest.raises(ActivateError) as info:
            read_host_config(config)
        assert f"{tmp_path}/{message}" in str(info.value)


def test_a_host_config_requiring_signatures_without_keys_names_itself(tmp_path: Path) -> None:
    """The fix is in the host config: the message names it and its key, not only --trusted-key."""
    from swstack.host.signature import load_policy

    config = tmp_path / "host.toml"
    config.write_text("[signatures]\nrequire = true\n")
    with pytest.raises(ActivateError) as info:
        load_policy(config, False, [])
    assert str(info.value).startswith(f"{config}: signatures.require is true but the file names no trusted key")
    assert "trusted_keys = " in str(info.value) and "--trusted-key PUBKEY" in str(info.value)
    assert load_policy(config, False, [Path("/x.pub")]).trusted_keys == (Path("/x.pub"),)  # a key given on the line


def test_release_field_types_are_checked(tmp_path: Path) -> None:
    release = tmp_path / "r.json"
    for data, message in (
        ([], 'r.json: expected a JSON object {"stacks": {...}}, got list'),
        ({"stacks": {"py3": None}}, "r.json: stacks.py3: expected the stack's source as a non-empty string"),
        ({"stacks": {"py3": ""}}, "r.json: stacks.py3: expected the stack's source as a non-empty string"),
        ({"stacks": {"py3": "a", "py3-dev": "a"}}, "r.json: stacks.py3-dev: the same source as stacks.py3"),
        ({"stacks": {"py3\nok": "a"}}, "r.json: stacks: 'py3\\nok' is not a stack name"),
        ({"stacks": []}, "r.json: stacks: expected a [stacks] table"),
    ):
        release.write_text(json.dumps(data))
        with pytest.raises(ActivateError) as info:
            commands.read_release(release)
        assert f"{tmp_path}/{message}" in str(info.value)
    release.write_bytes(b'{"stacks":\n {"py3": "\xff"}}')
    with pytest.raises(ActivateError, match=r"r\.json:2: not UTF-8 text \(byte 0xff\)"):
        commands.read_release(release)


def test_set_version_arguments(tmp_path: Path) -> None:
    root = tmp_path / "data0"
    root.mkdir()
    assert commands.parse_version_arg("2026.11.01", root) == ("2026.11.01", None)
    assert commands.parse_version_arg("sw.2026.11.01", root) == ("2026.11.01", None)
    assert commands.parse_version_arg(f"{root}/sw.2026.11.01/", root) == ("2026.11.01", None)
    assert commands.parse_version_arg(f"{root}/sw.2026.11.01/py3", root) == ("2026.11.01", "py3")
    with pytest.raises(ActivateError, match="is not under the root"):
        commands.parse_version_arg("/elsewhere/sw.2026.11.01/py3", root)
    with pytest.raises(ActivateError, match="not a version; give VERSION"):
        commands.parse_version_arg(f"{root}/py3", root)


def test_lock_messages_say_how_long_was_waited(tmp_path: Path) -> None:
    import fcntl
    import os

    from swstack.host.lock import host_lock, seconds

    assert (seconds(0.5), seconds(30.0), seconds(0)) == ("0.5s", "30s", "0s")
    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ActivateError, match=r"still held after --wait 0\.2s"), host_lock(lock, 0.2):
            pass
        with pytest.raises(ActivateError, match=r"pass --wait SECONDS$"), host_lock(lock, -5):
            pass
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("https://example.org/a.tar.zst", "http"),
        ("oci://localhost:5000/py3:1", "oci"),
        ("localhost:5000/py3:2026.01.01", "oci"),
        ("./artifacts/py3/1", "path"),
        ("registry.example.org/swstack/py3:2026.11.01", "oci"),
        ("ghcr.io/site/py3@sha256:" + "a" * 64, "oci"),
        ("localhost/py3:1", "oci"),
        ("artifacts/py3:1", "path"),
        # A tag and a digest, and an IPv6 host, as docs/registry.md writes references.
        ("registry.example.org:5000/py3:2026.11.01@sha256:" + "a" * 64, "oci"),
        ("[::1]:5000/py3:1", "oci"),
        ("./art.d/py3", "path"),
    ],
)
def test_source_kinds(ref: str, kind: str) -> None:
    assert source.kind_of(ref) == kind


def test_release_manifest(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        '[stacks]\npy3 = "artifacts/py3"\nantares = "localhost:5000/antares:1"\n'
    )
    assert commands.read_release(tmp_path / "r.toml") == {
        str(tmp_path / "artifacts/py3"): "py3",
        "localhost:5000/antares:1": "antares",
    }
    (tmp_path / "bad.toml").write_text("stacks = 1\n")
    with pytest.raises(ActivateError, match="stacks"):
        commands.read_release(tmp_path / "bad.toml")


# What a notebook host may load of swstack: the host package, the CLI and these light modules.
# Everything else (spec, site, lock, sandbox, build, pack, image, publish, tasks...) is the
# build side, and pydantic, rattler, docker, doit, conda-pack and conda-lock are its dependencies.
HOST_SIDE = {"swstack", "swstack.artifact", "swstack.cli", "swstack.errors", "swstack.log", "swstack.fsutil",
             "swstack.manifest", "swstack.paths", "swstack.proc", "swstack.toml", "swstack.tomlloc", "swstack.oci",
             "swstack.trust"}
BUILD_DEPENDENCIES = ("pydantic", "rattler", "docker", "doit", "conda_pack", "conda_lock")


def _host_modules() -> list[str]:
    import pkgutil

    import swstack.host

    return ["swstack.host", *(f"swstack.host.{m.name}" for m in pkgutil.iter_modules(swstack.host.__path__))]


def _loaded_build_side(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the build-side modules it loaded."""
    import subprocess

    probe = (
        code
        + "\nimport json, sys\n"
        + f"allowed, deps = {sorted(HOST_SIDE)!r}, {BUILD_DEPENDENCIES!r}\n"
        + "print(json.dumps([m for m in sorted(sys.modules) if m.split('.')[0] in deps\n"
        + "       or (m.startswith('swstack') and m not in allowed and not m.startswith('swstack.host'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_help_imports_no_build_dependencies() -> None:
    code = "import swstack.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_build_side(code) == []


def test_verify_offers_no_root_it_would_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    """verify reads the artifact alone: a --root there would be a setting nothing reads."""
    from swstack.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["verify", "artifacts/py3/1", "--root", "/srv"])
    assert exited.value.code == 2 and "unrecognized arguments: --root" in capsys.readouterr().err
    assert build_parser().parse_args(["active", "--root", "/srv"]).root == Path("/srv")


def test_the_host_commands_load_no_http_client() -> None:
    """Every host command starts a fresh interpreter; urllib.request (and http.client, ssl,
    email under it) is loaded only when an artifact comes over HTTP."""
    import subprocess

    probe = (
        "import sys, swstack.cli, swstack.host.commands\n"
        "print('urllib.request' in sys.modules, 'http.client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_host_modules_are_found() -> None:
    assert {"swstack.host.commands", "swstack.host.extract", "swstack.host.source"} <= set(_host_modules())


@pytest.mark.parametrize("module", [*_host_modules(), "swstack.oci", "swstack.artifact"])
def test_every_host_module_imports_nothing_of_the_build_side(module: str) -> None:
    assert _loaded_build_side(f"import {module}") == []

@pytest.mark.parametrize(
    "name", ["lib/a\nb.py", "lib/\x1b[31mred", "lib/bad-\udcff.py", "tab\there", "del\x7f"]
)
def test_names_with_control_characters_or_bad_bytes_are_refused(name: str) -> None:
    with pytest.raises(extract.UnsafeMember) as info:
        extract.normalize_name(name)
    assert "\n" not in str(info.value)  # the message itself stays one line


def test_kernel_argv_goes_through_the_launcher() -> None:
    from swstack.install import kernel_argv

    default = ["{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert kernel_argv(default, "/data0/sw/py3")[0] == "/data0/sw/py3/bin/swstack-launch"
    assert kernel_argv(default, "/data0/sw/py3", launcher=False)[0] == "/data0/sw/py3/bin/python"
    custom = ["/usr/bin/env", "R", "--slave", "-f", "{connection_file}"]
    assert kernel_argv(custom, "/data0/sw/r") == custom


def test_launcher_runs_python_from_the_resolved_tree(tmp_path: Path) -> None:
    """The launcher execs bin/python through the real directory, not the link it was called through."""
    import subprocess

    from swstack.install import write_launcher

    tree = tmp_path / ".py3@1"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "python").write_text('#!/bin/sh\necho "$0" "$@"\n')
    (tree / "bin" / "python").chmod(0o755)
    write_launcher(tree)
    (tmp_path / "py3").symlink_to(".py3@1")
    out = subprocess.run([str(tmp_path / "py3/bin/swstack-launch"), "-c", "x"], capture_output=True, text=True)
    assert out.stdout.split() == [f"{tree}/bin/python", "-c", "x"]


def test_manifest_fields_are_type_checked() -> None:
    good = json.loads(base_manifest("py3", "1", "/data0/sw/py3").to_json())
    for bad, key in ((dict(good, version=1), "version"), (dict(good, packages=[{"name": 1}]), "packages[0]")):
        with pytest.raises(ValueError, match=key.replace("[", r"\[")):
            Manifest.from_dict(bad)


# ---------------------------------------------------------------- the tar reader and chunk plans


def _tar_bytes(members: list[tarfile.TarInfo], fmt: int) -> bytes:
    import io

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    return out.getvalue()


def _ours(data: bytes) -> list[tuple[object, ...]]:
    """Every member of ``data`` as our parser reads it (name, type, mode, mtime, size, link)."""
    from swstack.host.tarstream import BLOCK, is_end, next_member, padded

    pos, out, global_pax = 0, [], {}

    def read(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n : pos]

    while pos < len(data) and not is_end(first := read(BLOCK)):
        m = next_member(first, read, global_pax)
        read(padded(m.size) if m.isreg() else 0)
        out.append((m.name, m.type, m.mode, m.mtime, m.size, m.linkname))
    return out


def _theirs(data: bytes) -> list[tuple[object, ...]]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.type, m.mode, m.mtime, m.size, m.linkname) for m in tar.getmembers()]


def _ti(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "", mtime: float = 1_700_000_000):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime, info.mode = kind, size, link, mtime, 0o755
    return info


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_our_tar_headers_read_as_tarfile_reads_them(fmt: int) -> None:
    """Long names (PAX records, GNU long-name headers, ustar prefixes), long link targets, directories,
    odd bytes: our parser sees the very names tarfile does, so the checks apply to what is created."""
    long_dir = "lib/" + "d" * 90 + "/" + "e" * 40
    members = [
        _ti("bin", tarfile.DIRTYPE),
        _ti("bin/python", size=5),
        _ti(f"{long_dir}/module.py", size=700),
        _ti("bin/python3", tarfile.SYMTYPE, link="python"),
        _ti("bin/py", tarfile.LNKTYPE, link="bin/python"),
    ]
    if fmt != tarfile.USTAR_FORMAT:  # names ustar cannot hold at all
        members += [
            _ti("share/" + "x" * 200, size=3),
            _ti("share/link", tarfile.SYMTYPE, link="../" + "y" * 150),
            _ti("lib/caf\udce9.py", size=1),
        ]
    if fmt == tarfile.PAX_FORMAT:
        members.append(_ti("share/when", size=2, mtime=1_700_000_000.25))
    data = _tar_bytes(members, fmt)
    assert _ours(data) == _theirs(data)


def test_pax_overrides_and_old_forms_read_as_tarfile_reads_them() -> None:
    pax = _ti("harmless.txt", size=4)
    pax.pax_headers = {"path": "../escaped.txt", "mtime": "12.5"}
    link = _ti("lib", tarfile.SYMTYPE, link="ok")
    link.pax_headers = {"linkpath": "/tmp"}
    v7_dir = _ti("olddir/", tarfile.AREGTYPE)
    data = _tar_bytes([pax, link, v7_dir], tarfile.PAX_FORMAT)
    ours = _ours(data)
    assert ours == _theirs(data)
    assert [m[0] for m in ours] == ["../escaped.txt", "lib", "olddir"]
    assert ours[1][5] == "/tmp" and ours[2][1] == tarfile.DIRTYPE


def test_broken_tar_headers_are_refused() -> None:
    from swstack.host.tarstream import BLOCK, BrokenTar, next_member

    good = bytearray(_tar_bytes([_ti("a", size=1)], tarfile.PAX_FORMAT)[:BLOCK])
    good[0] ^= 1  # the checksum no longer matches
    with pytest.raises(BrokenTar, match="checksum"):
        next_member(bytes(good), lambda n: bytes(n), {})
    huge = tarfile.TarInfo("big")
    huge.size = 1 << 40  # GNU base-256 number
    block = huge.tobuf(tarfile.GNU_FORMAT)[:BLOCK]
    assert next_member(block, lambda n: bytes(n), {}).size == 1 << 40


def test_chunk_tables_must_tile_the_tarball() -> None:
    from swstack.host.chunks import check_table
    from swstack.manifest import TarballChunk

    sha = "a" * 64
    check_table([TarballChunk(0, 10, sha), TarballChunk(10, 5, sha)], 15, "t")
    for table, size, message in (
        ([TarballChunk(0, 10, sha), TarballChunk(8, 7, sha)], 15, "inside the chunk before it"),
        ([TarballChunk(0, 10, sha), TarballChunk(12, 3, sha)], 15, "in no chunk"),
        ([TarballChunk(0, 10, sha), TarballChunk(10, 9, sha)], 15, "past the end"),
        ([TarballChunk(0, 10, sha)], 15, "cover 10 of the tarball's 15 bytes"),
        ([TarballChunk(0, 15, "A" * 64)], 15, "64 lowercase hex"),
    ):
        with pytest.raises(ActivateError, match=message):
            check_table(table, size, "t")


def test_chunk_plan_replays_only_recorded_chunks_whose_files_are_in_place(tmp_path: Path) -> None:
    from swstack.host.chunks import plan, read_record, record_path, write_record
    from swstack.manifest import TarballChunk

    live = tmp_path / "sw.1" / "py3"
    (live / "lib").mkdir(parents=True)
    (live / "lib" / "a.py").write_bytes(b"aaaa")
    (live / "lib" / "a.py").chmod(0o644)
    kept, moved, fresh = "1" * 64, "2" * 64, "3" * 64
    record = {
        kept: [["d", "lib", 0o755, 1], ["f", "lib/a.py", 0o644, 1, 4], ["l", "lib/b", "a.py", 1]],
        moved: [["f", "lib/gone.py", 0o644, 1, 4]],
    }
    path = record_path(live.parent, "py3")
    write_record(path, record)
    assert read_record(path) == record
    table = [TarballChunk(0, 10, kept), TarballChunk(10, 10, moved), TarballChunk(20, 10, fresh)]
    segments = plan(table, read_record(path), live)
    assert [s.replay is not None for s in segments] == [True, False, False]
    assert [s.offset for s in segments] == [0, 10, 20]
    (live / "lib" / "a.py").chmod(0o600)  # not as recorded: read it
    assert plan(table, record, live)[0].replay is None
    path.write_text('{"schema": 1, "chunks": {"' + kept + '": [["f", 1]]}}')  # torn or tampered: nothing replayed
    assert read_record(path) == {}


@pytest.mark.parametrize("unreadable", ["tarball", "side file"])
def test_fetch_refuses_a_tarball_or_side_file_it_may_not_read(unreadable: str) -> None:
    """As bad input (exit 11), not later as the extraction's machine error (exit 1)."""
    import contextlib
    import os
    import tempfile

    from tests.support.artifacts import make_artifact

    # Not under pytest's base directory: the unprivileged effective user must reach the files.
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        art = make_artifact(Path(tmp) / "a", version="1.0")
        tarball = next(art.glob("*.tar.zst"))
        target = tarball if unreadable == "tarball" else tarball.with_name(tarball.name + ".sha256")
        target.chmod(0)
        # Root reads any file: read as nobody, the way a non-root admin meets the refusal.
        as_nobody = contextlib.ExitStack()
        if os.geteuid() == 0:
            os.seteuid(65534)
            as_nobody.callback(os.seteuid, 0)
        with as_nobody, pytest.raises(ActivateError, match=f"cannot be read .*Permission denied: '{target}'"):
            source.fetch(str(art), Path(tmp) / "downloads")


@pytest.mark.parametrize("interrupt, code, how", [(KeyboardInterrupt, 130, "interrupted"),
                                                   ("terminated", 143, "terminated (SIGTERM)")])  # fmt: skip
def test_an_os_error_raised_while_an_interrupt_unwinds_is_the_interrupt(
    interrupt: object, code: int, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """shutil.rmtree (prune removing a version) interrupted just after closing a directory's
    descriptor closes it again in a ``finally``: the EBADF that replaces the Ctrl-C is not an error."""
    import argparse
    import errno

    from swstack import cli

    def body(_args: argparse.Namespace) -> int:
        try:
            raise cli.Terminated if interrupt == "terminated" else KeyboardInterrupt
        finally:
            raise OSError(errno.EBADF, "Bad file descriptor")

    assert cli._run(argparse.Namespace(func=body, command="prune")) == code
    assert capsys.readouterr().err == (
        f"swstack prune: {how}; a step it finished stays done, one it began is undone\n"
    )


def test_the_exit_table_and_swstack_help_name_the_same_exit_codes() -> None:
    """docs/host.md's exit-status table and ``swstack --help`` list one set of codes (each missed 6,
    the help 141 too), and every exit code of an error the host commands raise is in it."""
    import re

    from swstack import cli
    from swstack.errors import ActivateError, SandboxError
    from swstack.hub import MenuError

    docs = (Path(__file__).parents[2] / "docs" / "host.md").read_text()
    table = docs.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    in_docs = {int(code) for code in re.findall(r"^\| (\d+)\s*\|", table, re.M)}
    in_help = {int(code) for code in re.findall(r"(\d+) [a-z]", cli._EPILOG.split("exit status:", 1)[1])}
    assert in_docs == in_help
    assert {ActivateError.exit_code, MenuError.exit_code, SandboxError.exit_code, 0, 1, 2, 3, 130, 141, 143} <= in_docs


# ---------------------------------------------------------------- the writer threads (a first activation)


def _tarball_with_a_large_file(tmp_path: Path) -> tuple[Path, Expected]:
    """A zstd tarball whose ``lib/big.bin`` is larger than ``extract._BUFFER``: streamed by ``_Stream``."""
    import hashlib

    big = bytes(range(256)) * (12 << 12)  # 12 MiB
    assert len(big) > extract._BUFFER
    members = [
        (tar_member("lib", mode=0o755, kind=tarfile.DIRTYPE), None),
        (tar_member("lib/a.txt", 5), b"hello"),
        (tar_member("lib/big.bin", len(big)), big),
        (tar_member("lib/b.txt", 5), b"world"),
    ]
    tarball = tmp_path / "t.tar.zst"
    write_tar(tarball, members)
    return tarball, Expected(hashlib.sha256(tarball.read_bytes()).hexdigest(), tarball.stat().st_size)


def _open_under(top: Path) -> list[str]:
    """The files under ``top`` this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(p for p in held if p.startswith(f"{top}/"))


def _full_at(monkeypatch: pytest.MonkeyPatch, path: Path) -> threading.Event:
    """Writes to ``path`` fail with ENOSPC (set once one has); every other write goes through."""
    import errno

    failed = threading.Event()
    write_all = extract._write_all

    def full(fd: int, data: bytes | memoryview | list[memoryview]) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, data)

    monkeypatch.setattr(extract, "_write_all", full)
    return failed


@pytest.mark.parametrize("side", ["disk", "ramdisk"])
def test_a_large_file_whose_write_fails_is_closed_on_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """The disk (or the ramdisk) fills while a large file streams in: the error is the usual line, and
    neither copy of the file is left open (a deleted file held open keeps its blocks, or its ramdisk
    pages, until the process ends). The disk side left its descriptor open, and, since closing it was
    queued in a ``finally`` that raised the writer's error first, the ramdisk side's too."""
    tarball, expected = _tarball_with_a_large_file(tmp_path)
    dest, ram = tmp_path / "staging", tmp_path / "ramdisk"
    dest.mkdir()
    ram.mkdir()
    _full_at(monkeypatch, (dest if side == "disk" else ram) / "lib" / "big.bin")
    with pytest.raises(ActivateError, match="No space left on device; nothing live changed"):
        extract.extract(tarball, dest, expected, None, extract.Mirror(ram))
    assert _open_under(tmp_path) == []


def test_an_interrupt_during_a_large_file_is_not_replaced_by_a_writer_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM) while a large file streams, after the disk writer failed: the interrupt
    unwinds (exit 130 or 143), not a 'free disk space' error raised again in a ``finally``."""
    tarball, expected = _tarball_with_a_large_file(tmp_path)
    dest = tmp_path / "staging"
    dest.mkdir()
    failed = _full_at(monkeypatch, dest / "lib" / "big.bin")
    pushed: list[extract._InOrder] = []  # the disk writer, once it has calls to run: big.bin's first 4 MiB
    push = extract._InOrder._push

    def recorded(self: extract._InOrder) -> None:
        if self._batch and not pushed:
            pushed.append(self)
        push(self)

    pull = extract._Feed._pull

    def interrupted(self: extract._Feed) -> bool:
        if pushed:  # the next block of big.bin, read once the disk writer has failed
            assert failed.wait(30)
            while pushed[0].error is None:
                time.sleep(0.01)
            raise KeyboardInterrupt
        return pull(self)

    monkeypatch.setattr(extract._InOrder, "_push", recorded)
    monkeypatch.setattr(extract._Feed, "_pull", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract.extract(tarball, dest, expected, None, None)
    assert _open_under(tmp_path) == []


def test_a_writer_thread_holds_a_bounded_number_of_calls() -> None:
    """Calls that write few bytes (directories, links, empty and tiny files) count against the
    budget too: with a slow disk writer, a first activation of a tree of many tiny files queued
    every member (each holding its name and a view into a decompressed block) and its memory
    grew with the tarball (215 MiB against 70 for 100,000 one-byte files)."""
    gate = threading.Event()
    writer = extract._InOrder("test-writer")
    writer.submit(gate.wait, 60)
    queued = [0]
    done = threading.Event()

    def submitter() -> None:
        for _ in range(200_000):
            writer.submit(len, "")
            queued[0] += 1
        done.set()

    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    seen, still = -1, 0
    while not done.is_set() and still < 10:  # until the submitter finishes or waits for the writer
        time.sleep(0.1)
        still = still + 1 if queued[0] == seen else 0
        seen = queued[0]
    try:
        assert not done.is_set() and queued[0] <= 10_000, queued[0]
    finally:
        gate.set()
        thread.join(60)
        writer.close()
    assert done.is_set()


@pytest.mark.parametrize("side", ["disk", "ramdisk"])
def test_a_write_the_host_refuses_is_not_blamed_on_the_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """A write refused by the host (permissions, a read-only file system) says so in one line: the
    tarball is sound, so 'packed broken: rebuild it' would send the user to rebuild for nothing."""
    import errno

    tarball, expected = _tarball_with_a_large_file(tmp_path)
    dest, ram = tmp_path / "staging", tmp_path / "ramdisk"
    dest.mkdir()
    ram.mkdir()
    refused = (dest if side == "disk" else ram) / "lib" / "a.txt"
    write_all = extract._write_all

    def read_only(fd: int, data: bytes | memoryview | list[memoryview]) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(refused):
            raise OSError(errno.EROFS, "Read-only file system", str(refused))
        write_all(fd, data)

    monkeypatch.setattr(extract, "_write_all", read_only)
    with pytest.raises(ActivateError) as caught:
        extract.extract(tarball, dest, expected, None, extract.Mirror(ram))
    message = str(caught.value)
    assert "\n" not in message
    assert f"Read-only file system: '{refused}'; nothing live changed" in message
    assert "not the artifact" in message and "rebuild" not in message
    assert _open_under(tmp_path) == []


def test_a_hint_names_the_root_unless_it_is_the_default() -> None:
    """A command a message tells the user to run carries ``--root`` on any root but the production one:
    pasted on a test or staging root as printed, it must not act on /data0."""
    from swstack.host.layout import Layout, command

    assert Layout(Path("/data0")).command("restore") == "`swstack restore`"
    assert Layout(Path("/srv/stage")).command("set-version 2.0") == "`swstack set-version 2.0 --root /srv/stage`"
    assert command("/tmp/a root", "init") == "`swstack init --root '/tmp/a root'`"
