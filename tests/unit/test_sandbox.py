"""Unit tests of sandbox planning: the bubblewrap argv, backend selection, container env."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from swstack import sandbox
from swstack.engine import DockerEngine
from swstack.errors import SandboxError
from swstack.sandbox import Mount, Tmpfs, TopEntry, private_root_argv, select_kind

# A merged-/usr Debian root, plus a /data0 that must never be bound even if it exists.
TOP = (
    TopEntry("bin", "symlink", "usr/bin"),
    TopEntry("data0", "dir"),
    TopEntry("dev", "dir"),
    TopEntry("etc", "dir"),
    TopEntry("home", "dir"),
    TopEntry("lib", "symlink", "usr/lib"),
    TopEntry("proc", "dir"),
    TopEntry("tmp", "dir"),
    TopEntry("usr", "dir"),
    TopEntry(".dockerenv", "file"),
)


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    """Every ``option A B`` in argv, as (A, B)."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_root_is_bound_directory_by_directory_never_whole() -> None:
    argv = private_root_argv(top_level=TOP)
    binds = pairs(argv, "--ro-bind")
    assert ("/", "/") not in binds + pairs(argv, "--bind")
    assert ("/etc", "/etc") in binds and ("/usr", "/usr") in binds and ("/home", "/home") in binds
    assert ("usr/bin", "/bin") in pairs(argv, "--symlink")
    assert ("/.dockerenv", "/.dockerenv") in pairs(argv, "--ro-bind")


def test_data0_is_private_and_never_bound_from_the_host() -> None:
    argv = private_root_argv([Mount(Path("/tmp/build"), "/data0/sw")], top_level=TOP)
    assert all("/data0" not in src for src, _ in pairs(argv, "--bind"))
    dir_at = argv.index("--dir")
    assert argv[dir_at + 1] == "/data0"
    bind_at = argv.index("/tmp/build") - 1
    assert argv[bind_at : bind_at + 3] == ["--bind", "/tmp/build", "/data0/sw"]
    assert dir_at < bind_at, "the private /data0 must exist before mounts land in it"


def test_proc_dev_tmp_get_their_own_mounts() -> None:
    argv = private_root_argv(top_level=TOP)
    assert (argv[argv.index("--proc") + 1], argv[argv.index("--dev") + 1]) == ("/proc", "/dev")
    assert ("/proc", "/proc") not in pairs(argv, "--bind")
    assert ("/dev", "/dev") not in pairs(argv, "--bind")


def test_tmp_is_private_a_directory_given_or_a_size_limited_tmpfs() -> None:
    """Never the host's /tmp (every user's files, ssh-agent and X11 sockets): the caller's directory
    for this run, else a tmpfs; before the mounts, so a host path below /tmp may be one."""
    argv = private_root_argv([Mount(Path("/tmp/pytest/probe"), "/tmp/pytest/probe")], top_level=TOP)
    at = argv.index("--tmpfs")
    assert argv[at - 2 : at + 2] == ["--size", str(sandbox.TMP_TMPFS_SIZE), "--tmpfs", "/tmp"]
    assert ("/tmp", "/tmp") not in pairs(argv, "--bind") + pairs(argv, "--ro-bind")
    assert at < argv.index("/tmp/pytest/probe")
    argv = private_root_argv([Mount(Path("/tmp/pytest/probe"), "/tmp/pytest/probe")], tmp=Path("/var/tmp/run1"),
                             top_level=TOP)
    assert pairs(argv, "--bind") == [("/var/tmp/run1", "/tmp"), ("/tmp/pytest/probe", "/tmp/pytest/probe")]
    assert "--tmpfs" not in argv


def test_a_python_and_swstack_below_tmp_are_bound_read_only_before_the_mounts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A clone and its virtualenv below the host's /tmp (a CI job's): the steps run that Python and
    import that swstack, which the private /tmp would hide. Bound read-only, the outermost once."""
    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip("the test's directory is not below /tmp")
    clone = tmp_path
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / "src").mkdir()
    monkeypatch.setattr(sys, "prefix", str(clone / ".venv"))
    monkeypatch.setattr(sys, "executable", str(clone / ".venv" / "bin" / "python"))
    monkeypatch.setattr(sys, "path", [str(clone / "src"), str(clone), "/usr/lib/python3.11", ""])
    argv = private_root_argv([Mount(clone / "build", str(clone / "src" / "mounted"))], top_level=TOP)
    ours = [pair for pair in pairs(argv, "--ro-bind") if pair[0].startswith("/tmp/")]
    assert (str(clone), str(clone)) in ours and all(not p.startswith(f"{clone}/") for p, _ in ours)
    assert argv.index(str(clone)) < argv.index(str(clone / "build"))  # a mount may land inside
    assert ("/tmp", "/tmp") not in pairs(argv, "--bind") + pairs(argv, "--ro-bind")


def test_argv_ends_with_separator_and_dies_with_parent() -> None:
    argv = private_root_argv(top_level=TOP)
    assert argv[0] == "bwrap" and argv[-1] == "--" and "--die-with-parent" in argv
    assert "--unshare-pid" in argv  # so the step's own children die with it too


def test_read_only_mount() -> None:
    argv = private_root_argv([Mount(Path("/src"), "/opt/src", read_only=True)], top_level=TOP)
    assert ("/src", "/opt/src") in pairs(argv, "--ro-bind")


def test_tmpfs_has_its_size_and_comes_before_mounts_and_symlinks() -> None:
    argv = private_root_argv(
        [Mount(Path("/tmp/b"), "/data0/sw.tmpfs/py3")],
        tmpfs=[("/data0/sw.tmpfs", 64 << 20), Tmpfs("/data0/scratch", 1024)],
        symlinks=[("/data0/sw.tmpfs", "/data0/sw")],
        top_level=TOP,
    )
    size_at = argv.index("--size", argv.index("/tmp") + 1)  # past /tmp's own tmpfs
    assert argv[size_at : size_at + 4] == ["--size", str(64 << 20), "--tmpfs", "/data0/sw.tmpfs"]
    assert argv[size_at + 4 : size_at + 8] == ["--size", "1024", "--tmpfs", "/data0/scratch"]
    assert size_at < argv.index("/tmp/b") < argv.index("/data0/sw")
    assert ("/data0/sw.tmpfs", "/data0/sw") in pairs(argv, "--symlink")


def test_network_off_unshares_the_network() -> None:
    assert "--unshare-net" in private_root_argv(network=False, top_level=TOP)
    assert "--unshare-net" not in private_root_argv(network=True, top_level=TOP)


def test_workdir() -> None:
    argv = private_root_argv(workdir="/data0/sw", top_level=TOP)
    assert argv[argv.index("--chdir") + 1] == "/data0/sw"


@pytest.mark.parametrize("target", ["relative/path", "/", "/data0/../etc"])
def test_bad_mount_targets_are_refused(target: str) -> None:
    with pytest.raises(SandboxError, match="mount target"):
        private_root_argv([Mount(Path("/x"), target)], top_level=TOP)


def test_host_top_level_sees_this_machine_without_data0() -> None:
    names = {e.name: e for e in sandbox.host_top_level()}
    assert names["usr"].kind == "dir"
    assert "data0" not in names  # the machine's /data0 is never created


@pytest.mark.parametrize(
    ("setting", "answers", "expected"),
    [
        ("docker", False, "docker"),
        ("namespace", True, "namespace"),
        ("auto", True, "docker"),
        ("auto", False, "namespace"),
    ],
)
def test_select_kind(setting: str, answers: bool, expected: str) -> None:
    assert select_kind(setting, lambda: answers) == expected


def test_select_kind_does_not_ask_the_engine_unless_auto() -> None:
    def never() -> bool:
        raise AssertionError("the engine was asked")

    assert select_kind("namespace", never) == "namespace"


def test_unknown_kind_is_refused_with_the_choices() -> None:
    with pytest.raises(SandboxError, match="use one of docker, namespace, auto"):
        select_kind("podman", lambda: True)


def test_container_env_makes_swstack_importable_and_lets_callers_add() -> None:
    env = sandbox.container_env({"CONDA_PKGS_DIRS": "/cache", "HOME": "/data0/home"})
    assert env["PYTHONPATH"] == sandbox.CONTAINER_SOURCE
    assert env["CONDA_PKGS_DIRS"] == "/cache" and env["HOME"] == "/data0/home"


def test_package_dir_is_the_swstack_package() -> None:
    assert (sandbox.package_dir() / "sandbox.py").is_file()


def test_namespace_sandbox_uses_the_host_python() -> None:
    assert sandbox.NamespaceSandbox().python() == [sys.executable]


def test_docker_without_an_engine_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A real client against a socket nobody listens on: the message a user would see.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    with pytest.raises(SandboxError) as caught:
        sandbox.open_sandbox("docker", engine=DockerEngine(timeout=5))
    message = str(caught.value)
    assert f"no Docker engine answers at unix://{tmp_path}/nobody.sock" in message
    assert "scripts/with-engine" in message and 'sandbox = "namespace"' in message


def test_auto_without_an_engine_falls_back_to_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    chosen = sandbox.open_sandbox("auto", engine=DockerEngine(timeout=5))
    assert chosen.name == "namespace"


def test_host_directories_are_read_only_inside() -> None:
    """What runs inside (a git dependency's build, a kernel of the smoke test) is the stack's code:
    of the host it may write the mounts it is given and its private /tmp, never the checkout, the keys
    or a home."""
    argv = private_root_argv([Mount(Path("/tmp/build"), "/data0/sw")], tmp=Path("/tmp/run1"), top_level=TOP)
    assert pairs(argv, "--bind") == [("/tmp/run1", "/tmp"), ("/tmp/build", "/data0/sw")]


def test_secrets_stay_out_of_the_sandbox_environment() -> None:
    env = {"PATH": "/usr/bin", "PYTHONPATH": "/src", "LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "1",
           "SWSTACK_REGISTRY_USER": "ci", "SWSTACK_REGISTRY_PASSWORD": "pw", "SWSTACK_SIGNING_PASSWORD": "pw",
           "GITHUB_TOKEN": "t", "ACTIONS_ID_TOKEN_REQUEST_URL": "u", "AWS_SECRET_ACCESS_KEY": "k",
           "DOCKER_CONFIG": "/home/ci/.docker"}
    assert sandbox.sandbox_env(env) == {"PATH": "/usr/bin", "PYTHONPATH": "/src", "LANG": "C.UTF-8",
                                        "SOURCE_DATE_EPOCH": "1", "TMPDIR": "/tmp"}
