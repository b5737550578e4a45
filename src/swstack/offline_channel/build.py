"""The whole channel build: plan, fetch, build what the cache lacks, assemble and index the
channel in a sibling directory, then swap it in.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .. import log, paths
from ..errors import ChannelError, SwstackError
from ..fsutil import atomic_dir, exclusive_lock
from .labclient import build_labclient_wheel, labclient_files, make_labclient_repo, write_simple_index
from .packages import BuildContext, build_job, cached_packages, link_or_copy
from .plan import (
    ChannelPlan,
    ChannelReport,
    PackageJob,
    plan_channel,
    recipe_files,
    select_packages,
    tool_versions,
)
from .python import pinned_python
from .target import BUILD_ROOT, PLATFORM, ensure_dir
from .wheels import fetch_wheels, parse_wheel_list


def channel_inputs(recipes_dir: Path) -> list[Path]:
    """Files whose change means the channel must be rebuilt (doit's ``file_dep``)."""
    channel_dir = recipes_dir.parent
    files = recipe_files(recipes_dir)
    wheel_list = channel_dir / "wheels.txt"
    if wheel_list.is_file():
        files.append(wheel_list)
    client = channel_dir.parent / "clients" / "labclient"
    if client.is_dir():
        files.extend(labclient_files(client))
    files.extend(sorted(Path(__file__).resolve().parent.glob("*.py")))  # the builder itself
    return files


# The python package's key, written into the channel: its inputs include the apt state
# (library .debs, build packages), which no file of the checkout shows.
PYTHON_KEY_FILE = "python-key"


def python_is_current(out_dir: Path, recipes_dir: Path) -> bool:
    """Whether the channel at ``out_dir`` holds the python package of today's inputs
    (compiler, Debian packages): doit's ``uptodate`` beside the input files."""
    recorded = out_dir / PYTHON_KEY_FILE
    if not recorded.is_file():
        return False
    wheel_list = recipes_dir.parent / "wheels.txt"
    wheels = parse_wheel_list(wheel_list.read_text(), str(wheel_list))
    plan = plan_channel(recipes_dir, wheels, pinned_python(recipes_dir / "python"), tool_versions())
    return recorded.read_text().strip() == plan.job("python").key


def default_out_dir(cache: Path | None = None) -> Path:
    """Where the offline site (``{cache}/offline-channel``) and ``doit channel`` keep the channel:
    in ``cache`` (a site's), else swstack's cache directory."""
    return (cache or paths.cache_dir()) / "offline-channel"


def build_channel(
    out_dir: Path,
    *,
    recipes_dir: Path,
    cache_dir: Path,
    wheelhouse: Path | None = None,
    jobs: int = 2,
    only: Collection[str] | None = None,
) -> ChannelReport:
    """Build the offline channel at ``out_dir``; packages come from the cache when their key
    matches. ``out_dir`` is replaced whole at the end, never left half-written.

    ``only``: build and index just these packages (tests and debugging; python is always
    built: binary-wheel packages need it). The result is not a solvable channel."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    channel_dir = recipes_dir.parent
    wheel_list = channel_dir / "wheels.txt"
    if not wheel_list.is_file():
        raise ChannelError(f"{wheel_list} is missing; create it with `python -m swstack.offline_channel lock-wheels`")
    wheels = parse_wheel_list(wheel_list.read_text(), str(wheel_list))
    python = pinned_python(recipes_dir / "python")
    plan = plan_channel(recipes_dir, wheels, python, tool_versions())
    if only is not None:
        plan = select_packages(plan, only)
    cache_dir.mkdir(parents=True, exist_ok=True)

    # One builder at a time per cache: a second one waits, then finds everything cached.
    with _cache_lock(cache_dir):
        todo = [j for j in plan.jobs if not cached_packages(cache_dir, j)]
        reused = tuple(j.name for j in plan.jobs if j not in todo)
        log.step(f"channel: {len(plan.jobs)} packages, {len(reused)} cached, {len(todo)} to build")
        wheel_paths: dict[str, Path] = {}
        need_wheels = [j.wheel for j in todo if j.wheel is not None]
        if need_wheels:
            t = time.monotonic()
            wheel_paths = fetch_wheels(need_wheels, cache_dir, wheelhouse)
            timings["fetch"] = time.monotonic() - t

        if todo:
            t = time.monotonic()
            with _build_root(BUILD_ROOT) as root:
                _build_all(
                    plan,
                    todo,
                    BuildContext(cache_dir, root, root / "python-channel", wheel_paths, python),
                    jobs,
                )
            timings["build"] = time.monotonic() - t
        t = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="channel-assemble.", dir=ensure_dir(cache_dir / "tmp")))
        try:
            with atomic_dir(out_dir) as tmp_out:
                _assemble(plan, cache_dir, tmp_out)
                (tmp_out / PYTHON_KEY_FILE).write_text(plan.job("python").key + "\n")
                _write_pip_side(channel_dir.parent / "clients" / "labclient", tmp_out, cache_dir, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        timings["assemble"] = time.monotonic() - t
    report = ChannelReport(
        path=out_dir,
        built=tuple(j.name for j in todo),
        reused=reused,
        seconds=time.monotonic() - started,
        timings=timings,
    )
    log.info(report.summary())
    return report


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    with exclusive_lock(ensure_dir(cache_dir / "channel") / ".lock",
                        f"channel: waiting for another build using {cache_dir}"):
        yield


@contextmanager
def _build_root(root: Path) -> Iterator[Path]:
    """Hold ``root`` (the fixed build directory) for one build: locked, emptied before and after."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / ".lock").touch()
    except OSError as exc:
        raise ChannelError(
            f"cannot use the channel build directory {root}: {exc}; packages are built there (a "
            "fixed path keeps them reproducible): remove it or make it writable"
        ) from exc
    with exclusive_lock(root / ".lock", f"channel: waiting for another channel build using {root}"):
        try:
            _empty_except_lock(root)
            yield root
        finally:
            _empty_except_lock(root)


def _empty_except_lock(root: Path) -> None:
    # The lock file stays: removing it while another build waits on it would let two in.
    for child in root.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _build_all(plan: ChannelPlan, todo: Sequence[PackageJob], ctx: BuildContext, jobs: int) -> None:
    """Build python first (binary wheels install into a host env with it), the rest in parallel."""
    python_job = plan.job("python")
    with log.progress("channel packages", total=len(todo), unit="packages") as bar:
        if python_job in todo:
            build_job(python_job, ctx)
            bar.advance()
        _publish_python(python_job, ctx)
        rest = [j for j in todo if j is not python_job]
        # Slow rattler-build jobs first so the fast conversions fill the gaps.
        rest.sort(key=lambda j: (j.kind == "noarch-wheel", j.name))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(build_job, job, ctx): job for job in rest}
            errors: list[str] = []
            for fut in concurrent.futures.as_completed(futures):
                job = futures[fut]
                try:
                    fut.result()
                except SwstackError as exc:
                    errors.append(f"{job.name}: {exc}")
                    for other in futures:
                        other.cancel()
                bar.advance()
    if errors:
        raise ChannelError("building the channel failed:\n" + "\n".join(errors))


def _publish_python(python_job: PackageJob, ctx: BuildContext) -> None:
    """A one-package channel with python in it, for the host envs of binary-wheel builds."""
    for pkg in cached_packages(ctx.cache_dir, python_job):
        target = ctx.python_channel / pkg.parent.name / pkg.name
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(pkg, target)
    (ctx.python_channel / "noarch").mkdir(parents=True, exist_ok=True)
    index_channel(ctx.python_channel)


def _assemble(plan: ChannelPlan, cache_dir: Path, out: Path) -> None:
    for sub in (PLATFORM, "noarch"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for job in plan.jobs:
        pkgs = cached_packages(cache_dir, job)
        if not pkgs:
            raise ChannelError(f"{job.name}: no cached package after the build (cache {cache_dir})")
        for pkg in pkgs:
            link_or_copy(pkg, out / pkg.parent.name / pkg.name)
    index_channel(out)


def index_channel(channel: Path) -> None:
    import asyncio

    from rattler.index import index_fs

    for sub in (PLATFORM, "noarch"):
        (channel / sub).mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    except Exception as exc:  # rattler raises its own exception types
        raise ChannelError(f"indexing the channel at {channel} failed: {exc}") from exc


def _write_pip_side(client: Path, out: Path, cache_dir: Path, work: Path) -> None:
    if not client.is_dir():
        raise ChannelError(f"{client} is missing: the channel's pip side is built from it")
    wheel = build_labclient_wheel(client, out / "pip", cache_dir)
    write_simple_index(out / "pip", [wheel])
    make_labclient_repo(client, out / "git" / "labclient.git", work)
