"""Stacks -> doit task dicts. ``dodo.py`` only re-exports these.

Task creation is pure (it reads stack files and plans; it never solves, builds or pushes);
the actions call the stage modules through ``_boundary``, which turns a ``SwstackError``
into its message and a failed task (``StageFailed``), so a user sees no traceback for a
mistake of theirs, and ``doit -c`` goes on to the other tasks; ``Reporter`` ends the run with
the first failure's exit code. Command-line variables: ``stack=``, ``variant=``, ``site=``,
``check=1``, ``version=``. ``doit ci`` is the nightly job (``nightly.py``), one subtask per
stack variant and a summary.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter

from . import log, paths
from .errors import SwstackError, Terminated, UsageError, first_line, sigterm_unwinds
from .manifest import check_version

TaskDict = dict[str, Any]
# A task's ``meta`` key saying its stdout is data (JSON), which doit's reporter must not write into.
STDOUT_IS_DATA = "swstack.stdout_is_data"


@dataclass(frozen=True)
class Options:
    """The doit command-line variables, read once."""

    stack: str | None = None
    variant: str | None = None
    site: str | None = None
    check: bool = False
    version: str | None = None
    project: Path = Path(".")

    @classmethod
    def from_doit(cls) -> Options:
        from doit import doit_cmd

        given: dict[str, str] = dict(doit_cmd._CMDLINE_VARS or {})  # doit keeps them there, unvalidated
        return cls.from_vars(given, paths.project_root())

    @classmethod
    def from_vars(cls, given: Mapping[str, str], project: Path) -> Options:
        """The variables, checked: a misspelt one (``chek=1``) must not silently mean "off"."""
        import difflib

        for name in given:
            if name not in VARIABLES:
                close = difflib.get_close_matches(name, VARIABLES, n=1)
                hint = f"did you mean {close[0]}=?" if close else f"known: {', '.join(f'{v}=' for v in VARIABLES)}"
                raise UsageError(f"unknown variable {name}={given[name]}; {hint}")
        check = str(given.get("check", "0")).lower()
        if check not in _TRUE + _FALSE:
            raise UsageError(f"check={given['check']}: give check=1 (fail if stale) or check=0")
        for name in ("stack", "variant", "site"):
            if given.get(name) == "":  # `stack=` would otherwise mean every stack, silently
                raise UsageError(f"{name}= is empty; give a value or leave {name}= out")
        version = given.get("version")
        if version is not None:
            check_version(version, UsageError)  # before any task writes a directory named after it
        return cls(
            stack=given.get("stack"),
            variant=given.get("variant"),
            site=given.get("site"),
            check=check in _TRUE,
            version=version,
            project=project,
        )


# The doit variables every task reads (the README and dodo.py's docstring describe them too).
VARIABLES = {
    "stack": "the stack to work on (default: every stack in stacks/)",
    "variant": "a variant of the stack file (default: its default variant; lock: every variant)",
    "site": "the site file, e.g. sites/offline.toml (default: $SWSTACK_SITE, else the real channels)",
    "check": "lock: 1 fails when a lockfile is stale instead of writing it (default 0)",
    "version": "build, ci: the version to give the artifact (default: YYYY.MM.DD[.N]); "
               "image, push, publish, sign: the artifact to use (default: the newest)",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class StageFailed(TaskFailed):  # type: ignore[misc]  # doit is untyped
    """A task whose stage raised a ``SwstackError``, as doit records a failed task: doit stops
    there, or with ``-c`` goes on to the tasks that do not depend on it. The message is on stderr
    already, so doit's reporter writes nothing more; ``exit_code`` is the error's, for ``Reporter``."""

    def __init__(self, exc: SwstackError) -> None:
        super().__init__(first_line(exc), report=False)
        self.exit_code = exc.exit_code


def _boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a stage; a ``SwstackError`` prints its message and fails the task with its code.

    Not an exit: doit would end there, and ``doit -c ci`` must go on to the other stacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log.setup()
        try:
            # A nightly cancelled or timed out gets SIGTERM: without a handler it dies at once,
            # leaving a begun step (a packing version directory, a sandbox) as it was.
            with sigterm_unwinds():
                result = fn(*args, **kwargs)
        except SwstackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return StageFailed(exc)
        except KeyboardInterrupt as exc:  # Terminated (SIGTERM) included: the whole run stops
            _exit_interrupted(exc)
        return None if result is None or result is True else result

    return wrapper


def _interruptible(check: Callable[[], bool]) -> Callable[[], bool]:
    """An ``uptodate`` check (doit runs it outside any action): Ctrl-C while it reads the
    lockfile, hashes the mirror's files or an artifact's tarball ends as an interrupted action
    does, not in a traceback."""

    @functools.wraps(check)
    def wrapper() -> bool:
        try:
            return check()
        except KeyboardInterrupt:
            _exit_interrupted()

    return wrapper


def _exit_interrupted(exc: KeyboardInterrupt | None = None) -> NoReturn:
    """Ctrl-C ends in one line and exit code 130 (SIGTERM, ``Terminated``: 143), as in ``swstack``,
    wherever doit was: loading the tasks, asking whether one is up to date, or running it."""
    how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
    print(f"{how}; run the same command again to finish", file=sys.stderr)
    raise SystemExit(code) from None


def guarded(fn: Callable[[Options], Iterator[TaskDict] | TaskDict]) -> Callable[[], Any]:
    """Task creators fail cleanly too (a bad stack name or stack file while listing tasks).

    doit creates every task for every command, so a creator that cannot plan (a broken stack
    file, an unknown ``stack=``) must not stop ``doit list`` or ``doit keygen``: it becomes one
    task that fails with the error, and its exit code, only when it is run.
    """

    @functools.wraps(fn)
    def creator() -> Any:
        log.setup()
        try:
            result = fn(Options.from_doit())
            if isinstance(result, dict):
                return result
            tasks = list(result)  # errors surface here, before doit iterates
            return (task for task in tasks)
        except SwstackError as exc:
            return _failing_task(exc)
        except KeyboardInterrupt:
            # doit calls every creator before any command (`doit list` too), and nothing of doit's
            # turns a Ctrl-C there (reading the stack and site files) into less than a traceback.
            _exit_interrupted()

    return creator


def _failing_task(exc: SwstackError, before: Callable[[], None] | None = None) -> TaskDict:
    """A task standing for one that could not be planned: it says why when run, and in ``doit list``.

    ``before``: what the failed run must still do first (``doit ci``: drop the last run's summary)."""

    def fail() -> None:
        if before is not None:
            before()
        raise exc

    return {"actions": [_boundary(fail)], "doc": f"(cannot be planned: {first_line(exc)})", "uptodate": [False],
            "verbosity": 2}


# ---- which stacks ------------------------------------------------------------------------------------


def selected_stacks(opts: Options, *, all_variants: bool) -> list[Any]:
    """The ``Stack`` objects a command works on, from ``stack=`` and ``variant=``."""
    from .spec import check_own_live_path, find_stack_file, load_stack, load_stack_file, stack_files

    stacks_dir = opts.project / "stacks"
    files = [find_stack_file(opts.stack, stacks_dir)] if opts.stack else stack_files(stacks_dir)
    for path in files:
        check_own_live_path(path, stacks_dir)
    if opts.variant and not opts.stack:
        # variant= alone: the stacks that have that variant (a stack without it is not an error).
        variants = {p: load_stack_file(p).variants for p in files}
        having = [p for p in files if opts.variant in variants[p]]
        if not having:
            known = "; ".join(f"{p.stem}: {', '.join(v)}" for p, v in variants.items() if v) or "none"
            raise UsageError(f"no stack has a variant {opts.variant!r} (variants: {known})")
        files = having
    stacks = []
    for path in files:
        if opts.variant:
            stacks.append(load_stack(path, opts.variant))
            continue
        names = load_stack_file(path).variant_names if all_variants else (None,)
        stacks.extend(load_stack(path, v) for v in names)
    return stacks


def _site(opts: Options) -> Any:
    from .site import load_site

    return load_site(opts.site, opts.project)


# ---- tasks --------------------------------------------------------------------------------------------


@guarded
def task_channel(opts: Options) -> TaskDict:
    """Build the offline conda channel (python, wheels, compiled packages) the offline site mirrors."""
    from .offline_channel import channel_inputs, default_out_dir, python_is_current

    site = _site(opts)
    out = default_out_dir(site.cache)
    recipes = opts.project / "channel" / "recipes"

    @_boundary
    def build() -> None:
        from .offline_channel import build_channel

        refuse_version(opts, "channel", "the channel has no version")
        build_channel(out, recipes_dir=recipes, cache_dir=site.cache)

    return {
        "actions": [build],
        "file_dep": [str(p) for p in channel_inputs(recipes)],
        "targets": [str(out / "noarch" / "repodata.json")],
        # The python package also depends on the apt state (its libraries' .debs). version=
        # always runs, for the action to refuse it.
        "uptodate": [False] if opts.version is not None
        else [_interruptible(lambda: python_is_current(out, recipes))],
        "verbosity": 2,
        "clean": True,
    }


def _is_locked(plan: Any) -> bool:
    """doit's ``uptodate`` for a lock task: the lockfile records today's inputs (and packages)."""
    from .lock import staleness

    return staleness(plan) is None


@guarded
def task_lock(opts: Options) -> Iterator[TaskDict]:
    """Solve stacks into lockfiles/<stack>[/<variant>]/conda-lock.yml (check=1: fail if stale)."""
    from .lock import lock, plan_lock

    site = _site(opts)
    for stack in selected_stacks(opts, all_variants=True):
        plan = plan_lock(stack, site, opts.project)

        @_boundary
        def run(stack: Any = stack) -> None:
            refuse_version(opts, "lock", "a lockfile has no version")
            lock(stack, site, opts.project, check=opts.check)

        yield {
            "name": stack.stack_id,
            "doc": f"lock {stack.stack_id}",
            "actions": [run],
            "targets": [] if opts.check else [str(plan.path)],
            # Up to date when the lockfile records the hash of today's inputs; check=1 always runs,
            # and so does version=, for its action to refuse it. No file_dep: doit would rerun on
            # a comment, or on a fresh clone with no .doit.db.
            "uptodate": [False] if opts.check or opts.version is not None
            else [_interruptible(functools.partial(_is_locked, plan))],
            "verbosity": 2,
        }


@guarded
def task_build(opts: Options) -> Iterator[TaskDict]:
    """Build and pack stacks: artifacts/<stack>/<version>/<stack>-<version>-<platform>.tar.zst (+ manifest, image).

    The image (an OCI layout beside the tarball) is made when the site's registry answers; else the
    build ends at the artifact and says to run `doit image`."""
    from .build import current_artifact, run_build

    site = _site(opts)
    image_only: dict[str, Path] = {}  # stacks whose artifact is current and lacks only its image: that artifact
    for stack in selected_stacks(opts, all_variants=False):

        def uptodate(stack: Any = stack) -> bool:
            artifact_dir = current_artifact(stack, site, opts.project, version=opts.version)
            if artifact_dir is None:
                return False
            if _image_missing(stack, site, artifact_dir):
                image_only[stack.stack_id] = artifact_dir
                return False
            return True

        @_boundary
        def run(stack: Any = stack) -> None:
            if stack.stack_id in image_only:  # doit -a (no up-to-date check) builds anew
                _local_image(stack, site, opts.project, image_only[stack.stack_id])
                return
            result = run_build(stack, site, opts.project, version=opts.version)
            _local_image(stack, site, opts.project, result.artifact_dir)

        yield {
            "name": stack.stack_id,
            "doc": f"build {stack.stack_id}",
            "actions": [run],
            # Up to date when the newest artifact (version=: that version's) came from today's
            # lockfile and stack file, and is whole (current_artifact says why not), and has its image
            # when the registry answers (else only the image is made); no file_dep, which would
            # rebuild on a comment. A version= built from other inputs runs, and is refused.
            "uptodate": [_interruptible(uptodate)],
            "verbosity": 2,
        }


def _image_missing(stack: Any, site: Any, artifact_dir: Path) -> bool:
    """A current artifact with no local image while the site's registry answers (the image was
    removed, or the registry was down when the artifact was built): the build makes just the image."""
    from .image import registry_answers
    from .image.plan import IMAGE_DIR, IMAGE_JSON

    if (artifact_dir / IMAGE_DIR / IMAGE_JSON).is_file() or not registry_answers(site):
        return False
    log.info(f"build:{stack.stack_id} is not up to date: {artifact_dir} has no image; making it")
    return True


def _local_image(stack: Any, site: Any, project: Path, artifact_dir: Path) -> None:
    """A build ends at a local image (an OCI layout beside the tarball); pushing stays explicit.

    The image is layered on the stack's base, which the site keeps in its registry; with no
    registry answering, the build ends at the tarball and says how to get the image.
    """
    from .errors import SandboxError
    from .image import build_image, mirror_base, registry_answers

    image_command = f"`{stack.doit_command('image')}`"
    if not registry_answers(site):
        from .engine import IMAGE_HINT, DockerEngine

        # The image needs both: say so now, not one at a time.
        engine = DockerEngine(hint=IMAGE_HINT).available()
        missing = "" if engine else ", nor a Docker engine, which the image needs too"
        log.info(f"image skipped: no registry answers at {site.registry or '(none set)'} for the base image{missing}; "
                 f"start {'it' if engine else 'both'} and run {image_command}")
        return
    try:
        mirror_base(stack, site)
    except SandboxError as exc:
        # The base is put into the site's registry through a Docker engine; a build in the
        # namespace sandbox needs none, so its complete artifact is not a failure without one.
        log.info(f"image skipped: {exc}; the artifact is complete: run {image_command} once it answers")
        return
    build_image(stack, site, project, artifact_dir)  # which says what it made, in one line
    _IMAGES_MADE.add(artifact_dir.resolve())
    log.info(f"`{stack.doit_command('push')}` pushes it")


# Artifacts whose image this doit run has made: `doit image` runs the build first, which makes a
# missing image; the image task then does not make the same image a second time.
_IMAGES_MADE: set[Path] = set()


@guarded
def task_ci(opts: Options) -> Iterator[TaskDict] | TaskDict:
    """The nightly job per stack and variant: lock check, build, smoke test, image, push, publish; then a summary.

    The summary (<artifacts>/nightly.json, nightly.md) lists sizes, digests and packages changed since the
    previous nightly, and each stack that failed with its error: `doit -c ci` goes on past a failed stack
    to the others and to the summary."""
    from .nightly import drop_summary

    site = _site(opts)
    try:
        stacks = selected_stacks(opts, all_variants=True)
    except SwstackError as exc:
        # No nightly starts (a stack file with an error, an unknown stack=), so none drops the last
        # run's summary: the failing run does, or that summary would pass for this run's.
        return _failing_task(exc, before=functools.partial(drop_summary, site))
    return _ci_tasks(opts, site, stacks)


def _ci_tasks(opts: Options, site: Any, stacks: list[Any]) -> Iterator[TaskDict]:
    from .nightly import run_stack, write_summary

    for stack in stacks:

        @_boundary
        def run(stack: Any = stack) -> None:
            run_stack(stack, site, opts.project, version=opts.version)  # the report is on disk; doit wants None

        yield {"name": stack.stack_id, "doc": f"nightly of {stack.stack_id}", "actions": [run],
               "uptodate": [False], "verbosity": 2}
    ids = [s.stack_id for s in stacks]

    @_boundary
    def summary() -> None:
        write_summary(site, ids)

    # No task_dep on the stacks: doit runs no task whose dependency failed, and the summary is
    # wanted most when one did (`doit -c ci`). Yielded last, it runs after them: `doit ci` runs a
    # group's subtasks in order (one at a time; -n would not wait for them).
    yield {"name": "summary", "doc": "gather the nightly reports and failures into nightly.json and nightly.md",
           "actions": [summary], "uptodate": [False], "verbosity": 2}


def task_demo() -> TaskDict:
    """The main job end to end: offline channel, lock, build, pack and image every stack."""
    return {"actions": None, "task_dep": ["channel", "lock", "build"]}


def refuse_version(opts: Options, task: str, why: str) -> None:
    """``version=`` where it cannot apply is an error, not ignored: checked when the task runs,
    since doit creates every task (this one too) whatever the command line asks for."""
    if opts.version is not None:
        raise UsageError(f"{task}: version={opts.version} does not apply ({why}); "
                         f"version= goes with build, image, push, publish, sign and ci")


def _artifact(stack: Any, site: Any, version: str | None) -> Path:
    """The artifact directory a task works on: ``version``'s, else the newest; complete, for this platform."""
    from .build import artifact_manifest
    from .errors import BuildError
    from .manifest import Manifest, host_platform

    manifest: Manifest | None = artifact_manifest(site.artifacts, stack.stack_id, host_platform(), version)
    if manifest is None:
        what = f"{stack.stack_id} {version}" if version else stack.stack_id
        raise BuildError(f"no artifact of {what} for {host_platform()} in {site.artifacts}; "
                         f"run `{stack.doit_command('build', version)}`")
    return Path(str(site.artifacts)) / str(stack.stack_id) / manifest.version


def _per_stack(opts: Options, verb: str, act: Callable[[Any, Any, str | None], None],
               **extra: Any) -> Iterator[TaskDict]:
    """One always-run subtask per selected stack (default variants) calling ``act(stack, site, version)``."""
    site = _site(opts)
    for stack in selected_stacks(opts, all_variants=False):
        action = _boundary(functools.partial(act, stack, site, opts.version))
        yield {"name": stack.stack_id, "doc": f"{verb} {stack.stack_id}", "actions": [action],
               "uptodate": [False], "verbosity": 2, **extra}


def _image(stack: Any, site: Any, version: str | None) -> None:
    from .image import build_image, mirror_base

    artifact = _artifact(stack, site, version)  # first: a missing one is the user's to fix, before any pull
    if artifact.resolve() in _IMAGES_MADE:
        log.info(f"image of {stack.stack_id} {artifact.name}: made by the build just now")
        return
    mirror_base(stack, site)
    build_image(stack, site, paths.project_root(), artifact)  # which says what it made, in one line


def _push(stack: Any, site: Any, version: str | None) -> None:
    from .errors import PushError
    from .image.plan import IMAGE_DIR, IMAGE_JSON, image_repository, load_image_result
    from .release import push_attested

    artifact = _artifact(stack, site, version)
    if not (artifact / IMAGE_DIR / IMAGE_JSON).is_file():  # the command that makes it, for this stack
        raise PushError(f"{artifact}: no image built there yet; run `{stack.doit_command('image', version)}` first")
    # The image records the repository it was made for: made under another site file (another
    # registry), pushing it would send it there, not to this site's registry.
    built_for, wanted = load_image_result(artifact).repository, image_repository(stack, site)
    if built_for != wanted:
        raise PushError(f"{artifact / IMAGE_DIR} was made for {built_for}, not this site's {wanted}; "
                        f"run `{stack.doit_command('image', version)}` with this site first")
    push_attested(site, artifact)


def _publish(stack: Any, site: Any, version: str | None) -> None:
    from .errors import PushError
    from .release import publish_attested

    if not site.registry:  # before looking for the artifact: the fix is in the site file
        raise PushError("the site names no registry: set [registry] url in the site file")
    publish_attested(site, _artifact(stack, site, version), stack.stack_id)


def _sign(stack: Any, site: Any, version: str | None) -> None:
    """Sign the artifact's files (``version``'s, else the newest), and its image and published
    artifact where the registry has them."""
    from .errors import SignError
    from .image import load_image_result
    from .sign import KeyDir, sign_artifact_files, sign_if_pushed

    # Asked to sign: a missing key is this task's error (push and publish go on unsigned, saying so).
    if site.signing_keys is None:
        raise SignError(f"site {site.name!r} names no signing keys: set [signing] keys in its site file, "
                        "then run `doit keygen`")
    keys = KeyDir(site.signing_keys)
    if not keys.exists():
        raise SignError(f"site {site.name!r}: no signing key in {site.signing_keys} yet; run `doit keygen`")
    artifact = _artifact(stack, site, version)
    sign_artifact_files(artifact, keys)
    if (artifact / "image").is_dir():
        image = load_image_result(artifact)
        if not sign_if_pushed(keys, site.lookaside, f"{image.repository}@{image.digest}"):
            log.info(f"{image.repository}@{image.digest[:19]}: not in the registry; `doit push` signs it")
    if site.registry and not sign_if_pushed(keys, site.lookaside, f"{site.registry}/{stack.stack_id}:{artifact.name}"):
        log.info(f"{stack.stack_id} {artifact.name}: not published; `doit publish` signs it")


@guarded
def task_image(opts: Options) -> Iterator[TaskDict]:
    """Build the layered image of a stack's newest artifact (an OCI layout beside the tarball)."""
    for task in _per_stack(opts, "image of", _image):
        # The newest artifact is built first when the inputs changed. version= names one that
        # exists, made from whatever inputs it was: its image is made of it as it is (building
        # it again from today's inputs would be refused, and is not what was asked).
        yield task if opts.version is not None else {**task, "task_dep": [f"build:{task['name']}"]}


@guarded
def task_push(opts: Options) -> Iterator[TaskDict]:
    """Push a stack's image to the site's registry (layers it has are skipped, the manifest goes last)."""
    return _per_stack(opts, "push", _push)


@guarded
def task_publish(opts: Options) -> Iterator[TaskDict]:
    """Publish a stack's newest tarball to the site's registry as an OCI artifact (for `swstack activate`)."""
    return _per_stack(opts, "publish", _publish)


@guarded
def task_sign(opts: Options) -> Iterator[TaskDict]:
    """Sign a stack's newest artifact (manifest.json.sig) and its pushed image and published artifact."""
    return _per_stack(opts, "sign", _sign)


@guarded
def task_keygen(opts: Options) -> TaskDict:
    """Make the site's signing keys in its [signing] keys directory (cosign P-256 key and OpenPGP key)."""
    site = _site(opts)

    @_boundary
    def make() -> None:
        from .errors import SignError
        from .sign import keygen

        refuse_version(opts, "keygen", "keys have no version")
        if site.signing_keys is None:
            raise SignError(f"site {site.name!r}: set [signing] keys (a directory) in the site file first")
        keys = keygen(site.signing_keys, f"swstack {site.name} signing key")
        log.info(f"give hosts {keys.cosign_pub} (swstack activate) and {keys.openpgp_pub} (podman signedBy)")

    return {"actions": [make], "uptodate": [False], "verbosity": 2}


@guarded
def task_images(opts: Options) -> TaskDict:
    """List the registry's images of the stacks as one JSON list, for a spawner's image menu."""
    site = _site(opts)
    stacks = selected_stacks(opts, all_variants=False)

    @_boundary
    def show() -> None:
        import json

        from .image import list_images

        refuse_version(opts, "images", "it lists every tag in the registry")
        entries = [entry for stack in stacks for entry in list_images(stack, site)]
        sys.stdout.write(json.dumps(entries, indent=2) + "\n")

    # One task, one JSON document: stdout is data a script reads (doit's own line goes to stderr).
    return {"actions": [show], "uptodate": [False], "verbosity": 2, "meta": {STDOUT_IS_DATA: True}}


class Reporter(ConsoleReporter):  # type: ignore[misc]  # doit is untyped
    """doit's console reporter, with two changes.

    For a task whose stdout is data (``meta``: ``STDOUT_IS_DATA``) its own lines (``.  images``, a
    failure's) go to stderr, so ``doit images > menu.json`` is pure JSON. And a run in which a
    stage failed (``StageFailed``) exits with that error's code (the first one's, under ``-c``),
    as the docs promise (``doit lock check=1``: 5), not with doit's 1 for any failure."""

    outstream: Any  # set by doit's __init__: where the report goes (stdout)

    def __init__(self, outstream: Any, options: Any) -> None:
        super().__init__(outstream, options)
        self.exit_codes: list[int] = []

    def execute_task(self, task: Any) -> None:
        with self._lines_of(task):
            super().execute_task(task)

    def add_failure(self, task: Any, fail: Any) -> None:
        if isinstance(fail, StageFailed):
            self.exit_codes.append(fail.exit_code)
        with self._lines_of(task):
            super().add_failure(task, fail)

    def complete_run(self) -> None:
        """doit's last word on a run (its database is saved by then); doit has no other place
        to choose the exit code. Not while a Ctrl-C unwinds the run: that one keeps its 130."""
        super().complete_run()
        if self.exit_codes and sys.exc_info()[0] is None:
            raise SystemExit(self.exit_codes[0])

    @contextlib.contextmanager
    def _lines_of(self, task: Any) -> Iterator[None]:
        """Write to stderr while reporting on ``task`` when its stdout is data."""
        if not (task.meta or {}).get(STDOUT_IS_DATA):
            yield
            return
        saved = self.outstream
        self.outstream = sys.stderr
        try:
            yield
        finally:
            self.outstream = saved
