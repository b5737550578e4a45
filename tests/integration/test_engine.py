"""The engine module against the real Docker engine: base and builder images, run, build, import.

Needs an engine (the README's test command starts one through scripts/with-engine).
Without one these tests fail with the message a user would see; they never skip.
"""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swstack import baseimage
from swstack.engine import DockerEngine
from swstack.errors import ImageError, SandboxError
from swstack.paths import cache_dir

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine() -> DockerEngine:
    found = DockerEngine()
    try:
        found.ping()
    except SandboxError as exc:  # no engine: fail with the user's message, never skip
        pytest.fail(str(exc), pytrace=False)
    return found


@pytest.fixture(scope="module")
def base(engine: DockerEngine) -> str:
    return baseimage.ensure_base(engine)


@pytest.fixture(scope="module")
def builder(engine: DockerEngine) -> str:
    return baseimage.ensure_builder(engine)


@pytest.fixture
def scratch_tag(engine: DockerEngine) -> Iterator[str]:
    tag = f"swstack/test-scratch:{time.monotonic_ns()}"
    yield tag
    engine.remove_image(tag, force=True)


def test_base_image_is_debian_12_from_a_cached_rootfs(engine: DockerEngine, base: str) -> None:
    spec = baseimage.load_base_spec()
    assert base == spec.tag and engine.image_exists(base)
    assert (cache_dir() / "base" / spec.tarball_name).is_file()
    result = engine.run(base, ["cat", "/etc/debian_version"], network=False)
    assert result.exit_code == 0 and result.tail.startswith("12.")


def test_builder_imports_the_build_tools_at_the_host_versions(engine: DockerEngine, builder: str) -> None:
    code = (
        "import rattler, conda_pack, zstandard, pydantic, yaml; from importlib.metadata import version;"
        "print(version('py-rattler'), version('conda-pack'), version('zstandard'))"
    )
    result = engine.run(builder, [baseimage.BUILDER_PYTHON, "-c", code], network=False)
    want = " ".join(importlib.metadata.version(n) for n in ("py-rattler", "conda-pack", "zstandard"))
    assert result.tail.splitlines()[-1] == want


def test_builder_has_the_runtime_libraries_of_a_conda_python(engine: DockerEngine, builder: str) -> None:
    libs = ["libssl.so.3", "libffi.so.8", "libsqlite3.so.0", "libz.so.1", "libbz2.so.1.0", "liblzma.so.5"]
    libs += ["libreadline.so.8", "libncursesw.so.6", "libgdbm.so.6", "libuuid.so.1"]
    code = "import ctypes, sys; [ctypes.CDLL(name) for name in sys.argv[1:]]; print('loaded')"
    result = engine.run(builder, ["python3", "-c", code, *libs], network=False)
    assert result.tail.endswith("loaded")


def test_ensure_builder_is_quick_when_nothing_changed(engine: DockerEngine, builder: str) -> None:
    started = time.monotonic()
    assert baseimage.ensure_builder(engine) == builder
    assert time.monotonic() - started < 5


def test_run_reports_exit_code_and_tail_and_leaves_no_container(engine: DockerEngine, base: str) -> None:
    before = len(engine.client.containers.list(all=True, filters={"ancestor": base}))
    seen: list[str] = []
    result = engine.run(
        base, ["sh", "-c", "echo first; echo second >&2; exit 7"], on_output=seen.append, check=False
    )
    assert result.exit_code == 7
    assert "first" in result.tail and "second" in result.tail
    assert "first" in seen and "second" in seen
    assert len(engine.client.containers.list(all=True, filters={"ancestor": base})) == before


def test_run_failure_raises_sandbox_error_with_tail(engine: DockerEngine, base: str) -> None:
    with pytest.raises(SandboxError, match=r"(?s)exit 3.*the-reason"):
        engine.run(base, ["sh", "-c", "echo the-reason; exit 3"])


def test_run_passes_env_workdir_user_and_mounts(engine: DockerEngine, base: str, tmp_path: Path) -> None:
    from swstack.sandbox import Mount

    tmp_path.chmod(0o755)  # readable by the container user
    (tmp_path / "in.txt").write_text("from the host")
    result = engine.run(
        base,
        ["sh", "-c", 'echo "$GREETING $(pwd) $(id -u):$(id -g) $(cat /mnt/in/in.txt)"'],
        mounts=[Mount(tmp_path, "/mnt/in", read_only=True)],
        env={"GREETING": "hi"},
        workdir="/etc",
        user="4321:4321",
    )
    assert result.tail == "hi /etc 4321:4321 from the host"


def test_build_and_remove_image(engine: DockerEngine, base: str, scratch_tag: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo built > /built\n")
    engine.build(
        tmp_path, "Dockerfile", scratch_tag, buildargs={"BASE": base}, labels={"org.swstack.test": "1"}
    )
    assert engine.run(scratch_tag, ["cat", "/built"]).tail == "built"
    assert engine.client.images.get(scratch_tag).labels["org.swstack.test"] == "1"
    engine.remove_image(scratch_tag)
    assert not engine.image_exists(scratch_tag)
    engine.remove_image(scratch_tag)  # removing what is gone is not an error


def test_build_failure_is_an_image_error_with_the_tail(
    engine: DockerEngine, base: str, scratch_tag: str, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nRUN echo about-to-fail && false\n")
    with pytest.raises(ImageError, match=r"(?s)building .* failed.*about-to-fail"):
        engine.build(tmp_path, "Dockerfile", scratch_tag)


def test_import_rootfs(engine: DockerEngine, scratch_tag: str, tmp_path: Path) -> None:
    tar_path = tmp_path / "root.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = b"imported\n"
        info = tarfile.TarInfo("etc/marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    engine.import_rootfs(tar_path, scratch_tag, changes=["ENV MARKER=1"])
    assert engine.image_exists(scratch_tag)
    assert "MARKER=1" in engine.client.images.get(scratch_tag).attrs["Config"]["Env"]


def test_missing_image_is_a_clear_error(engine: DockerEngine) -> None:
    assert not engine.image_exists("swstack/does-not-exist:0")
    with pytest.raises(SandboxError, match="swstack/does-not-exist:0"):
        engine.run("swstack/does-not-exist:0", ["true"])
