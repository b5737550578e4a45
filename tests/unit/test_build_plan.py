"""``plan_build``: a lockfile and a stack -> mounts, install plan, version, without building."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from swstack.build import ARTIFACTS, KERNEL_SPECS, WORK, local_roots, plan_build
from swstack.errors import BuildError
from swstack.sandbox import Mount
from swstack.site import Site, load_site
from swstack.spec import Stack, load_stack

STACK = """\
name = "demo"
channels = ["conda-forge"]
platforms = ["linux-64"]

[dependencies]
python = "3.11.*"

[variants.lts]
default = true

[variants.edge]
"""

TODAY = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
# The locked conda package: real bytes in the local channel, since planning checks the mirror has them.
PACKAGE = b"a stand-in conda package"
PACKAGE_SHA256 = hashlib.sha256(PACKAGE).hexdigest()


def _lockfile(channel: Path, pip_url: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        metadata:
          content_hash:
            linux-64: abc
          channels:
          - url: {channel.as_uri()}
            used_env_vars: []
          platforms:
          - linux-64
          sources:
          - ../../stacks/demo.toml
          time_metadata:
            created_at: '2026-11-21T23:49:09Z'
        package:
        - name: python
          version: 3.11.9
          manager: conda
          platform: linux-64
          dependencies: {{}}
          url: {channel.as_uri()}/linux-64/python-3.11.9-h0_0.conda
          hash:
            md5: {"ab" * 16}
            sha256: {PACKAGE_SHA256}
          category: main
          optional: false
        - name: tomli
          version: 2.0.1
          manager: pip
          platform: linux-64
          dependencies: {{}}
          url: {pip_url}
          hash:
            sha256: {"ef" * 32}
          category: main
          optional: false
        """)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with the demo stack and lockfiles for both its variants."""
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "stacks" / "demo.toml").write_text(STACK)
    channel = tmp_path / "channel"
    (channel / "linux-64").mkdir(parents=True)
    (channel / "linux-64" / "python-3.11.9-h0_0.conda").write_bytes(PACKAGE)
    wheels = tmp_path / "wheels"
    for subdir in ("demo", "demo/edge"):
        (root / "lockfiles" / subdir).mkdir(parents=True)
    (root / "lockfiles/demo/conda-lock.yml").write_text(
        _lockfile(channel, (wheels / "tomli-2.0.1-py3-none-any.whl").as_uri())
    )
    (root / "lockfiles/demo/edge/conda-lock.yml").write_text(
        _lockfile(channel, "https://files.example.org/tomli-2.0.1-py3-none-any.whl")
    )
    return root


@pytest.fixture
def site(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.delenv("SWSTACK_SITE", raising=False)
    return replace(load_site(None, project), artifacts=tmp_path / "artifacts", cache=tmp_path / "cache")


def test_the_plan_mounts_the_build_dir_at_the_prefix_parent(project: Path, site: Site, tmp_path: Path) -> None:
    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, today=TODAY)
    build_dir = site.cache / "build" / "demo" / "sw"
    assert plan.build_dir == build_dir and plan.host_prefix == build_dir / "demo"
    assert plan.mounts[:4] == (
        Mount(build_dir, "/data0/sw"),
        Mount(site.cache / "build" / "demo" / "work", WORK, read_only=True),
        Mount(site.cache / "pkgs", str(site.cache / "pkgs")),
        Mount(site.artifacts, ARTIFACTS),
    )
    # The local channel (the parent of its subdir) and the local wheel's directory, read-only.
    assert set(plan.mounts[4:]) == {
        Mount(tmp_path / "channel", str(tmp_path / "channel"), read_only=True),
        Mount(tmp_path / "wheels", str(tmp_path / "wheels"), read_only=True),
    }
    assert plan.network is False  # every URL is a local file
    # The install step runs the stack's code: it gets every mount but the artifacts directory.
    assert plan.install_mounts == tuple(m for m in plan.mounts if m != Mount(site.artifacts, ARTIFACTS))


def test_the_install_plan_is_the_lockfile_s_exact_urls_and_hashes(project: Path, site: Site) -> None:
    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, today=TODAY)
    (conda,) = plan.install.conda
    assert (conda.name, conda.sha256, conda.md5) == ("python", PACKAGE_SHA256, "ab" * 16)
    assert conda.url.endswith("/channel/linux-64/python-3.11.9-h0_0.conda")
    (pip,) = plan.install.pip
    assert (pip.name, pip.sha256) == ("tomli", "ef" * 32)
    assert plan.pip_locks == {"tomli": {"url": pip.url, "sha256": "ef" * 32}}
    assert plan.install.prefix == "/data0/sw/demo" and plan.install.package_cache == str(site.cache / "pkgs")


def test_a_remote_url_turns_the_network_on(project: Path, site: Site) -> None:
    plan = plan_build(load_stack(project / "stacks/demo.toml", "edge"), site, project, today=TODAY)
    assert plan.network is True
    assert plan.lockfile == project / "lockfiles/demo/edge/conda-lock.yml"


def test_the_version_counts_up_within_a_day_and_names_the_artifact_dir(project: Path, site: Site) -> None:
    lts = load_stack(project / "stacks/demo.toml")
    assert plan_build(lts, site, project, today=TODAY).version == "2026.11.21"
    (site.artifacts / "demo" / "2026.11.21").mkdir(parents=True)
    (site.artifacts / "demo" / "2026.11.21.1").mkdir()
    plan = plan_build(lts, site, project, today=TODAY)
    assert plan.version == "2026.11.21.2"
    assert plan.artifact_dir == site.artifacts / "demo" / "2026.11.21.2"  # lts is the default: no suffix
    edge = plan_build(load_stack(project / "stacks/demo.toml", "edge"), site, project, today=TODAY)
    assert edge.version == "2026.11.21" and edge.artifact_dir == site.artifacts / "demo-edge" / "2026.11.21"
    assert plan_build(lts, site, project, version="9.9", today=TODAY).version == "9.9"


def test_the_epoch_is_the_lock_time_unless_source_date_epoch_is_set(
    project: Path, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = load_stack(project / "stacks/demo.toml")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    created = int(datetime(2026, 11, 21, 23, 49, 9, tzinfo=timezone.utc).timestamp())
    assert plan_build(stack, site, project, today=TODAY).source_date_epoch == created
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert plan_build(stack, site, project, today=TODAY).source_date_epoch == 1_700_000_000


def test_kernel_spec_dirs_are_mounted_read_only_and_must_exist(project: Path, site: Site) -> None:
    (project / "kernel-specs").mkdir()
    path = project / "stacks/demo.toml"
    path.write_text(STACK.replace("[dependencies]", 'kernel_spec_dirs = ["../kernel-specs"]\n\n[dependencies]'))
    plan = plan_build(load_stack(path), site, project, today=TODAY)
    assert Mount(project / "kernel-specs", f"{KERNEL_SPECS}/0", read_only=True) in plan.mounts
    assert plan.install.kernel_spec_dirs == [f"{KERNEL_SPECS}/0"]
    stack = load_stack(path)
    (project / "kernel-specs").rmdir()  # gone after the stack file was read: the build still says so
    with pytest.raises(BuildError, match=r"kernel_spec_dirs: '\.\./kernel-specs' is not a directory"):
        plan_build(stack, site, project, today=TODAY)


def test_an_owner_is_resolved_to_numbers_on_the_build_machine_or_refused_at_its_line(
    project: Path, site: Site
) -> None:
    """The sandbox chowns the tree (a container by its own user database) and the tarball carries
    numbers: names are this machine's, and one it does not know is said before anything is installed,
    not as a multi-line failure of the install step (exit 6)."""
    import grp
    import pwd

    path = project / "stacks/demo.toml"
    root = (pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name)
    path.write_text(STACK.replace("[dependencies]", f'owner = "{root[0]}:{root[1]}"\n\n[dependencies]'))
    assert plan_build(load_stack(path), site, project, today=TODAY).install.owner == "0:0"
    path.write_text(STACK.replace("[dependencies]", 'owner = "899:no-such-group-here"\n\n[dependencies]'))
    with pytest.raises(BuildError) as caught:
        plan_build(load_stack(path), site, project, today=TODAY)
    assert str(caught.value) == (
        f"{path}:5: owner: no group 'no-such-group-here' on this machine, which builds the tree and writes its "
        'owner as numbers; create the group here, or give numeric ids (owner = "899:899")'
    )


def test_a_platform_the_stack_does_not_list_is_refused(project: Path, site: Site) -> None:
    with pytest.raises(BuildError, match=r"demo.toml: stack demo does not list platform linux-aarch64"):
        plan_build(load_stack(project / "stacks/demo.toml"), site, project, platform="linux-aarch64", today=TODAY)


def test_a_missing_lockfile_says_to_lock_first(project: Path, site: Site) -> None:
    from swstack.errors import LockError

    (project / "lockfiles/demo/conda-lock.yml").unlink()
    with pytest.raises(LockError, match="no lockfile; run `doit lock"):
        plan_build(load_stack(project / "stacks/demo.toml"), site, project, today=TODAY)


def test_local_roots_are_the_fewest_directories_that_cover_every_url() -> None:
    urls = [
        "file:///srv/channel/linux-64/a-1-0.conda",
        "file:///srv/channel/noarch/b-1-0.tar.bz2",
        "file:///srv/channel/wheels/c-1-py3-none-any.whl",  # inside the channel root already
        "file:///srv/other/d-1-py3-none-any.whl",
        "git+file:///srv/git/labclient@0123abc",
        "https://files.example.org/e-1-py3-none-any.whl",
    ]
    roots = local_roots(urls)
    assert sorted(roots) == [Path("/srv/channel"), Path("/srv/git/labclient"), Path("/srv/other")]
    assert len(roots) == len(set(roots))


def test_a_version_given_again_is_rebuilt_only_from_the_same_inputs(project: Path, site: Site) -> None:
    from tests.support.host import make_artifact

    from swstack.build import drop_unfinished, refuse_other_build_of
    from swstack.manifest import Manifest

    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, version="9.9", today=TODAY)
    refuse_other_build_of(plan)  # nothing there yet
    art = make_artifact(plan.artifact_dir, stack="demo", version="9.9")
    manifest = Manifest.load(art / "manifest.json")
    same = replace(manifest, lockfile_sha256=plan.lockfile_sha256, stackfile_sha256=plan.stack.source_hash)
    (art / "manifest.json").write_text(same.to_json())
    refuse_other_build_of(plan)  # the same inputs give the same bytes: allowed
    (art / "manifest.json").write_text(replace(same, lockfile_sha256="0" * 64).to_json())
    with pytest.raises(BuildError, match="already holds demo 9.9 built from other inputs"):
        refuse_other_build_of(plan)
    (art / "manifest.json").write_text("{not json")
    damaged = "demo 9.9 is already there, but .*manifest.json: not a swstack manifest"
    with pytest.raises(BuildError, match=damaged) as bad:
        refuse_other_build_of(plan)  # damaged: what it was built from is unknown, and not claimed
    assert "other inputs" not in str(bad.value)
    drop_unfinished(art)
    assert art.is_dir()  # finished: kept
    (art / "manifest.json").unlink()
    drop_unfinished(art)
    assert not art.exists()


@pytest.mark.parametrize("version", ["sub/dir", "1.0+local", "../../evil", "-rf", ".hidden", "v" * 129, "tmpfs", ""])
def test_a_version_that_is_no_directory_file_and_tag_name_is_refused_before_anything_is_written(
    project: Path, site: Site, version: str
) -> None:
    lts = load_stack(project / "stacks/demo.toml")
    with pytest.raises(BuildError, match=r"version .*: use letters, digits and \. _ - \(at most 128") as caught:
        plan_build(lts, site, project, version=version, today=TODAY)
    assert "\n" not in str(caught.value)
    assert not site.artifacts.exists()


def test_a_version_given_is_current_only_when_that_artifact_is_whole_and_from_today_s_inputs(
    project: Path, site: Site
) -> None:
    from swstack.attest import attest_artifact
    from swstack.build import why_not_current
    from swstack.manifest import Manifest

    lts = load_stack(project / "stacks/demo.toml")
    reason = why_not_current(lts, site, project, "linux-64", version="9.9")
    assert reason == f"no artifact of demo 9.9 in {site.artifacts}"
    art = _current_unattested_artifact(project, site, lts)
    stopped = why_not_current(lts, site, project, "linux-64", version="9.9")
    assert stopped == f"{art / 'manifest.json'} lists no SBOM or provenance (its build stopped after packing)"
    attest_artifact(art)  # what the build does after packing
    assert why_not_current(lts, site, project, "linux-64", version="9.9") is None
    assert "no artifact of demo 10.0" in str(why_not_current(lts, site, project, "linux-64", version="10.0"))
    current = Manifest.load(art / "manifest.json")
    (art / "manifest.json").write_text(replace(current, lockfile_sha256="0" * 64).to_json())
    assert "built from another conda-lock.yml" in str(why_not_current(lts, site, project, "linux-64", version="9.9"))


def test_an_artifacts_path_that_cannot_be_a_directory_fails_in_one_line_before_the_build(
    project: Path, site: Site, tmp_path: Path
) -> None:
    from swstack.build import install_in_sandbox
    from swstack.sandbox import NamespaceSandbox

    (tmp_path / "taken").write_text("a file")
    site = replace(site, artifacts=tmp_path / "taken")
    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, today=TODAY)
    with pytest.raises(BuildError) as caught:
        install_in_sandbox(plan, NamespaceSandbox())
    assert str(caught.value) == (f"artifacts directory {tmp_path / 'taken'}: File exists; set the site file's "
                                 "`artifacts` to a directory this user can write")
    assert not plan.build_dir.exists()  # nothing was started


def test_a_build_dir_that_cannot_be_emptied_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a process left running by an interrupted build does to the next build's rmtree."""
    from swstack import build

    leftover = tmp_path / "sw"
    (leftover / "py3" / "lib").mkdir(parents=True)

    def busy(path: object) -> None:
        raise OSError(39, "Directory not empty", str(leftover / "py3" / "lib"))

    monkeypatch.setattr(build.shutil, "rmtree", busy)
    monkeypatch.setattr(build.time, "sleep", lambda seconds: None)
    expected = r"cannot empty .*/sw: Directory not empty \(.*/py3/lib\); stop whatever"
    with pytest.raises(BuildError, match=expected) as caught:
        build._fresh_dir(leftover)
    assert "\n" not in str(caught.value)


def test_a_build_dir_is_emptied_when_the_second_try_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from swstack import build

    leftover = tmp_path / "sw"
    (leftover / "py3").mkdir(parents=True)
    tries = []
    remove = shutil.rmtree

    def busy_once(path: Path) -> None:
        tries.append(path)
        if len(tries) == 1:
            raise OSError(39, "Directory not empty", str(path))
        remove(path)

    monkeypatch.setattr(build.shutil, "rmtree", busy_once)
    monkeypatch.setattr(build.time, "sleep", lambda seconds: None)
    build._fresh_dir(leftover)
    assert leftover.is_dir() and not any(leftover.iterdir()) and len(tries) == 2


def test_the_install_step_runs_without_the_artifacts_directory(project: Path, site: Site) -> None:
    """The install step runs the stack's own code (a git dependency's build): it must not be able to
    rewrite another stack's or version's tarball and manifest, which publish and sign then send out."""
    from swstack.build import install_in_sandbox

    seen: list[tuple[str, ...]] = []
    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, today=TODAY)
    install_in_sandbox(plan, _Recording(lambda mounts: seen.append(tuple(m.target for m in mounts))))  # type: ignore[arg-type]
    assert seen and ARTIFACTS not in seen[0] and "/data0/sw" in seen[0]


class _Recording:
    """A sandbox that runs nothing and hands each step's mounts to ``record``: what the step could touch."""

    name = "recording"

    def __init__(self, record: Callable[[list[Mount]], None]):
        self.record = record

    def python(self) -> list[str]:
        return ["python"]

    def run(self, argv: list[str], *, mounts: list[Mount], env: object = None, workdir: object = None,
            network: bool = True) -> None:
        self.record(mounts)


def test_the_site_s_signing_keys_are_an_empty_directory_inside(project: Path, site: Site, tmp_path: Path) -> None:
    """A git dependency's build runs in the sandbox: in the namespace one the host's files are readable,
    so the site's keys' directory is covered with an empty one (else it could copy the key into the tree)."""
    from swstack.build import EMPTY, install_in_sandbox

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "cosign.key").write_text("PRIVATE")
    plan = plan_build(load_stack(project / "stacks/demo.toml"), replace(site, signing_keys=keys), project, today=TODAY)
    assert plan.mounts[-1] == Mount(plan.work_dir / EMPTY, str(keys), read_only=True)
    seen: list[list[str]] = []
    install_in_sandbox(plan, _Recording(lambda _: seen.append([p.name for p in (plan.work_dir / EMPTY).iterdir()])))  # type: ignore[arg-type]
    assert seen == [[]]


def test_an_artifact_whose_sbom_or_provenance_changed_is_not_current(project: Path, site: Site) -> None:
    """push and publish refuse an attestation missing or changed and say to build again: the
    build must then not call that artifact up to date."""

    from swstack.attest import PROVENANCE_NAME, SBOM_NAME, attest_artifact
    from swstack.build import why_not_current

    lts = load_stack(project / "stacks/demo.toml")
    art = _current_unattested_artifact(project, site, lts)
    attest_artifact(art)
    assert why_not_current(lts, site, project, "linux-64", version="9.9") is None
    with (art / SBOM_NAME).open("a") as fh:
        fh.write("\n")
    assert f"{art / SBOM_NAME} has sha256 " in str(why_not_current(lts, site, project, "linux-64", version="9.9"))
    (art / PROVENANCE_NAME).unlink()
    attest_artifact(art)  # lists the SBOM as it is now, and a new provenance
    (art / PROVENANCE_NAME).unlink()
    assert why_not_current(lts, site, project, "linux-64", version="9.9") == f"{art / PROVENANCE_NAME} is missing"


def test_a_step_s_own_error_fails_the_build_in_its_one_line_with_its_code(project: Path, site: Site) -> None:
    """pack out of space in the sandbox (exit 8, `error: ...` last): the build says that line, with the
    artifacts directory as this machine names it, and exits 8; a crash keeps its output's tail."""
    from swstack.build import ARTIFACTS, own_errors
    from swstack.errors import PackError, StepFailed
    from swstack.sandbox import NamespaceSandbox

    plan = plan_build(load_stack(project / "stacks/demo.toml"), site, project, version="9.9", today=TODAY)
    box = NamespaceSandbox()
    said = f"print('packing'); print('error: writing {ARTIFACTS}/demo/9.9/t.tar.zst failed: full'); raise SystemExit(8)"
    with pytest.raises(PackError) as caught, own_errors(plan):
        box.run([*box.python(), "-c", said], mounts=[], network=False)
    assert str(caught.value) == f"writing {plan.artifacts}/demo/9.9/t.tar.zst failed: full"
    assert caught.value.exit_code == 8
    with pytest.raises(StepFailed, match=r"failed \(exit 1\):\n(.|\n)*RuntimeError: a bug"), own_errors(plan):
        box.run([*box.python(), "-c", "raise RuntimeError('a bug')"], mounts=[], network=False)


def test_a_step_s_error_names_a_kernel_spec_directory_as_the_stack_file_does(project: Path, site: Site) -> None:
    """install's error about a kept kernel spec names the file in the stack's repository, not the
    sandbox's mount point of its directory."""
    from swstack.build import own_errors
    from swstack.sandbox import NamespaceSandbox

    (project / "kernel-specs").mkdir()
    path = project / "stacks/demo.toml"
    path.write_text(STACK.replace("[dependencies]", 'kernel_spec_dirs = ["../kernel-specs"]\n\n[dependencies]'))
    plan = plan_build(load_stack(path), site, project, today=TODAY)
    box = NamespaceSandbox()
    said = f"print('error: kernel ir ({KERNEL_SPECS}/0/ir/kernel.json): no R'); raise SystemExit(7)"
    with pytest.raises(BuildError) as caught, own_errors(plan):
        box.run([*box.python(), "-c", said], mounts=[], network=False)
    assert str(caught.value) == f"kernel ir ({project / 'kernel-specs'}/ir/kernel.json): no R"


def _current_unattested_artifact(project: Path, site: Site, lts: Stack) -> Path:
    """demo 9.9 as its build packs it from the current lockfile and stack file, before attesting."""
    from tests.support.host import make_artifact

    from swstack.fsutil import sha256_file
    from swstack.manifest import Manifest

    art = make_artifact(site.artifacts / "demo" / "9.9", stack="demo", version="9.9")
    manifest = Manifest.load(art / "manifest.json")
    lockfile = project / "lockfiles/demo/conda-lock.yml"
    current = replace(manifest, platform="linux-64", lockfile_sha256=sha256_file(lockfile),
                      stackfile_sha256=lts.source_hash)
    (art / "manifest.json").write_text(current.to_json())
    return art


def test_a_build_that_waited_for_one_that_made_the_same_artifact_does_not_build_again(
    project: Path, site: Site
) -> None:
    """Two `doit build` of one stack in one checkout: the second's up-to-date check ran before it
    waited for the first, so it built the same inputs again as the next version."""
    import fcntl
    import threading

    from swstack.attest import attest_artifact
    from swstack.build import build_dir_for, run_build

    lts = load_stack(project / "stacks/demo.toml")
    art = _current_unattested_artifact(project, site, lts)
    attest_artifact(art)  # what the first build made while the second waited

    class Unused:  # the sandbox of a build that must not run
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the build ran its sandbox ({name})")

    lock = build_dir_for(lts, site).parent / ".lock"
    lock.parent.mkdir(parents=True)
    results: list[object] = []
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first build
        second = threading.Thread(
            target=lambda: results.append(run_build(lts, site, project, sandbox=Unused(), relock=False))  # type: ignore[arg-type]
        )
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting
        fcntl.flock(held, fcntl.LOCK_UN)
    second.join(30)
    (result,) = results
    assert result.artifact_dir == art  # type: ignore[attr-defined]
    assert sorted(p.name for p in (site.artifacts / "demo").iterdir()) == ["9.9"]
