"""doit task dicts from stack files: which stacks, names, file dependencies, targets (nothing runs)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swstack import tasks
from swstack.errors import BuildError, SpecError, StaleLockError, UsageError
from swstack.tasks import Options, selected_stacks

BASE = """\
# shared part: no name, so not a stack of its own
channels = ["conda-forge"]
platforms = ["linux-64"]
"""

DEMO = """\
name = "demo"
extends = "base.toml"

[dependencies]
python = "3.11.*"

[variants.lts]
default = true

[variants.edge]
"""

SMALL = """\
name = "small"
extends = ["base.toml"]

[dependencies]
zlib = "*"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "stacks" / "base.toml").write_text(BASE)
    (root / "stacks" / "demo.toml").write_text(DEMO)
    (root / "stacks" / "small.toml").write_text(SMALL)
    (root / "site.toml").write_text('name = "test"\nartifacts = "{project}/out"\n')
    return root


def _opts(project: Path, **kw: Any) -> Options:
    return Options(project=project, site=str(project / "site.toml"), **kw)


def _tasks(creator: Any, opts: Options) -> list[dict[str, Any]]:
    """The task dicts of a ``guarded`` creator, given options instead of doit's variables."""
    result = creator.__wrapped__(opts)
    return [result] if isinstance(result, dict) else list(result)


def test_every_stack_file_but_shared_parts_is_a_stack(project: Path) -> None:
    ids = [s.stack_id for s in selected_stacks(_opts(project), all_variants=True)]
    assert ids == ["demo", "demo-edge", "small"]
    assert [s.stack_id for s in selected_stacks(_opts(project), all_variants=False)] == ["demo", "small"]


def test_stack_and_variant_narrow_the_selection(project: Path) -> None:
    (edge,) = selected_stacks(_opts(project, stack="demo", variant="edge"), all_variants=False)
    assert (edge.name, edge.variant, edge.stack_id) == ("demo", "edge", "demo-edge")
    with pytest.raises(SpecError, match="no stack named 'dem'.*did you mean 'demo'"):
        selected_stacks(_opts(project, stack="dem"), all_variants=False)


def test_a_broken_stack_file_is_reported_with_its_line_while_listing(project: Path) -> None:
    (project / "stacks" / "zz.toml").write_text('name = "zz"\n[dependencies\n')
    with pytest.raises(SpecError, match=r"zz\.toml:2: invalid TOML"):
        selected_stacks(_opts(project), all_variants=True)


def test_lock_tasks_name_each_variant_and_leave_staleness_to_the_lockfile(project: Path) -> None:
    found = {t["name"]: t for t in _tasks(tasks.task_lock, _opts(project))}
    assert list(found) == ["demo", "demo-edge", "small"]
    # The lockfile's recorded input hash decides (a comment in a stack file changes nothing);
    # doit's own file_dep would rerun on any byte, and on every fresh clone.
    assert all("file_dep" not in t for t in found.values())
    assert [t["uptodate"][0]() for t in found.values()] == [False, False, False]  # no lockfile yet
    assert found["demo"]["targets"] == [str(project / "lockfiles/demo/conda-lock.yml")]
    assert found["demo-edge"]["targets"] == [str(project / "lockfiles/demo/edge/conda-lock.yml")]
    assert found["demo"]["doc"] == "lock demo"


def test_ctrl_c_while_a_lock_task_checks_staleness_is_an_interruption_not_a_traceback(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(plan: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("swstack.lock.staleness", interrupted)
    task = _tasks(tasks.task_lock, _opts(project))[0]
    with pytest.raises(SystemExit) as stopped:
        task["uptodate"][0]()  # doit runs it outside any action: hashing a large mirror takes a while
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted; run the same command again to finish\n"


def test_ctrl_c_while_a_build_task_checks_its_artifact_is_an_interruption_not_a_traceback(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("swstack.build.current_artifact", interrupted)
    (task,) = _tasks(tasks.task_build, _opts(project, stack="small"))
    with pytest.raises(SystemExit) as stopped:
        task["uptodate"][0]()  # it hashes the newest tarball: seconds for a real stack
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted; run the same command again to finish\n"


def test_sigterm_during_a_task_unwinds_it_and_exits_143(capsys: pytest.CaptureFixture[str]) -> None:
    """A CI job cancelled or timed out sends SIGTERM: the action unwinds (its finally runs), as on Ctrl-C."""
    import signal
    import time

    undone: list[str] = []

    def step() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)  # a long step; the handler's exception ends the sleep
        finally:
            undone.append("begun step undone")

    def outer(_signum: int, _frame: object) -> None:  # stands for SIG_DFL, which would kill pytest
        undone.append("outer handler")

    saved = signal.signal(signal.SIGTERM, outer)
    try:
        with pytest.raises(SystemExit) as stopped:
            tasks._boundary(step)()
        assert signal.getsignal(signal.SIGTERM) is outer  # restored after the action
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert stopped.value.code == 143 and undone == ["begun step undone"]
    assert capsys.readouterr().err == "terminated (SIGTERM); run the same command again to finish\n"


def test_checking_locks_writes_no_target(project: Path) -> None:
    for task in _tasks(tasks.task_lock, _opts(project, check=True)):
        assert task["targets"] == []


def test_build_tasks_are_default_variants_and_ask_the_artifact_whether_they_are_current(project: Path) -> None:
    found = {t["name"]: t for t in _tasks(tasks.task_build, _opts(project))}
    assert list(found) == ["demo", "small"]
    assert all("file_dep" not in t for t in found.values())
    assert found["small"]["uptodate"][0]() is False  # no lockfile, no artifact yet
    (task,) = _tasks(tasks.task_build, _opts(project, stack="small", version="1"))
    # A version given is up to date when that artifact is whole and from today's inputs; else it
    # is built (or, when built from other inputs, refused).
    assert task["uptodate"][0]() is False


def test_the_build_check_reads_the_newest_manifest_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A current artifact with its image: up to date after one reading of its manifest.json (the
    image check takes the artifact the currency check found, not a second reading)."""
    from dataclasses import replace

    from swstack import artifact
    from swstack.attest import attest_artifact
    from swstack.fsutil import sha256_file
    from swstack.manifest import Manifest
    from swstack.spec import load_stack

    art = _artifact(project, "small", "1.0")
    _image_json(art, "r.example.org/swstack/small")
    lockfile = project / "lockfiles" / "small" / "conda-lock.yml"
    lockfile.parent.mkdir(parents=True)
    lockfile.write_text("version: 1\n")
    stack = load_stack(project / "stacks" / "small.toml")
    current = replace(Manifest.load(art / "manifest.json"), lockfile_sha256=sha256_file(lockfile),
                      stackfile_sha256=stack.source_hash)
    (art / "manifest.json").write_text(current.to_json())
    attest_artifact(art)  # what the build does after packing: an unattested artifact is not current
    reads: list[Path] = []
    real_load = artifact.load_manifest

    def counted(path: Path) -> Manifest:
        reads.append(path)
        return real_load(path)

    monkeypatch.setattr(artifact, "load_manifest", counted)
    (task,) = _tasks(tasks.task_build, _opts(project, stack="small"))
    assert task["uptodate"][0]() is True
    assert reads == [art / "manifest.json"]


def test_a_variant_alone_selects_the_stacks_that_have_it(project: Path) -> None:
    assert [t["name"] for t in _tasks(tasks.task_lock, _opts(project, variant="edge"))] == ["demo-edge"]
    with pytest.raises(UsageError, match=r"^no stack has a variant 'egde' \(variants: demo: lts, edge\)$"):
        selected_stacks(_opts(project, variant="egde"), all_variants=True)


def test_an_empty_variable_is_refused_not_taken_for_every_stack(tmp_path: Path) -> None:
    for name in ("stack", "variant", "site"):
        with pytest.raises(UsageError, match=rf"^{name}= is empty; give a value or leave {name}= out$"):
            Options.from_vars({name: ""}, tmp_path)


def test_an_edge_variant_builds_under_its_own_name(project: Path) -> None:
    (task,) = _tasks(tasks.task_build, _opts(project, stack="demo", variant="edge"))
    assert task["name"] == "demo-edge" and task["doc"] == "build demo-edge"


def test_image_tasks_depend_on_the_build_of_the_same_stack(project: Path) -> None:
    found = _tasks(tasks.task_image, _opts(project))
    assert [(t["name"], t["task_dep"]) for t in found] == [("demo", ["build:demo"]), ("small", ["build:small"])]
    # version= names an artifact that exists, whatever inputs made it: no build of today's first.
    (task,) = _tasks(tasks.task_image, _opts(project, stack="small", version="1.0"))
    assert "task_dep" not in task
    for creator in (tasks.task_push, tasks.task_publish, tasks.task_sign):
        assert [t["name"] for t in _tasks(creator, _opts(project))] == ["demo", "small"]


def test_the_boundary_turns_a_swstack_error_into_its_message_and_a_failed_task(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Failed the doit way, not exited: `doit -c` goes on to the other tasks."""
    from doit.exceptions import TaskFailed

    def fails() -> None:
        raise BuildError("stacks/demo.toml: the reason; what to do\nthe output's tail")

    failed = tasks._boundary(fails)()
    assert isinstance(failed, TaskFailed) and failed.exit_code == BuildError.exit_code
    assert failed.message == "stacks/demo.toml: the reason; what to do"
    assert not failed.report  # the message is on stderr already: doit's reporter adds nothing
    assert capsys.readouterr().err == "error: stacks/demo.toml: the reason; what to do\nthe output's tail\n"
    assert tasks._boundary(lambda: True)() is None  # doit reads None as success


def test_the_reporter_ends_the_run_with_the_first_failed_stage_s_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io
    import pickle

    from doit.exceptions import TaskFailed

    task = SimpleNamespace(name="ci:small", meta=None, executed=True, verbosity=2, actions=[])
    clean = tasks.Reporter(io.StringIO(), {})
    clean.add_failure(task, TaskFailed("doit's own failure"))
    clean.complete_run()  # no stage failed: doit's own exit code stands
    reporter = tasks.Reporter(io.StringIO(), {})
    for error in (StaleLockError("stale"), BuildError("broken")):
        # doit -n sends a failure from its worker process: it crosses as a pickle
        reporter.add_failure(task, pickle.loads(pickle.dumps(tasks.StageFailed(error))))
    with pytest.raises(SystemExit) as stopped:
        reporter.complete_run()
    assert stopped.value.code == StaleLockError.exit_code
    try:
        raise SystemExit(130)  # a Ctrl-C after the failures: doit unwinds through complete_run
    except SystemExit:
        reporter.complete_run()  # does not replace the 130


def test_a_bug_keeps_its_traceback() -> None:
    def buggy() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        tasks._boundary(buggy)()


def test_doit_variables_are_checked(tmp_path: Path) -> None:
    from swstack.errors import UsageError

    opts = Options.from_vars({"stack": "py3", "check": "yes"}, tmp_path)
    assert opts.stack == "py3" and opts.check
    assert not Options.from_vars({"check": "0"}, tmp_path).check
    with pytest.raises(UsageError, match=r"unknown variable chek=1; did you mean check=\?"):
        Options.from_vars({"chek": "1"}, tmp_path)
    with pytest.raises(UsageError, match="unknown variable stak=py3; did you mean stack="):
        Options.from_vars({"stak": "py3"}, tmp_path)
    with pytest.raises(UsageError, match="check=y: give check=1"):
        Options.from_vars({"check": "y"}, tmp_path)


# ---- version= -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["sub/dir", "1.0+local", "../../evil", "-x", "v" * 129, "hdd"])
def test_a_version_that_cannot_name_a_directory_and_a_tag_is_refused_in_one_line(
    tmp_path: Path, version: str
) -> None:
    from swstack.errors import UsageError

    with pytest.raises(UsageError, match=r"^version .*: use letters, digits and \. _ - \(at most 128") as caught:
        Options.from_vars({"version": version}, tmp_path)
    assert "\n" not in str(caught.value)
    assert Options.from_vars({"version": "2026.11.21.1"}, tmp_path).version == "2026.11.21.1"


def _run(task: dict[str, Any]) -> None:
    """Run a task's actions as doit would, and end as doit with our Reporter ends (a _boundary
    turns a SwstackError into a StageFailed; the run exits with its code)."""
    for action in task["actions"]:
        result = action()
        if isinstance(result, tasks.StageFailed):
            raise SystemExit(result.exit_code)


def _artifact(project: Path, stack_id: str, version: str) -> Path:
    from tests.support.artifacts import make_artifact

    from swstack.manifest import host_platform

    return make_artifact(project / "out" / stack_id / version, stack=stack_id, version=version,
                         platform=host_platform())


@pytest.mark.parametrize(
    "creator",
    [tasks.task_lock, tasks.task_images, tasks.task_channel, tasks.task_keygen],
    ids=["lock", "images", "channel", "keygen"],
)
def test_version_is_refused_where_it_cannot_apply_when_the_task_runs(
    project: Path, creator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Creating the tasks must not fail: doit creates every task on every command (`doit build version=1`).
    (task, *_) = _tasks(creator, _opts(project, stack="small", version="1"))
    assert task["uptodate"] == [False]  # never skipped as up to date: the refusal must be said
    with pytest.raises(SystemExit) as caught:
        _run(task)
    assert caught.value.code == 2
    assert "version=1 does not apply" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("creator", "act"), [(tasks.task_push, "push_attested"), (tasks.task_publish, "publish_attested")]
)
def test_push_and_publish_take_the_version_given_else_the_newest(
    project: Path, monkeypatch: pytest.MonkeyPatch, creator: Any, act: str
) -> None:
    from swstack import release

    sent: list[Path] = []
    monkeypatch.setattr(release, act, lambda site, artifact, *rest: sent.append(artifact))
    site = 'name = "test"\nartifacts = "{project}/out"\n[registry]\nurl = "r.example.org"\n'
    (project / "site.toml").write_text(site)
    older, newer = _artifact(project, "small", "1.0"), _artifact(project, "small", "2.0")
    os.utime(older / "manifest.json", (1, 1))  # the newest is the latest written
    for artifact in (older, newer):  # what `doit image` leaves (push refuses an artifact without it)
        _image_json(artifact, "r.example.org/swstack/small")
    for version in ("1.0", None):
        (task,) = _tasks(creator, _opts(project, stack="small", version=version))
        _run(task)
    assert sent == [older, newer]


def _image_json(artifact: Path, repository: str) -> None:
    """The ``image/image.json`` `doit image` leaves, made for ``repository``."""
    from swstack.image.plan import ImageResult

    (artifact / "image").mkdir()
    result = ImageResult(artifact / "image", repository, ("1.0",), "sha256:" + "1" * 64, "sha256:" + "2" * 64,
                         "r.example.org/swstack/debian:bookworm", "r.example.org/swstack/debian", ())
    (artifact / "image" / "image.json").write_text(result.to_json())


def test_push_refuses_an_image_made_for_another_registry(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image made under another site file names that site's registry: pushing it would send it
    there, not to this site's registry."""
    from swstack import release

    sent: list[Path] = []
    monkeypatch.setattr(release, "push_attested", lambda site, artifact: sent.append(artifact))
    site = 'name = "test"\nartifacts = "{project}/out"\n[registry]\nurl = "r.example.org"\n'
    (project / "site.toml").write_text(site)
    artifact = _artifact(project, "small", "1.0")
    _image_json(artifact, "staging.example.org:5000/swstack/small")
    (task,) = _tasks(tasks.task_push, _opts(project, stack="small"))
    with pytest.raises(SystemExit) as caught:
        _run(task)
    assert caught.value.code == 10 and sent == []
    assert capsys.readouterr().err.strip() == (
        f"error: {artifact / 'image'} was made for staging.example.org:5000/swstack/small, not this site's "
        "r.example.org/swstack/small; run `doit image stack=small` with this site first"
    )


def test_push_without_an_image_names_the_command_that_makes_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = 'name = "test"\nartifacts = "{project}/out"\n[registry]\nurl = "r.example.org"\n'
    (project / "site.toml").write_text(site)
    artifact = _artifact(project, "demo-edge", "3.0")
    (task,) = _tasks(tasks.task_push, _opts(project, stack="demo", variant="edge", version="3.0"))
    with pytest.raises(SystemExit):
        _run(task)
    assert capsys.readouterr().err.strip() == (
        f"error: {artifact}: no image built there yet; run `doit image stack=demo variant=edge version=3.0` first"
    )


def test_a_version_with_no_artifact_says_which_build_makes_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _artifact(project, "small", "2.0")
    for creator in (tasks.task_image, tasks.task_push):
        (task,) = _tasks(creator, _opts(project, stack="small", version="1.0"))
        with pytest.raises(SystemExit):
            _run(task)
        assert "run `doit build stack=small version=1.0`" in capsys.readouterr().err


def test_sign_without_a_key_is_one_line_naming_the_fix(project: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _artifact(project, "small", "1.0")
    keys = tmp_path / "keys"
    cases = {
        "": "site 'test' names no signing keys: set [signing] keys in its site file, then run `doit keygen`",
        f'[signing]\nkeys = "{keys}"\n': f"site 'test': no signing key in {keys} yet; run `doit keygen`",
    }
    for signing, message in cases.items():
        (project / "site.toml").write_text(f'name = "test"\nartifacts = "{{project}}/out"\n{signing}')
        (task,) = _tasks(tasks.task_sign, _opts(project, stack="small"))
        with pytest.raises(SystemExit) as caught:
            _run(task)
        assert caught.value.code != 0
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_ci_builds_and_sends_the_version_given(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from swstack import nightly

    seen: list[tuple[str, str | None]] = []
    def run_stack(stack: Any, site: Any, project: Path, version: str | None = None) -> None:
        seen.append((stack.stack_id, version))

    monkeypatch.setattr(nightly, "run_stack", run_stack)
    found = {t["name"]: t for t in _tasks(tasks.task_ci, _opts(project, stack="demo", version="3.0"))}
    _run(found["demo"])
    _run(found["demo-edge"])
    assert seen == [("demo", "3.0"), ("demo-edge", "3.0")]


def test_a_ci_run_failing_on_a_stack_file_leaves_no_summary_of_an_earlier_run(project: Path) -> None:
    """The summary is removed when a run starts, so a failed run leaves none, even one failing before any nightly."""
    out = project / "out"
    out.mkdir()
    for name in ("nightly.json", "nightly.md"):
        (out / name).write_text("last night's\n")
    (project / "stacks" / "small.toml").write_text('name = "small"\nchanels = 1\n')
    (task,) = _tasks(tasks.task_ci, _opts(project))
    with pytest.raises(SystemExit) as failed:
        _run(task)
    assert failed.value.code == SpecError.exit_code
    assert not (out / "nightly.json").exists() and not (out / "nightly.md").exists()


# ---- doit images ---------------------------------------------------------------------------------------


def test_images_is_one_task_whose_stdout_is_one_json_document(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from swstack import image

    monkeypatch.setattr(image, "list_images", lambda stack, site: [{"image": f"r.example.org/{stack.stack_id}:1"}])
    task = tasks.task_images.__wrapped__(_opts(project))
    assert task["meta"] == {tasks.STDOUT_IS_DATA: True}
    _run(task)
    entries = [{"image": "r.example.org/demo:1"}, {"image": "r.example.org/small:1"}]
    assert json.loads(capsys.readouterr().out) == entries


def test_the_reporter_keeps_a_data_task_s_stdout_for_its_data(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from doit.task import Task

    reporter = tasks.Reporter(sys.stdout, {})
    reporter.execute_task(Task("images", [lambda: None], meta={tasks.STDOUT_IS_DATA: True}))
    reporter.execute_task(Task("build:demo", [lambda: None]))
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (".  build:demo\n", ".  images\n")


def test_a_build_without_a_docker_engine_ends_at_its_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The base image goes into the site's registry through a Docker engine; with none answering
    (a namespace-sandbox build host), the build's image step is skipped with a line, not failed."""
    from swstack import image
    from swstack.site import load_site
    from swstack.spec import load_stack

    root = Path(__file__).resolve().parents[2]
    site = load_site(str(root / "sites/offline.toml"), root)
    stack = load_stack(root / "stacks/antares-kernel.toml")
    # The fault is the engine, not the registry (which mirror_base asks too, before the engine).
    monkeypatch.setattr(image, "registry_answers", lambda site: True)
    monkeypatch.setattr(image.registry, "registry_answers", lambda site: True)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with caplog.at_level("INFO", logger="swstack"):
        tasks._local_image(stack, site, root, tmp_path / "artifact")
    err = caplog.text
    assert f"image skipped: no Docker engine answers at unix://{tmp_path}/no-engine.sock" in err
    assert "an image's base goes into the site's registry through it: start one (scripts/with-engine)" in err
    assert 'sandbox = "namespace"' not in err  # a build's other way forward, no way to an image
    assert "the artifact is complete: run `doit image stack=antares-kernel` once it answers" in err
    # Neither registry nor engine: both named at once.
    monkeypatch.setattr(image, "registry_answers", lambda site: False)
    caplog.clear()
    with caplog.at_level("INFO", logger="swstack"):
        tasks._local_image(stack, site, root, tmp_path / "artifact")
    assert ("for the base image, nor a Docker engine, which the image needs too; start both and run "
            "`doit image stack=antares-kernel`") in caplog.text


def test_image_does_not_make_again_the_image_its_build_just_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`doit image` on an artifact without its image: the build (its dependency) makes the image,
    and the image task then does not build the same image a second time."""
    from types import SimpleNamespace

    from swstack import image
    from swstack.site import load_site
    from swstack.spec import load_stack

    root = Path(__file__).resolve().parents[2]
    site = load_site(str(root / "sites/offline.toml"), root)
    stack = load_stack(root / "stacks/antares-kernel.toml")
    artifact = tmp_path / "2026.01.01"
    artifact.mkdir()
    made: list[Path] = []

    def fake_build(stack: Any, site: Any, project: Path, artifact_dir: Path) -> Any:
        made.append(artifact_dir)
        return SimpleNamespace(repository="r/antares-kernel", digest="sha256:0", layers=(), tags=("latest",))

    monkeypatch.setattr(image, "registry_answers", lambda site: True)
    monkeypatch.setattr(image, "mirror_base", lambda stack, site: None)
    monkeypatch.setattr(image, "build_image", fake_build)
    monkeypatch.setattr(tasks, "_artifact", lambda stack, site, version: artifact)
    monkeypatch.setattr(tasks, "_IMAGES_MADE", set())
    with caplog.at_level("INFO", logger="swstack"):
        tasks._local_image(stack, site, root, artifact)  # the build task's image step
        tasks._image(stack, site, None)  # then the image task, in the same doit run
    assert made == [artifact]
    assert "antares-kernel 2026.01.01: made by the build just now" in caplog.text
    tasks._IMAGES_MADE.clear()
    tasks._image(stack, site, None)  # on its own (the image was there already): made anew
    assert made == [artifact, artifact]
