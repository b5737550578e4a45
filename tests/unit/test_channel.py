"""Unit tests of the channel's pure parts: wheel list, name mapping, markers, planning, keys."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from swstack.errors import ChannelError
from swstack.offline_channel import build as channel_build
from swstack.offline_channel import cpython, labclient
from swstack.offline_channel import plan as channel_plan
from swstack.offline_channel import wheels as channel_wheels
from swstack.offline_channel.cpython import DebPackage, read_recipe
from swstack.offline_channel.plan import plan_channel
from swstack.offline_channel.python import PythonBuild, python_keep
from swstack.offline_channel.wheels import (
    PinnedWheel,
    conda_name,
    conda_run_deps,
    conda_spec,
    parse_wheel_list,
    runtime_requirements,
)

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"rattler-build": "0.73.0", "whl2conda": "26.7.2"}
CPYTHON = read_recipe(REPO / "channel" / "recipes" / "python" / "cpython.toml")
PY = PythonBuild(
    recipe=CPYTHON, compile_key="f" * 32, libraries=(DebPackage("libffi8", "libffi8_3.4.4-1_amd64.deb", "f" * 64),)
)
SHA_A = "a" * 64
SHA_B = "b" * 64


def wheels(hub_sha: str = SHA_A) -> list[PinnedWheel]:
    return [
        PinnedWheel("jupyterhub", "6.1.1", hub_sha, "jupyterhub-6.1.1-py3-none-any.whl"),
        PinnedWheel("numpy", "2.4.6", SHA_B, "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"),
        PinnedWheel("jupyter-server", "2.21.1", SHA_A, "jupyter_server-2.21.1-py3-none-any.whl"),
    ]


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    dest = tmp_path / "recipes"
    shutil.copytree(REPO / "channel" / "recipes", dest)
    return dest


def test_the_committed_wheel_list_parses_and_is_pinned() -> None:
    pinned = parse_wheel_list((REPO / "channel" / "wheels.txt").read_text())
    names = {w.name for w in pinned}
    assert {"jupyterlab", "ipykernel", "numpy", "ipywidgets", "jupyterhub", "traitlets", "tornado"} <= names
    assert all(len(w.sha256) == 64 and w.filename.endswith(".whl") for w in pinned)
    hub = next(w for w in pinned if w.name == "jupyterhub")
    assert hub.version.startswith("6.")


def test_wheel_list_rejects_a_line_without_hash() -> None:
    with pytest.raises(ChannelError, match=r"wheels.txt:2: expected"):
        parse_wheel_list("# header\nnumpy==2.0\n")


def test_wheel_list_roundtrips() -> None:
    text = channel_wheels.format_wheel_list(wheels(), "# h")
    assert parse_wheel_list(text) == tuple(sorted(wheels(), key=lambda w: w.name))


@pytest.mark.parametrize(
    ("pypi", "conda"),
    [
        ("jupyter-server", "jupyter_server"),
        ("Jupyter_Client", "jupyter_client"),
        ("jupyterlab-widgets", "jupyterlab_widgets"),
        ("typing-extensions", "typing_extensions"),
        ("PyYAML", "pyyaml"),
        ("python-dateutil", "python-dateutil"),
        ("tzdata", "python-tzdata"),
        ("Send2Trash", "send2trash"),
    ],
)
def test_conda_names_follow_conda_forge(pypi: str, conda: str) -> None:
    assert conda_name(pypi) == conda


def test_conda_spec_translates_pep440() -> None:
    assert conda_spec(Requirement("Jupyter-Server>=2.4,<3")) == "jupyter_server <3,>=2.4"
    assert conda_spec(Requirement("jupyterlab_widgets~=3.0.17")) == "jupyterlab_widgets <3.1,>=3.0.17"
    assert conda_spec(Requirement("comm")) == "comm"


def test_markers_are_evaluated_for_linux_cpython_311() -> None:
    reqs = runtime_requirements(
        [
            "appnope; platform_system == 'Darwin'",
            "pywin32; sys_platform == 'win32'",
            "exceptiongroup; python_version < '3.11'",
            "tomli>=1; python_version < '3.11'",
            "typing-extensions>=4; python_version < '3.12'",
            "pexpect>4.3; sys_platform != 'win32' and sys_platform != 'emscripten'",
            "pytest; extra == 'test'",
            "traitlets>=5",
        ]
    )
    assert [r.name for r in reqs] == ["typing-extensions", "pexpect", "traitlets"]


def test_run_deps_pin_python_for_binary_wheels_only() -> None:
    binary = conda_run_deps(["cffi>=1.0"], ">=3.9", binary=True)
    assert binary == ("python >=3.11,<3.12.0a0", "cffi >=1.0")
    pure = conda_run_deps(["Jupyter-Core>=5; python_version >= '3.8'"], ">=3.9", binary=False)
    assert pure == ("python >=3.9", "jupyter_core >=5")


def test_plan_lists_every_kind(recipes: Path) -> None:
    plan = plan_channel(recipes, wheels(), PY, TOOLS)
    kinds = {j.name: j.kind for j in plan.jobs}
    assert kinds["python"] == "python"
    assert kinds["sitepaths"] == "recipe"
    assert kinds["jupyterhub-singleuser"] == "recipe"
    assert kinds["jupyterhub"] == "noarch-wheel"
    assert kinds["numpy"] == "binary-wheel"
    assert kinds["jupyter_server"] == "noarch-wheel"
    assert dict(plan.job("jupyterhub-singleuser").env) == {"SWSTACK_JUPYTERHUB_VERSION": "6.1.1"}
    assert plan.jobs[0].name == "python"  # built first: binary wheels need it


def test_plan_is_deterministic(recipes: Path) -> None:
    assert plan_channel(recipes, wheels(), PY, TOOLS) == plan_channel(recipes, wheels(), PY, TOOLS)


def keys(
    recipes: Path, ws: list[PinnedWheel] | None = None, py: PythonBuild = PY, tools: dict[str, str] = TOOLS
) -> dict[str, str]:
    return {j.name: j.key for j in plan_channel(recipes, ws or wheels(), py, tools).jobs}


def test_key_changes_when_a_recipe_file_changes(recipes: Path) -> None:
    before = keys(recipes)
    src = recipes / "sitepaths" / "sitepaths.c"
    src.write_text(src.read_text() + "/* changed */\n")
    after = keys(recipes)
    assert after["sitepaths"] != before["sitepaths"]
    assert {k: v for k, v in after.items() if k != "sitepaths"} == {
        k: v for k, v in before.items() if k != "sitepaths"
    }


def test_key_changes_when_a_wheel_hash_changes(recipes: Path) -> None:
    before = keys(recipes)
    after = keys(recipes, wheels(hub_sha=hashlib.sha256(b"other").hexdigest()))
    assert after["jupyterhub"] != before["jupyterhub"]
    assert after["numpy"] == before["numpy"]
    assert after["python"] == before["python"]


def test_key_changes_with_the_python_build_and_converters(recipes: Path) -> None:
    before = keys(recipes)
    recompiled = PythonBuild(recipe=CPYTHON, compile_key="e" * 32, libraries=PY.libraries)
    assert keys(recipes, py=recompiled)["python"] != before["python"]
    newer_lib = PythonBuild(recipe=CPYTHON, compile_key=PY.compile_key,
                            libraries=(DebPackage("libffi8", "libffi8_3.4.4-2_amd64.deb", "e" * 64),))
    assert keys(recipes, py=newer_lib)["python"] != before["python"]
    assert keys(recipes, py=newer_lib)["numpy"] != before["numpy"]  # it records python's hash
    newer = {**TOOLS, "whl2conda": "27.0"}
    changed = keys(recipes, tools=newer)
    assert changed["jupyterhub"] != before["jupyterhub"]
    assert changed["numpy"] == before["numpy"]


def test_plan_refuses_hub_metapackage_without_hub(recipes: Path) -> None:
    with pytest.raises(ChannelError, match="jupyterhub"):
        plan_channel(recipes, [w for w in wheels() if w.name != "jupyterhub"], PY, TOOLS)


def test_channel_inputs_cover_recipes_wheels_and_client() -> None:
    inputs = channel_build.channel_inputs(REPO / "channel" / "recipes")
    rel = {str(p.relative_to(REPO)) for p in inputs if REPO in p.parents}
    assert "channel/wheels.txt" in rel
    assert "channel/recipes/sitepaths/sitepaths.c" in rel
    assert "channel/recipes/python/cpython.toml" in rel
    assert "clients/labclient/pyproject.toml" in rel


@pytest.mark.parametrize(
    ("rel", "kept"),
    [
        ("bin/python3.11", True),
        ("bin/pip3", True),
        ("bin/jupyter", False),
        ("lib/libpython3.11.so.1.0", True),
        ("lib/python3.11/os.py", True),
        ("lib/python3.11/site-packages/pip/__init__.py", True),
        ("lib/python3.11/site-packages/pip-23.2.1.dist-info/METADATA", True),
        ("lib/python3.11/site-packages/numpy/__init__.py", False),
        ("lib/python3.11/test/test_os.py", False),
        ("lib/python3.11/unittest/test/test_case.py", False),
        ("lib/python3.11/tkinter/__init__.py", False),
        ("lib/python3.11/__pycache__/os.cpython-311.pyc", False),
        ("lib/python3.11/config-3.11-x86_64-linux-gnu/libpython3.11.a", False),
        ("lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", True),
        ("lib/python3.11/lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so", False),
        ("include/python3.11/Python.h", True),
        ("share/man/man1/python3.11.1", True),
        ("share/man/man1/ipython.1", False),
    ],
)
def test_python_package_contents(rel: str, kept: bool) -> None:
    assert python_keep(Path(rel), "3.11.2") is kept


def test_the_committed_cpython_recipe_pins_debian_source_and_maps_every_library() -> None:
    assert CPYTHON.version == "3.11.2"
    assert CPYTHON.url.startswith("http://deb.debian.org/debian/pool/main/p/python3.11/")
    assert CPYTHON.tarball_name == "python3.11_3.11.2.orig.tar.gz"
    assert len(CPYTHON.sha256) == 64
    assert {"libssl.so.3", "libsqlite3.so.0", "libffi.so.8", "libreadline.so.8", "libuuid.so.1"} <= set(
        CPYTHON.libraries
    )
    assert "libssl-dev" in CPYTHON.build_depends


def test_cpython_recipe_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "cpython.toml"
    bad.write_text(
        '[source]\nversion = "3.11.2"\nurl = "u"\nsha256 = "nothex"\n'
        '[build]\ndepends = []\n[libraries]\n"libz.so.1" = "zlib1g"\n'
    )
    with pytest.raises(ChannelError, match=r"cpython.toml: source.sha256: not a sha256"):
        read_recipe(bad)
    bad.write_text('[source]\nversion = "3.11.2"\n')
    with pytest.raises(ChannelError, match=r"cpython.toml: source.url: missing"):
        read_recipe(bad)


def test_apt_print_uris_parse_into_packages_with_sha256() -> None:
    text = (
        "'http://deb.debian.org/debian/pool/main/libx/libxcrypt/libcrypt1_4.4.33-2_amd64.deb' "
        "libcrypt1_1%3a4.4.33-2_amd64.deb 89464 SHA256:" + "a" * 64 + "\n"
        "'http://deb.debian.org/debian/pool/main/b/bzip2/libbz2-1.0_1.0.8-5%2bb1_amd64.deb' "
        "libbz2-1.0_1.0.8-5+b1_amd64.deb 47348 SHA256:" + "b" * 64 + "\n"
    )
    assert cpython.parse_print_uris(text) == (
        DebPackage("libbz2-1.0", "libbz2-1.0_1.0.8-5+b1_amd64.deb", "b" * 64),
        DebPackage("libcrypt1", "libcrypt1_1%3a4.4.33-2_amd64.deb", "a" * 64),
    )


def test_compile_key_follows_compiler_and_build_packages_and_needs_them_installed() -> None:
    versions = {"gcc": "4:12.2.0-3", "libssl-dev": "3.0.19-1~deb12u2"}
    key = cpython.compile_key(CPYTHON, versions, "gcc 12.2.0")
    assert key == cpython.compile_key(CPYTHON, dict(versions), "gcc 12.2.0")
    assert key != cpython.compile_key(CPYTHON, {**versions, "libssl-dev": "3.0.22-1~deb12u2"}, "gcc 12.2.0")
    assert key != cpython.compile_key(CPYTHON, versions, "gcc 13.1.0")
    with pytest.raises(ChannelError, match="needs the Debian packages libssl-dev: run scripts/setup"):
        cpython.compile_key(CPYTHON, {**versions, "libssl-dev": ""}, "gcc 12.2.0")


def test_binary_wheel_recipe_renders_deps_and_wheel(tmp_path: Path) -> None:
    plan = plan_channel(REPO / "channel" / "recipes", wheels(), PY, TOOLS)
    job = plan.job("numpy")
    text = channel_plan.render_binary_wheel_recipe(job, tmp_path / "n.whl", ("python >=3.11,<3.12.0a0",), "NumPy")
    assert "name: numpy" in text and 'version: "2.4.6"' in text
    assert '- "python >=3.11,<3.12.0a0"' in text
    assert str(tmp_path / "n.whl") in text
    assert "pip install --no-deps --no-index" in text


def test_simple_index_has_sha256_fragments(tmp_path: Path) -> None:
    whl = tmp_path / "labclient-1.0.0-py3-none-any.whl"
    whl.write_bytes(b"wheel")
    labclient.write_simple_index(tmp_path, [whl])
    page = (tmp_path / "simple" / "labclient" / "index.html").read_text()
    assert f"#sha256={hashlib.sha256(b'wheel').hexdigest()}" in page
    assert 'href="../../labclient-1.0.0-py3-none-any.whl' in page


def test_wheelhouse_file_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    pinned = PinnedWheel("comm", "0.2.3", SHA_A, "comm-0.2.3-py3-none-any.whl")
    (house / pinned.filename).write_bytes(b"not the pinned wheel")
    with pytest.raises(ChannelError, match="does not match"):
        channel_wheels.fetch_wheels([pinned], tmp_path / "cache", wheelhouse=house)
    assert not channel_wheels.wheel_cache_path(tmp_path / "cache", pinned).exists()


def test_wheelhouse_wheel_is_taken_when_its_hash_matches(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    data = b"pretend wheel"
    pinned = PinnedWheel("comm", "0.2.3", hashlib.sha256(data).hexdigest(), "comm-0.2.3-py3-none-any.whl")
    (house / pinned.filename).write_bytes(data)
    got = channel_wheels.fetch_wheels([pinned], tmp_path / "cache", wheelhouse=house)
    assert got["comm"].read_bytes() == data


def test_labclient_repository_is_deterministic(tmp_path: Path) -> None:
    client = REPO / "clients" / "labclient"
    sha1 = labclient.make_labclient_repo(client, tmp_path / "a" / "labclient.git", tmp_path / "wa")
    sha2 = labclient.make_labclient_repo(client, tmp_path / "b" / "labclient.git", tmp_path / "wb")
    assert sha1 == sha2
    assert (tmp_path / "a" / "labclient.git" / "HEAD").is_file()


def test_setup_installs_every_package_the_cpython_compile_needs() -> None:
    import re

    setup = (REPO / "scripts" / "setup").read_text()
    m = re.search(r"CPYTHON_BUILD_DEBS=\(([^)]*)\)", setup)
    assert m is not None
    assert sorted(m[1].split()) == sorted(CPYTHON.build_depends)


def test_a_linked_library_outside_the_table_fails_naming_its_soname(tmp_path: Path) -> None:
    # Debian's ls links libselinux, which the python package has no business bundling.
    with pytest.raises(ChannelError, match=r"CPython links libselinux.so.1, which .*cpython.toml's \[libraries\]"):
        cpython.bundle_libraries([Path("/bin/ls")], CPYTHON.libraries, {}, tmp_path / "lib", tmp_path / "debs")


def test_a_source_tarball_with_other_bytes_is_refused_and_removed(tmp_path: Path) -> None:
    tarball = tmp_path / "cpython" / "src" / CPYTHON.tarball_name
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"not CPython")
    with pytest.raises(ChannelError, match=r"python3.11_3.11.2.orig.tar.gz: sha256 [0-9a-f]{64}, cpython.toml pins"):
        cpython.fetch_source(CPYTHON, tmp_path)
    assert not tarball.exists()
