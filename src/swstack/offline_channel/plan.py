"""Recipes, pinned wheels, the python build -> the channel's plan: each package's job and
content-addressed cache key (pure: reads only recipe files); the recipe rendered for a binary wheel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ChannelError
from ..fsutil import sha256_file
from .conda_repack import REPACK_FORMAT
from .python import PythonBuild
from .target import (
    BUILD_ROOT,
    BUILD_VIRTUAL_PACKAGES,
    BUILDER_VERSION,
    NOARCH_RULES,
    PY_MAJOR_MINOR,
    SOURCE_DATE_EPOCH,
)
from .wheels import PinnedWheel, conda_name, mapping_fingerprint

PackageKind = Literal["python", "recipe", "noarch-wheel", "binary-wheel"]


@dataclass(frozen=True)
class PackageJob:
    """One conda package to build (or reuse from the cache, by ``key``)."""

    name: str  # conda package name
    kind: PackageKind
    key: str  # content-addressed cache key
    version: str = ""
    recipe: Path | None = None  # recipe directory, for kind "recipe" and "python"
    wheel: PinnedWheel | None = None
    run_deps: tuple[str, ...] = ()  # conda run dependencies (wheels: resolved from metadata later)
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the recipe build

    @property
    def needs_python(self) -> bool:
        """Binary wheels are installed with the channel's own python/pip in the host env."""
        return self.kind == "binary-wheel"


@dataclass(frozen=True)
class ChannelPlan:
    jobs: tuple[PackageJob, ...]
    python: PythonBuild

    def job(self, name: str) -> PackageJob:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


@dataclass(frozen=True)
class ChannelReport:
    path: Path
    built: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        return (
            f"channel {self.path}: {len(self.built)} built, {len(self.reused)} reused "
            f"in {self.seconds:.1f}s" + (f" ({phases})" if phases else "")
        )


def hash_files(files: Iterable[Path], root: Path) -> str:
    """sha256 over (relative path, content) of ``files``, order-independent."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def recipe_files(recipe: Path) -> list[Path]:
    return sorted(p for p in recipe.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def cache_key(*parts: str) -> str:
    digest = hashlib.sha256()
    fixed = json.dumps(BUILD_VIRTUAL_PACKAGES, sort_keys=True)
    for part in (BUILDER_VERSION, REPACK_FORMAT, str(BUILD_ROOT), str(SOURCE_DATE_EPOCH), fixed, *parts):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def tool_versions() -> dict[str, str]:
    """Versions of the converters: part of every cache key."""
    from importlib.metadata import version

    return {"rattler-build": version("py-rattler-build"), "whl2conda": version("whl2conda")}


def plan_channel(
    recipes_dir: Path,
    wheels: Sequence[PinnedWheel],
    python: PythonBuild,
    tools: Mapping[str, str],
) -> ChannelPlan:
    """What the channel holds and each package's cache key. Pure: reads only recipe files."""
    rb = tools["rattler-build"]
    jobs: list[PackageJob] = []
    python_recipe = recipes_dir / "python"
    jobs.append(
        PackageJob(
            name="python",
            kind="python",
            key=cache_key(
                "python",
                rb,
                python.version,
                python.fingerprint,
                hash_files(recipe_files(python_recipe), python_recipe),
            ),
            version=python.version,
            recipe=python_recipe,
        )
    )
    by_name = {w.name: w for w in wheels}
    hub = by_name.get("jupyterhub")
    for recipe in sorted(p for p in recipes_dir.iterdir() if (p / "recipe.yaml").is_file()):
        if recipe.name == "python":
            continue
        env: tuple[tuple[str, str], ...] = ()
        if recipe.name == "jupyterhub-singleuser":
            if hub is None:
                raise ChannelError("recipe jupyterhub-singleuser needs jupyterhub in channel/wheels.txt")
            env = (("SWSTACK_JUPYTERHUB_VERSION", hub.version),)
        jobs.append(
            PackageJob(
                name=recipe.name,
                kind="recipe",
                key=cache_key("recipe", rb, hash_files(recipe_files(recipe), recipe), repr(env)),
                recipe=recipe,
                env=env,
            )
        )
    for w in wheels:
        if w.is_pure:
            kind: PackageKind = "noarch-wheel"
            key = cache_key(
                "noarch-wheel", tools["whl2conda"], w.sha256, mapping_fingerprint(), NOARCH_RULES
            )
        else:
            kind = "binary-wheel"
            # The python package's key too: the rendered recipe a binary-wheel package carries
            # records the host python's hashes, so a new python package means new bytes here.
            key = cache_key(
                "binary-wheel", rb, w.sha256, python.major_minor, jobs[0].key, mapping_fingerprint(),
                BINARY_WHEEL_RECIPE,
            )
        jobs.append(PackageJob(name=conda_name(w.name), kind=kind, key=key, version=w.version, wheel=w))
    names = [j.name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ChannelError(f"the channel would hold two packages named {', '.join(dupes)}; rename a recipe")
    return ChannelPlan(jobs=tuple(jobs), python=python)


def select_packages(plan: ChannelPlan, names: Collection[str]) -> ChannelPlan:
    """The part of ``plan`` that builds ``names`` (and python, which some builds need)."""
    known = {j.name for j in plan.jobs}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ChannelError(f"no package named {', '.join(unknown)} in the channel")
    keep = {"python", *names}
    return ChannelPlan(jobs=tuple(j for j in plan.jobs if j.name in keep), python=plan.python)


# The first line names the module this code had before it became a package, and stays so:
# the recipe is inside every binary-wheel package (and in its cache key), so changing
# its text would change the bytes the committed lockfiles pin.
BINARY_WHEEL_RECIPE = """\
# Generated by swstack.channel from {filename}
package:
  name: {name}
  version: "{version}"

build:
  number: 0
  string: swstack_cp311_0
  python:
    skip_pyc_compilation:  # pip compiles what it installs, in one process
      - "**/*.py"
  script:
    env:
      WHEEL: {wheel}
    content:
      - $PREFIX/bin/python -m pip install --no-deps --no-index --disable-pip-version-check
        --no-warn-script-location "$WHEEL"
      - rm -f $PREFIX/lib/python{py}/site-packages/*.dist-info/direct_url.json
      - echo conda > $PREFIX/lib/python{py}/site-packages/{dist_info}/INSTALLER

requirements:
  host:
    - python {py}.*
  run:
{run}

about:
  summary: {summary}
"""


def render_binary_wheel_recipe(
    job: PackageJob, wheel_path: Path, run_deps: Sequence[str], summary: str
) -> str:
    """The rattler-build recipe that installs one binary wheel into ``$PREFIX`` with pip."""
    assert job.wheel is not None
    dist = job.wheel.filename.split("-")
    dist_info = f"{dist[0]}-{dist[1]}.dist-info"
    return BINARY_WHEEL_RECIPE.format(
        filename=job.wheel.filename,
        name=job.name,
        version=job.version,
        wheel=json.dumps(str(wheel_path)),
        py=PY_MAJOR_MINOR,
        dist_info=dist_info,
        run="\n".join(f"    - {json.dumps(d)}" for d in run_deps),
        summary=json.dumps(summary or job.name),
    )
