"""One planned job -> its ``.conda`` package(s) in the shared cache: a recipe or the python
built by rattler-build, a pure wheel converted by whl2conda, a binary wheel installed with pip.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .. import proc
from ..errors import ChannelError
from .conda_repack import repack_conda
from .cpython import INSTALL_PREFIX, ensure_compiled, fetch_debs
from .plan import PackageJob, render_binary_wheel_recipe
from .python import PythonBuild, stage_python
from .target import BUILD_VIRTUAL_PACKAGES, PACKAGE_FORMAT, PLATFORM, SOURCE_DATE_EPOCH
from .wheels import conda_run_deps, read_wheel_metadata


@dataclass(frozen=True)
class BuildContext:
    cache_dir: Path
    work: Path  # scratch space for this build_channel call
    python_channel: Path  # a file:// channel holding the python package (for host envs)
    wheel_paths: Mapping[str, Path]
    python: PythonBuild


def package_cache_dir(cache_dir: Path, job: PackageJob) -> Path:
    return cache_dir / "channel" / job.key


def cached_packages(cache_dir: Path, job: PackageJob) -> list[Path]:
    """The packages a previous build of ``job`` left in the cache (empty if none)."""
    entry = package_cache_dir(cache_dir, job)
    if not (entry / "done").is_file():
        return []
    return sorted(p for p in entry.rglob("*.conda"))


def build_job(job: PackageJob, ctx: BuildContext) -> list[Path]:
    """Build one package into the cache; return the package files.

    The build directory is ``<work>/<name>``: with ``work`` at ``BUILD_ROOT`` every path
    the tools record is the same on every machine."""
    out = ctx.work / job.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if job.kind == "noarch-wheel":
        _convert_pure_wheel(job, ctx, out)
    elif job.kind == "binary-wheel":
        _build_binary_wheel(job, ctx, out)
    elif job.kind == "python":
        _build_python(job, ctx, out)
    else:
        assert job.recipe is not None
        _rattler_build(job, job.recipe, out, ctx, dict(job.env))
    built = sorted(p for p in out.rglob("*.conda") if "bld" not in p.relative_to(out).parts)
    if not built:
        raise ChannelError(f"{job.name}: the build produced no package in {out}")
    for pkg in built:
        repack_conda(pkg, SOURCE_DATE_EPOCH)
    stored = _store(job, built, ctx.cache_dir)
    shutil.rmtree(out, ignore_errors=True)
    return stored


def _store(job: PackageJob, built: Sequence[Path], cache_dir: Path) -> list[Path]:
    entry = package_cache_dir(cache_dir, job)
    tmp = entry.with_name(entry.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    stored = []
    for pkg in built:
        pkg.chmod(0o644)  # rattler-build writes 0600; the channel is read by other users
    for pkg in built:
        subdir = pkg.parent.name if pkg.parent.name in (PLATFORM, "noarch") else _subdir_of(pkg)
        target = tmp / subdir / pkg.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(pkg, target)
        stored.append(entry / subdir / pkg.name)
    (tmp / "done").write_text(job.name + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    return stored


def _subdir_of(pkg: Path) -> str:
    from conda_package_streaming.package_streaming import stream_conda_info

    with open(pkg, "rb") as fh:
        for tar, member in stream_conda_info(pkg.name, fh):
            if member.name == "info/index.json":
                extracted = tar.extractfile(member)
                assert extracted is not None
                return str(json.load(extracted).get("subdir", "noarch"))
    return "noarch"


def _convert_pure_wheel(job: PackageJob, ctx: BuildContext, out: Path) -> None:
    assert job.wheel is not None
    wheel = ctx.wheel_paths[job.wheel.name]
    meta = read_wheel_metadata(wheel)
    tree_root = out / "tree"
    argv: list[str | os.PathLike[str]] = [
        sys.executable,
        "-m",
        "whl2conda",
        "convert",
        wheel,
        "--out-dir",
        tree_root,
        "--name",
        job.name,
        "--build-number",
        "0",
        "--overwrite",
        "--format",
        "tree",
        "--quiet",
        "--no-update-stdrenames",
        "--ignore-pyproject",
    ]
    # Dependencies are ours: markers evaluated for linux-64 / CPython 3.11, names mapped
    # to conda-forge's. whl2conda's own are dropped so nothing is decided twice.
    for req in meta.requires_dist:
        try:
            argv += ["-D", Requirement(req).name]
        except InvalidRequirement:
            continue
    deps = conda_run_deps(meta.requires_dist, meta.requires_python, binary=False)
    for dep in deps[1:]:
        argv += ["-A", dep]
    argv += ["--python", deps[0].removeprefix("python").strip() or ">=3"]
    proc.run(
        argv,
        extra_env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)},
        error=ChannelError,
        what=f"whl2conda convert {job.wheel.filename}",
        timeout=600,
    )
    trees = [p for p in tree_root.iterdir() if (p / "info" / "index.json").is_file()]
    if len(trees) != 1:
        raise ChannelError(
            f"whl2conda convert {job.wheel.filename}: expected one package tree in {tree_root}"
        )
    # Packed in a child process: conda-package-handling resolves paths against the
    # working directory, which threads must not change.
    proc.run(
        [
            sys.executable,
            "-m",
            "swstack.offline_channel",
            "pack-tree",
            "--tree",
            trees[0],
            "--name",
            job.name,
            "--dest",
            out / "noarch",
        ],
        cwd=trees[0],
        error=ChannelError,
        what=f"packing {job.name}",
    )


def pack_tree(tree: Path, name: str, dest: Path) -> Path:
    """Pack an unpacked conda package into ``dest/<name>-<version>-<build>.conda``.

    whl2conda normalises every package name to dashes; conda-forge kept underscores
    for some (``jupyter_server``), so the name is set here, in ``info/index.json``.
    """
    from conda_package_handling import api as cph

    index_path = tree / "info" / "index.json"
    index = json.loads(index_path.read_text())
    index["name"] = name
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() or p.is_symlink())
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}-{index['version']}-{index['build']}.conda"
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        cph.create(str(tree), files, str(target), compression_level=3, compression_threads=1)
    finally:
        os.chdir(cwd)
    return target


def _build_binary_wheel(job: PackageJob, ctx: BuildContext, out: Path) -> None:
    assert job.wheel is not None
    # The recipe names the wheel by path: one inside the build directory, not the cache's.
    wheel = out / job.wheel.filename
    link_or_copy(ctx.wheel_paths[job.wheel.name], wheel)
    meta = read_wheel_metadata(wheel)
    recipe_dir = out / "recipe"
    recipe_dir.mkdir()
    deps = conda_run_deps(meta.requires_dist, meta.requires_python, binary=True)
    (recipe_dir / "recipe.yaml").write_text(render_binary_wheel_recipe(job, wheel, deps, meta.summary))
    _rattler_build(job, recipe_dir, out, ctx, {})


def _build_python(job: PackageJob, ctx: BuildContext, out: Path) -> None:
    assert job.recipe is not None
    python = ctx.python
    compiled = ensure_compiled(python.recipe, python.compile_key, ctx.cache_dir)
    debs = fetch_debs(python.libraries, ctx.cache_dir)
    stage = out / "stage"
    stage.mkdir()
    stage_python(python, compiled, debs, stage, out / "debs")
    # The prefix CPython was compiled for goes to the build script in a file beside the
    # stage: rattler-build records the script's environment in the package.
    stage.with_name(stage.name + ".old-prefix").write_text(str(INSTALL_PREFIX))
    env = {
        "SWSTACK_PYTHON_STAGE": str(stage),
        "SWSTACK_PYTHON_VERSION": python.version,
    }
    _rattler_build(job, job.recipe, out, ctx, env)
    shutil.rmtree(stage, ignore_errors=True)


def _rattler_build(
    job: PackageJob, recipe: Path, out: Path, ctx: BuildContext, env: Mapping[str, str]
) -> None:
    """Run rattler-build in a child process (one build per process: parallel and isolated)."""
    argv: list[str | os.PathLike[str]] = [
        sys.executable,
        "-m",
        "swstack.offline_channel",
        "rattler-build",
        "--recipe",
        recipe,
        "--output-dir",
        out / "output",
        "--channel",
        ctx.python_channel.as_uri(),
    ]
    # SOURCE_DATE_EPOCH: pip writes hash-checked .pyc files (no source mtime) with it.
    # The fixed virtual packages: no fact of the build machine goes into the package.
    extra = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), **BUILD_VIRTUAL_PACKAGES, **env}
    # Keep rattler-build's own caches inside the shared cache, not under $HOME.
    extra.setdefault("RATTLER_CACHE_DIR", str(ctx.cache_dir / "rattler"))
    proc.run(argv, extra_env=extra, error=ChannelError, what=f"rattler-build {job.name}", timeout=1800)


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_rattler_build(recipe: Path, output_dir: Path, channels: Sequence[str]) -> None:
    """The child-process side of ``_rattler_build``: one recipe, no tests, .conda output."""
    import warnings

    from rattler_build import RattlerBuildError, build_recipes

    warnings.simplefilter("ignore", DeprecationWarning)  # build_recipes: still the one-call API
    try:
        _call_build_recipes(build_recipes, recipe, output_dir, channels)
    except RattlerBuildError as exc:
        # The build script's output is in the work directory's log, not on our stderr.
        logs = sorted(output_dir.glob("bld/*/work/conda_build.log"))
        tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-20:]) if logs else ""
        raise ChannelError(f"{tail}\nrattler-build: {exc}" if tail else f"rattler-build: {exc}") from None


def _call_build_recipes(build_recipes: Any, recipe: Path, output_dir: Path, channels: Sequence[str]) -> None:
    build_recipes(
        [recipe / "recipe.yaml" if recipe.is_dir() else recipe],
        target_platform=None,
        channel=list(channels),
        output_dir=output_dir,
        # Fast zstd level: the channel is local, cold-build time matters more than size.
        package_format=PACKAGE_FORMAT,
        test="skip",
        no_include_recipe=False,
        no_build_id=True,  # bld/rattler-build_<name>, no timestamp: a reproducible prefix
        ignore_recipe_variants=True,
    )
