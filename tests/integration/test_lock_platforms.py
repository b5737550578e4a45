"""Locking for two platforms against a small channel fixture, and what the lockfile names.

The fixture is a site whose ``conda-forge`` mirror is a local directory with repodata for
linux-64, linux-aarch64 and noarch, and whose pip wheelhouse holds one binary wheel per
architecture. The lock is made by the real solver and pip's real resolver.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from swstack.errors import BuildError
from swstack.lock import PYPI_INDEX, lock, plan_lock, staleness
from swstack.offline_channel.labclient import write_simple_index
from swstack.site import load_site
from swstack.spec import load_stack

CANONICAL = "https://conda.anaconda.org/conda-forge"
PLATFORMS = ("linux-64", "linux-aarch64")
WHEEL_TAG = {"linux-64": "manylinux2014_x86_64", "linux-aarch64": "manylinux2014_aarch64"}


def _package(subdir: Path, name: str, version: str, build: str, depends: list[str], noarch: bool = False
             ) -> tuple[str, dict[str, object]]:
    """A package file (its bytes tell it apart) and its repodata record."""
    filename = f"{name}-{version}-{build}.conda"
    data = f"{subdir.name}/{filename}\n".encode()
    (subdir / filename).write_bytes(data)
    record: dict[str, object] = {
        "name": name, "version": version, "build": build, "build_number": 0, "depends": depends,
        "subdir": subdir.name, "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    if noarch:
        record["noarch"] = "python"
    return filename, record


def make_channel(root: Path) -> None:
    for subdir in (*PLATFORMS, "noarch"):
        (root / subdir).mkdir(parents=True)
        records = {}
        if subdir == "noarch":
            records.update([_package(root / subdir, "six", "1.16.0", "py_0", ["python"], noarch=True)])
        else:
            records.update([
                _package(root / subdir, "python", "3.11.7", "h0_0", []),
                _package(root / subdir, "fakenum", "1.0", "py311_0", ["python >=3.11,<3.12.0a0"]),
            ])
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": records}
        (root / subdir / "repodata.json").write_text(json.dumps(repodata))


def make_wheel(directory: Path, tag: str) -> Path:
    """A binary wheel of ``fakebin`` for one platform tag (it needs six, which conda provides)."""
    path = directory / f"fakebin-1.0-cp311-cp311-{tag}.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("fakebin/__init__.py", f"TAG = {tag!r}\n")
        whl.writestr("fakebin-1.0.dist-info/METADATA",
                     "Metadata-Version: 2.1\nName: fakebin\nVersion: 1.0\nRequires-Dist: six\n")
        whl.writestr("fakebin-1.0.dist-info/WHEEL",
                     f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: cp311-cp311-{tag}\n")
        whl.writestr("fakebin-1.0.dist-info/RECORD", "")
    return path


@pytest.fixture()
def fixture_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    make_channel(project / "mirror" / "channel")
    wheelhouse = project / "mirror" / "pip"
    wheelhouse.mkdir(parents=True)
    write_simple_index(wheelhouse, [make_wheel(wheelhouse, tag) for tag in WHEEL_TAG.values()])
    (project / "site.toml").write_text(textwrap.dedent(f"""
        name = "fixture"
        cache = "{tmp_path / 'cache'}"
        [channels.mirrors]
        conda-forge = "mirror/channel"
        [pip]
        wheelhouse = "mirror/pip"
    """))
    (project / "stacks").mkdir()
    (project / "stacks" / "tiny.toml").write_text(textwrap.dedent("""
        name = "tiny"
        prefix = "/data0/sw/tiny"
        platforms = ["linux-64", "linux-aarch64"]
        channels = ["conda-forge"]
        [dependencies]
        python = "3.11.*"
        fakenum = "*"
        six = "*"
        [pip.dependencies]
        fakebin = "*"
        [lock]
        virtual_packages = { __glibc = "2.36", __linux = "6.1", __unix = "0" }
    """))
    return project


@pytest.mark.slow
def test_lock_for_two_platforms_names_canonical_urls_only(fixture_project: Path, tmp_path: Path) -> None:
    site = load_site(fixture_project / "site.toml", fixture_project)
    stack = load_stack(fixture_project / "stacks" / "tiny.toml")
    result = lock(stack, site, fixture_project)
    text = result.path.read_text()
    data = yaml.safe_load(text)
    by_platform: dict[str, dict[str, str]] = {p: {} for p in PLATFORMS}
    for package in data["package"]:
        by_platform[package["platform"]][package["name"]] = package["url"]
    for platform in PLATFORMS:
        urls = by_platform[platform]
        assert set(urls) == {"python", "fakenum", "six", "fakebin"}
        assert urls["python"] == f"{CANONICAL}/{platform}/python-3.11.7-h0_0.conda"
        assert urls["six"] == f"{CANONICAL}/noarch/six-1.16.0-py_0.conda"
        # pip resolved for the target platform: each platform gets its own wheel, named on the index.
        assert urls["fakebin"] == f"{PYPI_INDEX}/fakebin/fakebin-1.0-cp311-cp311-{WHEEL_TAG[platform]}.whl"
    assert [c["url"] for c in data["metadata"]["channels"]] == [CANONICAL]
    for machine_path in (str(fixture_project), str(tmp_path), str(Path.home()), "file://", "127.0.0.1"):
        assert machine_path not in text

    # The same lock from another cache and mirror path is current: no machine path in its inputs.
    assert staleness(plan_lock(stack, site, fixture_project)) is None
    moved = tmp_path / "elsewhere"
    (fixture_project / "mirror").rename(moved)
    (fixture_project / "site.toml").write_text(
        (fixture_project / "site.toml").read_text().replace("mirror/", f"{moved}/").replace("/cache\"", "/cache2\""))
    assert staleness(plan_lock(stack, load_site(fixture_project / "site.toml", fixture_project),
                               fixture_project)) is None

    # conda-lock's own tools read the file, per platform.
    conda_lock = str(Path(sys.executable).with_name("conda-lock"))
    out = subprocess.run([conda_lock, "render", "--kind", "explicit", "-p", "linux-aarch64",
                          "--filename-template", str(tmp_path / "explicit-{platform}"), str(result.path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    explicit = (tmp_path / "explicit-linux-aarch64").read_text()
    assert f"{CANONICAL}/linux-aarch64/python-3.11.7-h0_0.conda" in explicit


@pytest.mark.slow
def test_a_mirror_that_lacks_or_changed_a_package_is_named(fixture_project: Path) -> None:
    from swstack.build import conda_item, plan_build
    from swstack.install import check_local_file
    from swstack.lock import read_lockfile

    site = load_site(fixture_project / "site.toml", fixture_project)
    stack = load_stack(fixture_project / "stacks" / "tiny.toml")
    result = lock(stack, site, fixture_project)
    packages = [p for p in read_lockfile(result.path).package if p.manager == "conda" and p.name == "fakenum"
                and p.platform == "linux-64"]
    item = conda_item(packages[0], site)
    local = fixture_project / "mirror/channel/linux-64/fakenum-1.0-py311_0.conda"
    assert item.url == f"{CANONICAL}/linux-64/fakenum-1.0-py311_0.conda" and item.source == local.as_uri()
    check_local_file(item.name, item.url, item.source, item.sha256)

    plan_build(stack, site, fixture_project)  # the build's plan checks every local mirror file

    local.write_bytes(b"other bytes\n")
    reason = staleness(plan_lock(stack, site, fixture_project))
    assert reason is not None and "fakenum" in reason and "other bytes" in reason
    with pytest.raises(BuildError) as changed:
        plan_build(stack, site, fixture_project)
    assert "\n" not in str(changed.value)
    assert str(changed.value).startswith("fakenum: ") and local.parent.parent.as_uri() in str(changed.value)
    assert "the lockfile says" in str(changed.value)

    local.unlink()
    with pytest.raises(BuildError) as missing:
        plan_build(stack, site, fixture_project)
    assert "\n" not in str(missing.value)
    assert f"fakenum: the mirror {local.parent.parent.as_uri()} has no {local.name}" in str(missing.value)


@pytest.mark.slow
def test_a_mirror_missing_a_file_its_index_lists_fails_the_lock_and_leaves_the_lockfile(fixture_project: Path) -> None:
    from swstack.errors import LockError

    site = load_site(fixture_project / "site.toml", fixture_project)
    stack = load_stack(fixture_project / "stacks" / "tiny.toml")
    path = lock(stack, site, fixture_project).path
    before = path.read_bytes()
    (fixture_project / "mirror/channel/linux-64/fakenum-1.0-py311_0.conda").unlink()  # repodata still lists it
    with pytest.raises(LockError) as failed:
        lock(stack, site, fixture_project)  # what every build does first
    assert "fakenum" in str(failed.value) and "restore the file in the mirror" in str(failed.value)
    assert path.read_bytes() == before  # no new timestamp, no churn in a committed file



@pytest.mark.slow
def test_a_wheelhouse_missing_or_changing_a_wheel_its_index_lists_fails_the_lock_in_one_line(
        fixture_project: Path) -> None:
    """As a conda mirror missing a file its index lists: one line naming the package, the wheel and the
    wheelhouse, not pip's error about a file on the resolver's own throwaway server; the lockfile stays."""
    from swstack.errors import LockError

    site = load_site(fixture_project / "site.toml", fixture_project)
    stack = load_stack(fixture_project / "stacks" / "tiny.toml")
    path = lock(stack, site, fixture_project).path
    before = path.read_bytes()
    wheelhouse = fixture_project / "mirror" / "pip"
    wheel = wheelhouse / f"fakebin-1.0-cp311-cp311-{WHEEL_TAG['linux-64']}.whl"
    data = wheel.read_bytes()
    wheel.unlink()  # simple/fakebin/ still lists it
    with pytest.raises(LockError) as missing:
        lock(stack, site, fixture_project)
    assert str(missing.value) == (f"fakebin: the site's wheelhouse {wheelhouse} has no {wheel.name}, which its index "
                                  "still lists; restore the file in the wheelhouse or rebuild the wheelhouse")
    other = data + b"\0"
    wheel.write_bytes(other)
    with pytest.raises(LockError) as changed:
        lock(stack, site, fixture_project)
    assert str(changed.value) == (
        f"fakebin: {wheel} has sha256 {hashlib.sha256(other).hexdigest()}, its index says "
        f"{hashlib.sha256(data).hexdigest()}; restore the file in the wheelhouse or rebuild the wheelhouse")
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_mirror_without_the_platform_says_so_not_relax_the_entries(fixture_project: Path) -> None:
    """Locking linux-aarch64 from a local mirror that has only linux-64 (as the offline channel): the
    solver finds no candidates, and the message says the mirror lacks the platform."""
    import shutil

    from swstack.errors import LockError

    shutil.rmtree(fixture_project / "mirror" / "channel" / "linux-aarch64")
    site = load_site(fixture_project / "site.toml", fixture_project)
    with pytest.raises(LockError) as failed:
        lock(load_stack(fixture_project / "stacks" / "tiny.toml"), site, fixture_project)
    mirror = (fixture_project / "mirror" / "channel").as_uri()
    assert str(failed.value).startswith(f"cannot solve tiny for linux-aarch64 from {mirror}:")
    assert str(failed.value).endswith(
        f"channel conda-forge: site 'fixture' serves it from {mirror}, which has no linux-aarch64 packages "
        "(no linux-aarch64/repodata.json); add linux-aarch64 to the mirror, or lock only the platforms it carries")
    assert "Relax or remove" not in str(failed.value)


@pytest.mark.slow
def test_a_channel_or_dependency_set_in_an_extended_file_is_named_where_it_is_set(fixture_project: Path) -> None:
    """A misspelt channel, or a dependency no package satisfies, in the file a stack extends: the
    message names that file and line, not the stack's own file (without a line, or its [dependencies])."""
    from swstack.errors import LockError

    stacks = fixture_project / "stacks"
    base = stacks.resolve() / "base.toml"
    base.write_text('# shared\nchannels = ["conda-froge"]\n[dependencies]\nsix = ">=99"\n')
    tiny = stacks / "tiny.toml"
    tiny.write_text('extends = "base.toml"\n' + tiny.read_text().replace('channels = ["conda-forge"]\n', "")
                    .replace('six = "*"\n', ""))
    site = load_site(fixture_project / "site.toml", fixture_project)
    with pytest.raises(LockError) as failed:
        lock(load_stack(tiny), site, fixture_project)
    assert str(failed.value).startswith(f"{base}:2: channels: cannot fetch the package index of conda-froge (")
    assert "channel 'conda-froge' has no mirror in site 'fixture' " in str(failed.value)

    base.write_text(base.read_text().replace("conda-froge", "conda-forge"))
    with pytest.raises(LockError) as unsolvable:
        lock(load_stack(tiny), site, fixture_project)
    assert f"\n{base}:4: dependencies.six = 'six >=99' is part of the conflict\n" in str(unsolvable.value)


def make_pure_wheel(directory: Path, name: str, requires: list[str]) -> Path:
    """A pure wheel of ``name`` 1.0 with the given ``Requires-Dist`` lines."""
    path = directory / f"{name}-1.0-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/__init__.py", "")
        whl.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        whl.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                     "Tag: py3-none-any\n")
        whl.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


@pytest.mark.slow
def test_pip_markers_are_evaluated_for_the_target_platform(fixture_project: Path) -> None:
    """A requirement with a ``platform_machine`` marker resolves as on the target, not as on the
    machine that locks: each platform gets the dependency its own machine needs, and only that."""
    wheelhouse = fixture_project / "mirror" / "pip"
    wheels = sorted(wheelhouse.glob("*.whl"))
    wheels += [make_pure_wheel(wheelhouse, "armdep", []), make_pure_wheel(wheelhouse, "x86dep", []),
               make_pure_wheel(wheelhouse, "fakemark", ['armdep; platform_machine == "aarch64"',
                                                         'x86dep; platform_machine == "x86_64"'])]
    write_simple_index(wheelhouse, wheels)
    stack_file = fixture_project / "stacks" / "tiny.toml"
    stack_file.write_text(stack_file.read_text().replace('fakebin = "*"', 'fakebin = "*"\nfakemark = "*"'))
    site = load_site(fixture_project / "site.toml", fixture_project)
    result = lock(load_stack(stack_file), site, fixture_project)
    pip = {p: set() for p in PLATFORMS}
    for package in yaml.safe_load(result.path.read_text())["package"]:
        if package["manager"] == "pip":
            pip[package["platform"]].add(package["name"])
            if package["name"] == "fakemark":  # what it needs there, as the lockfile lists it
                assert set(package["dependencies"]) == {"armdep" if package["platform"] == "linux-aarch64"
                                                        else "x86dep"}
    assert pip == {"linux-64": {"fakebin", "fakemark", "x86dep"},
                   "linux-aarch64": {"fakebin", "fakemark", "armdep"}}


# What a git dependency's setup.py sees, said in the error it stops pip with: nothing it could write
# outside would reach the test, its /tmp being its own.
SETUP_PROBE = """
import json, os, socket
seen = {"etc_writable": os.access("/etc", os.W_OK), "keys": sorted(os.listdir(KEYS)),
        "host_tmp": [p for p in (HOST_FILE, HOST_SOCKET) if os.path.lexists(p)]}
with open(LEAVE, "w") as fh:
    fh.write("left behind")
raise SystemExit("PROBE " + json.dumps(seen))
"""


def test_resolving_a_git_dependency_runs_its_build_confined(tmp_path: Path) -> None:
    """pip runs a git dependency's setup.py to read its metadata: the stack's code, at lock time on the
    build machine. It runs in a private root: the host read-only, the site's signing keys hidden, a
    /tmp of its own (without the host's files and sockets, gone afterwards)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from swstack.errors import LockError
    from swstack.lock import _solve_pip

    root = Path(__file__).resolve().parents[2]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "cosign.key").write_text("PRIVATE")
    host_file, host_socket = tmp_path / "id_secret", tmp_path / "agent.sock"
    host_file.write_text("another user's file")
    leave = Path(f"/tmp/swstack-left-behind-{uuid.uuid4().hex}")
    repo = tmp_path / "repo"
    repo.mkdir()
    names = {"KEYS": keys, "HOST_FILE": host_file, "HOST_SOCKET": host_socket, "LEAVE": leave}
    (repo / "setup.py").write_text("".join(f"{k} = {str(v)!r}\n" for k, v in names.items()) + SETUP_PROBE)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "probe"]):
        subprocess.run([*git, *args], check=True)
    stack_file = tmp_path / "probe.toml"
    stack_file.write_text(textwrap.dedent(f"""\
        name = "probe"
        channels = ["conda-forge"]
        [dependencies]
        python = "3.11.*"
        [pip.dependencies]
        probe = {{ git = "file://{repo}", ref = "HEAD" }}
        """))
    site = replace(load_site(root / "sites/offline.toml", root), signing_keys=keys)
    python = SimpleNamespace(name="python", version="3.11.9", dependencies={})
    with socket.socket(socket.AF_UNIX) as agent:
        agent.bind(str(host_socket))
        try:
            with pytest.raises(LockError, match="PROBE") as caught:
                _solve_pip(load_stack(stack_file), site, {"python": python}, "linux-64")
            seen = re.search(r"PROBE (\{.*\})", str(caught.value))
            assert seen and json.loads(seen.group(1)) == {"etc_writable": False, "keys": [], "host_tmp": []}
            assert not leave.exists()
        finally:
            leave.unlink(missing_ok=True)


def test_an_unsolvable_lock_error_holds_nothing_of_the_solver(fixture_project: Path) -> None:
    """The solver's error (and through its frames the gateway) is not the LockError's context: kept to
    the interpreter's exit, the gateway was dropped during finalization (see the test below)."""
    from swstack.errors import LockError

    stack_file = fixture_project / "stacks" / "tiny.toml"
    stack_file.write_text(stack_file.read_text().replace('fakenum = "*"', 'fakenum = ">=99"'))
    site = load_site(fixture_project / "site.toml", fixture_project)
    with pytest.raises(LockError) as failed:
        lock(load_stack(stack_file), site, fixture_project)
    assert "fakenum" in str(failed.value)
    assert failed.value.__context__ is None and failed.value.__cause__ is None


def test_the_lock_waits_for_a_runtime_thread_to_let_go_of_the_gateway() -> None:
    """After a failed solve rattler's runtime threads hold the gateway for about 0.1 s; `doit lock`
    exiting in that window had them drop it during finalization, which aborted the process (exit
    -6 after its message, seen in one full test run of three). The lock now waits for them."""
    import threading
    import time

    from swstack.lock import _wait_until_only_ours

    class Held:
        pass

    gateway = Held()
    let_go = threading.Event()

    def runtime_thread(held: object) -> None:
        time.sleep(0.1)
        let_go.set()
        del held

    threading.Thread(target=runtime_thread, args=(gateway,)).start()
    _wait_until_only_ours(gateway)
    assert let_go.is_set()
