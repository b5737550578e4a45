"""The offline channel end to end: build it, solve against it alone, install into two
prefixes and run what the stacks need; a second build reuses every package."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from swstack import paths
from swstack.offline_channel import ChannelReport, build_channel, python_is_current

REPO = Path(__file__).resolve().parents[2]
SPECS = [
    "python 3.11.*",
    "ipykernel",
    "numpy",
    "jupyterlab",
    "ipywidgets",
    "jupyterhub-singleuser",
    "sitepaths",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ChannelReport]:
    out = tmp_path_factory.mktemp("channel") / "channel"
    report = build_channel(out, recipes_dir=REPO / "channel" / "recipes", cache_dir=paths.cache_dir())
    return out, report


def install(channel: Path, prefix: Path, specs: Sequence[str]) -> int:
    from rattler import Channel, Subdir, VirtualPackage, install, solve

    async def go() -> int:
        records = await solve(
            [Channel(channel.as_uri())],
            list(specs),
            platforms=[Subdir("linux-64"), Subdir("noarch")],
            virtual_packages=[v.into_generic() for v in VirtualPackage.detect()],
        )
        await install(records, target_prefix=str(prefix))
        return len(records)

    return asyncio.run(go())


def run(prefix: Path, *argv: str) -> str:
    # A bare environment: nothing from the test's own interpreter may leak in.
    env = {
        "PATH": f"{prefix}/bin:/usr/bin:/bin",
        "HOME": str(prefix.parent),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,  # only the channel's wheelhouse, no site pip config
    }
    result = subprocess.run(
        [str(prefix / "bin" / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def test_channel_layout(built: tuple[Path, ChannelReport]) -> None:
    out, _ = built
    for sub in ("linux-64", "noarch"):
        assert (out / sub / "repodata.json").is_file()
    assert (out / "pip" / "labclient-1.0.0-py3-none-any.whl").is_file()
    assert "#sha256=" in (out / "pip" / "simple" / "labclient" / "index.html").read_text()
    git = ["git", "--git-dir", str(out / "git" / "labclient.git")]
    assert subprocess.run([*git, "tag"], capture_output=True, text=True).stdout.split() == ["v1.0.0"]
    main_version = subprocess.run(
        [*git, "show", "main:src/labclient/__init__.py"], capture_output=True, text=True
    )
    assert '"1.1.0.dev0"' in main_version.stdout
    assert not list(out.parent.glob("*.partial"))


def test_solve_install_and_run_in_two_prefixes(built: tuple[Path, ChannelReport], tmp_path: Path) -> None:
    out, _ = built
    for prefix in (tmp_path / "a", tmp_path / "a-much-longer-second-prefix"):
        assert install(out, prefix, SPECS) > 50
        assert run(
            prefix, "python", "-c",
            "import sys, ssl, sqlite3, ctypes, zlib, lzma, bz2, readline, uuid, curses, _curses_panel, crypt;"
            "print(sys.prefix)",
        ) == str(prefix)
        assert run(prefix, "python", "-c", "import platform; print(platform.python_version())") == "3.11.2"
        assert run(prefix, "python", "-c", "import numpy as np; print(int(np.arange(10).sum()))") == "45"
        assert run(prefix, "sitepaths").splitlines() == [f"prefix: {prefix}", "site: swstack sitepaths"]
        assert "pip" in run(prefix, "pip", "--version")
        assert run(prefix, "jupyter", "lab", "--version").startswith("4.")
        assert run(prefix, "jupyterhub-singleuser", "--version").startswith("6.")
        assert "jupyterlab_widgets" in run(prefix, "jupyter", "labextension", "list") + run(
            prefix, "python", "-c", "import jupyterlab_widgets; print(jupyterlab_widgets.__name__)"
        )


def build_id(elf: Path) -> str:
    notes = subprocess.run(["readelf", "-n", str(elf)], capture_output=True, text=True, check=True).stdout
    (found,) = [line.split(":", 1)[1].strip() for line in notes.splitlines() if "Build ID" in line]
    return found


def test_python_is_compiled_from_the_pinned_source_with_libraries_from_debian_packages(
    built: tuple[Path, ChannelReport], tmp_path: Path
) -> None:
    """The interpreter is the one cpython.toml pins (fixed build date, fixed build directory),
    and every bundled library is the file from the candidate .deb the build downloaded."""
    from swstack.offline_channel.cpython import COMPILE_DIR
    from swstack.offline_channel.python import pinned_python

    out, _ = built
    prefix = tmp_path / "p"
    install(out, prefix, ["python 3.11.*"])
    # SOURCE_DATE_EPOCH (2024-01-01), not the day of the compile.
    assert run(prefix, "python", "-c", "import platform; print(platform.python_build()[1])") == "Jan  1 2024 00:00:00"
    libpython = (prefix / "lib" / "libpython3.11.so.1.0").read_bytes()
    assert b"python-build." not in libpython and str(Path.home()).encode() not in libpython
    assert str(COMPILE_DIR).encode() in libpython  # the fixed install prefix, a fallback only
    # Every pyc is an unchecked-hash one (flags 1): a timestamp pyc would hold the day
    # CPython was compiled (its sources' mtimes), which differs between two compiles.
    pycs = list((prefix / "lib" / "python3.11").rglob("*.pyc"))
    assert len(pycs) > 1000
    assert [p for p in pycs if p.read_bytes()[4:8] != b"\x01\0\0\0"] == []
    python = pinned_python(REPO / "channel" / "recipes" / "python")
    debs = {d.name: paths.cache_dir() / "cpython" / "debs" / d.filename for d in python.libraries}
    unpacked = tmp_path / "debs"
    for soname, package in python.recipe.libraries.items():
        bundled = prefix / "lib" / soname
        assert bundled.is_file(), soname
        tree = unpacked / package
        if not tree.is_dir():
            unpacked.mkdir(exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(debs[package]), str(tree)], check=True)
        (from_deb,) = [p for p in tree.rglob(soname) if "x86_64-linux-gnu" in str(p)]
        # The same build (GNU build id) as the .deb's file: patchelf changed only its RUNPATH.
        assert build_id(bundled) == build_id(from_deb.resolve()), f"{soname} is not {package}'s"


def test_labclient_installs_from_the_wheelhouse_over_conda_deps(
    built: tuple[Path, ChannelReport], tmp_path: Path
) -> None:
    out, _ = built
    prefix = tmp_path / "p"
    install(out, prefix, ["python 3.11.*", "traitlets", "tornado"])
    log = run(
        prefix,
        "python",
        "-m",
        "pip",
        "install",
        "--index-url",
        (out / "pip" / "simple").as_uri(),
        "labclient",
    )
    # traitlets and tornado came from conda: pip sees them installed and installs labclient alone.
    assert "Successfully installed labclient-1.0.0" in log
    assert run(prefix, "labclient", "--version") == "labclient 1.0.0"
    assert run(prefix, "python", "-m", "pip", "check").startswith("No broken requirements")


def test_second_build_reuses_everything(built: tuple[Path, ChannelReport]) -> None:
    out, first = built
    again = build_channel(out, recipes_dir=REPO / "channel" / "recipes", cache_dir=paths.cache_dir())
    assert again.built == ()
    assert len(again.reused) == len(first.built) + len(first.reused)
    # doit's uptodate: the channel holds the python package of today's compiler and apt state.
    assert python_is_current(out, REPO / "channel" / "recipes")
    (out / "python-key").write_text("0" * 32 + "\n")
    assert not python_is_current(out, REPO / "channel" / "recipes")
    assert again.seconds < 60
    assert (out / "noarch" / "repodata.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial") or p.name.endswith(".old")]


def test_a_failing_recipe_names_the_package_and_leaves_no_channel(tmp_path: Path) -> None:
    import shutil

    from swstack.errors import ChannelError

    shutil.copytree(REPO / "channel", tmp_path / "channel")
    shutil.copytree(REPO / "clients" / "labclient", tmp_path / "clients" / "labclient")
    source = tmp_path / "channel" / "recipes" / "sitepaths" / "sitepaths.c"
    source.write_text(source.read_text() + "\nthis is not C;\n")
    out = tmp_path / "out" / "channel"
    with pytest.raises(ChannelError) as info:
        build_channel(out, recipes_dir=tmp_path / "channel" / "recipes", cache_dir=paths.cache_dir())
    message = str(info.value)
    assert "sitepaths" in message
    assert "error" in message.lower()
    assert not out.exists()


# One package of each kind: CPython, a C program, a metapackage, noarch wheels (one renamed
# to conda-forge's name), a binary wheel with .pyc files and a C extension.
REPRODUCIBLE_SUBSET = ("python", "sitepaths", "jupyterhub-singleuser", "six", "jupyter_server", "markupsafe")


def repodata_entries(channel: Path) -> dict[str, dict[str, object]]:
    import json

    entries: dict[str, dict[str, object]] = {}
    for sub in ("linux-64", "noarch"):
        data = json.loads((channel / sub / "repodata.json").read_text())
        for name, record in data.get("packages.conda", {}).items():
            entries[f"{sub}/{name}"] = {k: record[k] for k in ("sha256", "md5", "size", "timestamp")}
    return entries


def info_texts(package: Path) -> dict[str, str]:
    """The text of a package's ``info/`` files (recipe, about.json, paths.json, ...)."""
    from conda_package_streaming.package_streaming import stream_conda_info

    texts = {}
    with open(package, "rb") as fh:
        for tar, member in stream_conda_info(package.name, fh):
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                texts[member.name] = extracted.read().decode(errors="replace")
    return texts


def test_two_cold_builds_in_caches_at_different_paths_make_identical_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds with empty caches at different paths and different homes (as on two fresh
    machines, for two users) give the same bytes for every package, so a lockfile's sha256/md5
    stay valid wherever the channel is rebuilt. No fact of the machine is inside a package:
    not the cache, the home, the kernel's version or the CPU's level (rattler-build records
    virtual packages)."""
    import hashlib
    import platform

    from swstack.offline_channel.target import BUILD_VIRTUAL_PACKAGES

    real_home = str(Path.home())
    outs = []
    caches = {"one": tmp_path / "cache-one", "two": tmp_path / "elsewhere" / "much" / "deeper" / "cache-two"}
    for run_id, cache in caches.items():
        cache.mkdir(parents=True)
        home = tmp_path / f"home-{run_id}"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        # Wheels, CPython's source, its Debian packages and the compiled CPython are shared:
        # all are pinned by hash or keyed by every input (the compile was checked twice by
        # hand, docs/channel.md); staging and packaging python run twice.
        for shared in ("wheels", "cpython"):
            (paths.cache_dir() / shared).mkdir(parents=True, exist_ok=True)
            (cache / shared).symlink_to(paths.cache_dir() / shared, target_is_directory=True)
        out = cache / "offline-channel"
        report = build_channel(
            out, recipes_dir=REPO / "channel" / "recipes", cache_dir=cache, only=REPRODUCIBLE_SUBSET
        )
        assert sorted(report.built) == sorted(REPRODUCIBLE_SUBSET) and report.reused == ()
        outs.append(out)
    one, two = (repodata_entries(out) for out in outs)
    assert len(one) == len(REPRODUCIBLE_SUBSET)
    assert one == two
    machine = [str(tmp_path), real_home, str(paths.cache_dir())]
    kernel = platform.release().split("-")[0]
    if kernel != BUILD_VIRTUAL_PACKAGES["CONDA_OVERRIDE_LINUX"]:
        machine.append(f"__linux={kernel}=")
    rendered = []
    for rel in one:
        a, b = (hashlib.sha256((out / rel).read_bytes()).hexdigest() for out in outs)
        assert a == b, f"{rel} differs between the two builds"
        for name, text in info_texts(outs[0] / rel).items():
            for fact in machine:
                assert fact not in text, f"{rel}: {name} holds {fact!r}, a fact of the build machine"
            if name == "info/recipe/rendered_recipe.yaml":
                rendered.append(rel)
                assert f"__linux={BUILD_VIRTUAL_PACKAGES['CONDA_OVERRIDE_LINUX']}=0" in text
                assert f"__archspec=1={BUILD_VIRTUAL_PACKAGES['CONDA_OVERRIDE_ARCHSPEC']}" in text
    # python, sitepaths, jupyterhub-singleuser and markupsafe are built by rattler-build (the
    # wheels repackaged as noarch have no rendered recipe): the checks above ran on each.
    assert len(rendered) == 4, rendered
