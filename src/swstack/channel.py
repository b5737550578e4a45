"""Recipes and a pinned wheel list -> an offline file:// conda channel.

Input: ``channel/`` (``recipes/``, ``wheels.txt``), the CPython that runs swstack,
``clients/labclient``, and PyPI or a site's wheelhouse for the pinned wheels.
Output: ``<out>/linux-64`` and ``<out>/noarch`` (each with ``repodata.json``),
``<out>/pip/simple/...`` (a PEP 503 wheelhouse holding labclient) and
``<out>/git/labclient.git`` (a bare repository: tag ``v1.0.0``, ``main`` at 1.1.0.dev0).

Flow: ``plan_channel`` (pure: what to build, each package's content-addressed cache
key) -> ``build_channel`` (fetch wheels, build missing packages into the shared cache,
assemble and index the channel in a sibling directory, then swap it in).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Literal

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import log, paths, proc
from .conda_repack import DEFAULT_EPOCH, REPACK_FORMAT, repack_conda
from .errors import ChannelError, SwstackError
from .fsutil import atomic_dir, atomic_write_text, exclusive_lock, sha256_file

# Bump when the way packages are made changes: every cache key changes with it.
BUILDER_VERSION = "5"

PLATFORM = "linux-64"
PACKAGE_FORMAT = "conda:3"
# Bump when the wheel -> noarch conversion changes (only those packages are rebuilt).
NOARCH_RULES = "tree+rename-2"
PY_MAJOR_MINOR = "3.11"
# pip options naming the interpreter wheels are chosen for (the channel's CPython 3.11).
TARGET_INTERPRETER = ("--python-version", PY_MAJOR_MINOR, "--implementation", "cp",
                      "--abi", "cp311", "--abi", "abi3", "--abi", "none")
PYTHON_RUN_DEP = "python >=3.11,<3.12.0a0"
TARGET_TAGS_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)
# Packages are built under this fixed directory, whatever the cache: the build prefix
# (prefix placeholders, compiled-in paths, .pyc file names) and the recipe's paths end
# up inside the packages, so they must be the same on every machine for the packages
# to be bit-for-bit reproducible. One build at a time uses it (a lock file).
BUILD_ROOT = Path("/tmp/swstack-channel-build")
# Every build timestamp (index.json, archive members, .pyc via pip) is set to this.
SOURCE_DATE_EPOCH = DEFAULT_EPOCH
# rattler-build writes the build machine's virtual packages into every package it makes
# (info/recipe/rendered_recipe.yaml): the running kernel's version (__linux), the CPU's
# microarchitecture (__archspec) and glibc's version. Two machines differ in those even
# with the same image, so the builds see these fixed values instead (rattler's
# CONDA_OVERRIDE_* variables): the oldest kernel and glibc the packages are for
# (Debian 12's), the generic CPU level.
BUILD_VIRTUAL_PACKAGES = {
    "CONDA_OVERRIDE_LINUX": "6.1",
    "CONDA_OVERRIDE_GLIBC": "2.36",
    "CONDA_OVERRIDE_ARCHSPEC": "x86_64",
}
LABCLIENT_VERSION = "1.0.0"
LABCLIENT_DEV_VERSION = "1.1.0.dev0"
# Fixed identity and dates make the labclient repository's commit shas stable.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "swstack",
    "GIT_AUTHOR_EMAIL": "swstack@localhost",
    "GIT_COMMITTER_NAME": "swstack",
    "GIT_COMMITTER_EMAIL": "swstack@localhost",
}
GIT_DATES = ("2024-01-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00")

# The marker environment of every package in the channel: Linux x86_64, CPython 3.11.
MARKER_ENV: Mapping[str, str] = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": PY_MAJOR_MINOR,
    "python_full_version": f"{PY_MAJOR_MINOR}.7",
    "implementation_version": f"{PY_MAJOR_MINOR}.7",
    "platform_release": "",
    "platform_version": "",
    "extra": "",
}

# conda-forge names that differ from the normalised PyPI name and are missing from
# whl2conda's table (conda-forge kept underscores for these Jupyter packages).
CONDA_FORGE_NAMES: Mapping[str, str] = {
    "jupyter-server": "jupyter_server",
    "jupyter-client": "jupyter_client",
    "jupyter-core": "jupyter_core",
    "jupyter-events": "jupyter_events",
    "jupyter-server-terminals": "jupyter_server_terminals",
    "jupyterlab-server": "jupyterlab_server",
    "jupyterlab-widgets": "jupyterlab_widgets",
    "jupyterlab-pygments": "jupyterlab_pygments",
    "typing-extensions": "typing_extensions",
    "prometheus-client": "prometheus_client",
    "stack-data": "stack_data",
    "pure-eval": "pure_eval",
    "ipython-pygments-lexers": "ipython_pygments_lexers",
    "tzdata": "python-tzdata",
}

PackageKind = Literal["python", "recipe", "noarch-wheel", "binary-wheel"]


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class PinnedWheel:
    """One line of ``wheels.txt``: ``name==version --hash=sha256:... # filename``."""

    name: str  # the PyPI project name, canonical form
    version: str
    sha256: str
    filename: str

    @property
    def is_pure(self) -> bool:
        return self.filename.endswith("-none-any.whl")


@dataclass(frozen=True)
class PythonBuild:
    """The CPython the channel's ``python`` package is made from."""

    prefix: Path  # its install prefix (sys.base_prefix)
    version: str  # e.g. 3.11.7
    fingerprint: str  # sha256 of its shared library: changes when CPython is rebuilt

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


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


# --------------------------------------------------------------- pure: wheel list


_LINE_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})"
    r"\s*(?:#\s*(?P<file>\S+\.whl))?\s*$"
)


def parse_wheel_list(text: str, source: str = "wheels.txt") -> tuple[PinnedWheel, ...]:
    """Parse ``wheels.txt``; every entry must carry a sha256 and the wheel's file name."""
    wheels: list[PinnedWheel] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m or not m.group("file"):
            raise ChannelError(
                f"{source}:{lineno}: expected 'name==version --hash=sha256:<hex>  # <file>.whl', "
                f"got {line!r}; regenerate the list with `python -m swstack.channel lock-wheels`"
            )
        wheels.append(PinnedWheel(canonicalize_name(m["name"]), m["version"], m["sha"], m["file"]))
    return tuple(wheels)


def format_wheel_list(wheels: Iterable[PinnedWheel], header: str) -> str:
    lines = [header.rstrip(), ""]
    for w in sorted(wheels, key=lambda w: w.name):
        lines.append(f"{w.name}=={w.version} --hash=sha256:{w.sha256}  # {w.filename}")
    return "\n".join(lines) + "\n"


def conda_name(pypi_name: str, table: Mapping[str, str] | None = None) -> str:
    """The conda-forge name of a PyPI project (``jupyter-server`` -> ``jupyter_server``)."""
    norm = canonicalize_name(pypi_name)
    if norm in CONDA_FORGE_NAMES:
        return CONDA_FORGE_NAMES[norm]
    mapped = (table if table is not None else _whl2conda_renames()).get(norm)
    return mapped or norm


def _whl2conda_renames() -> Mapping[str, str]:
    try:
        from whl2conda.api.stdrename import load_std_renames
    except ImportError:  # pragma: no cover - whl2conda is a build dependency
        return {}
    return dict(load_std_renames())


def conda_spec(req: Requirement, table: Mapping[str, str] | None = None) -> str:
    """``Requirement('Jupyter-Server>=2,<3')`` -> ``'jupyter_server >=2,<3'``."""
    name = conda_name(req.name, table)
    spec = str(req.specifier)
    # conda has no '~=': '~=1.2' means '>=1.2,==1.*'.
    parts = []
    for s in req.specifier:
        if s.operator == "~=":
            head = s.version.split(".")[:-1]
            upper = [*head[:-1], str(int(head[-1]) + 1)] if head[-1].isdigit() else head
            parts += [f">={s.version}", f"<{'.'.join(upper)}"]
        elif s.operator == "===":
            parts.append(f"=={s.version}")
        else:
            parts.append(str(s))
    spec = ",".join(sorted(parts))
    return f"{name} {spec}" if spec else name


def runtime_requirements(
    requires_dist: Iterable[str], env: Mapping[str, str] = MARKER_ENV
) -> list[Requirement]:
    """Requires-Dist entries that apply on linux-64 / CPython 3.11 without extras."""
    reqs: list[Requirement] = []
    for text in requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ChannelError(f"invalid Requires-Dist {text!r}: {exc}") from exc
        if req.marker is not None and not req.marker.evaluate(dict(env)):
            continue
        reqs.append(req)
    return reqs


def conda_run_deps(
    requires_dist: Iterable[str],
    requires_python: str | None,
    *,
    binary: bool,
    table: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The conda run dependencies of a wheel: python first, then its runtime requirements."""
    python = "python"
    if binary:
        python = PYTHON_RUN_DEP
    elif requires_python:
        python = f"python {requires_python.replace(' ', '')}"
    deps = {conda_spec(r, table) for r in runtime_requirements(requires_dist)}
    return (python, *sorted(deps))


def _marker_probe(marker: str) -> bool:
    """Evaluate a bare marker string against the channel's environment (used by tests)."""
    return Marker(marker).evaluate(dict(MARKER_ENV))


# ------------------------------------------------------------------- pure: planning


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
                "noarch-wheel", tools["whl2conda"], w.sha256, _mapping_fingerprint(), NOARCH_RULES
            )
        else:
            kind = "binary-wheel"
            # The python package's key too: the rendered recipe a binary-wheel package carries
            # records the host python's hashes, so a new python package means new bytes here.
            key = cache_key(
                "binary-wheel", rb, w.sha256, python.major_minor, jobs[0].key, _mapping_fingerprint(),
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


def _mapping_fingerprint() -> str:
    return hashlib.sha256(json.dumps(sorted(CONDA_FORGE_NAMES.items())).encode()).hexdigest()[:16]


def channel_inputs(recipes_dir: Path) -> list[Path]:
    """Files whose change means the channel must be rebuilt (doit's ``file_dep``)."""
    channel_dir = recipes_dir.parent
    files = recipe_files(recipes_dir)
    wheel_list = channel_dir / "wheels.txt"
    if wheel_list.is_file():
        files.append(wheel_list)
    client = channel_dir.parent / "clients" / "labclient"
    if client.is_dir():
        files.extend(_labclient_files(client))
    files.append(Path(__file__).resolve())
    return files


# --------------------------------------------------------- pure: rendered recipes

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


# --------------------------------------------------------------- the python build


def current_python() -> PythonBuild:
    """The CPython running swstack: a shared-library build, made relocatable for the channel."""
    prefix = Path(sys.base_prefix)
    version = ".".join(str(v) for v in sys.version_info[:3])
    if sysconfig.get_config_var("Py_ENABLE_SHARED") != 1:
        raise ChannelError(
            f"the python at {prefix} is a static build; the channel's python package needs a shared "
            "(--enable-shared) CPython 3.11: run swstack with one"
        )
    if version.rsplit(".", 1)[0] != PY_MAJOR_MINOR:
        raise ChannelError(f"the channel is built for CPython {PY_MAJOR_MINOR}, swstack runs on {version}")
    libdir = Path(str(sysconfig.get_config_var("LIBDIR")))
    ldlibrary = str(sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY"))
    lib = libdir / ldlibrary
    if not lib.is_file():
        raise ChannelError(f"cannot find libpython at {lib}")
    return PythonBuild(prefix=prefix, version=version, fingerprint=sha256_file(lib))


# Parts of the interpreter the package leaves out: third-party packages (except pip),
# test suites, caches, static libraries, Tk and IDLE.
_PY_BIN_KEEP = re.compile(r"^(python[0-9.]*(-config)?|pip[0-9.]*|pydoc[0-9.]*|2to3(-[0-9.]+)?)$")
_PY_DROP_DIRS = {"__pycache__", "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo"}
_PY_DROP_EXT_RE = re.compile(
    r"^(_test\w*|_ctypes_test|_xxtestfuzz|_xxsubinterpreters|xxlimited\w*|_tkinter|nis)\."
)
# glibc's own libraries come from the host; every other shared library the interpreter
# links is bundled into $PREFIX/lib so the package runs on a slim base image.
_GLIBC_LIBS = re.compile(r"^(ld-linux[-\w.]*|libc|libm|libpthread|libdl|librt|libutil|libresolv|libanl)\.so")


def python_keep(rel: Path, version: str) -> bool:
    """Whether ``rel`` (a path inside the interpreter's prefix) goes into the package. Pure."""
    parts = rel.parts
    mm = ".".join(version.split(".")[:2])
    if not parts:
        return True
    if rel.suffix in (".pyc", ".pyo", ".a") or "__pycache__" in parts:
        return False
    if parts[0] == "bin":
        return len(parts) == 1 or (len(parts) == 2 and bool(_PY_BIN_KEEP.match(parts[1])))
    if parts[:2] == ("lib", f"python{mm}"):
        inner = parts[2:]
        if not inner:
            return True
        if inner[0] == "site-packages":
            return (
                len(inner) == 1
                or inner[1] in ("README.txt", "pip")
                or re.match(r"pip-[^/]+\.dist-info$", inner[1]) is not None
            )
        if inner[0] == "lib-dynload" and len(inner) == 2:
            return _PY_DROP_EXT_RE.match(inner[1]) is None
        return not (any(p in _PY_DROP_DIRS for p in inner[:-1]) or inner[0] in _PY_DROP_DIRS)
    if parts[0] == "share":
        # Only CPython's own man pages: the interpreter's prefix also holds those of
        # packages installed into it (ipython.1, ...), which their own packages ship.
        return len(parts) < 3 or (parts[1] == "man" and (len(parts) < 4 or parts[-1].startswith("python")))
    return parts[0] in ("lib", "include")


def _is_linked_elf(path: Path) -> bool:
    """An ELF executable or shared library (not an object file): something with a RUNPATH."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(18)
    return head[:4] == b"\x7fELF" and len(head) == 18 and int.from_bytes(head[16:18], "little") in (2, 3)


def stage_python(python: PythonBuild, stage: Path) -> None:
    """Copy the interpreter into ``stage`` (filtered), bundle its non-glibc libraries and
    point every ELF file's RUNPATH at ``$ORIGIN``-relative ``lib/``."""
    src = python.prefix
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.relative_to(src)
        dirnames[:] = [d for d in dirnames if python_keep(rel_dir / d, python.version)]
        (stage / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            rel = rel_dir / name
            if python_keep(rel, python.version):
                shutil.copy2(src / rel, stage / rel, follow_symlinks=False)
    elves = [p for p in stage.rglob("*") if _is_linked_elf(p)]
    bundled = _bundle_shared_libraries(elves, stage / "lib")
    for path in elves + bundled:
        origin_to_lib = os.path.relpath(stage / "lib", path.parent)
        rpath = "$ORIGIN" if origin_to_lib == "." else f"$ORIGIN/{origin_to_lib}"
        proc.run(["patchelf", "--set-rpath", rpath, path], error=ChannelError, what=f"patchelf {path.name}")


def _bundle_shared_libraries(elves: Sequence[Path], libdir: Path) -> list[Path]:
    """Copy the host libraries ``elves`` need (all but glibc's) into ``libdir``."""
    needed: dict[str, Path] = {}
    for path in elves:
        out = proc.output(["ldd", path], error=ChannelError, what=f"ldd {path.name}")
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) => (/\S+)", line)
            if not m or _GLIBC_LIBS.match(m[1]) or m[1].startswith("libpython"):
                continue
            needed.setdefault(m[1], Path(m[2]))
    copied = []
    for soname, host_path in sorted(needed.items()):
        target = libdir / soname
        if target.exists():
            continue
        shutil.copy2(host_path.resolve(), target)
        target.chmod(0o755)
        copied.append(target)
    log.debug(f"python: bundled {', '.join(sorted(needed)) or 'no libraries'}")
    return copied


# ------------------------------------------------------------------- wheel fetching


def wheel_cache_path(cache_dir: Path, wheel: PinnedWheel) -> Path:
    return cache_dir / "wheels" / wheel.sha256[:2] / wheel.sha256 / wheel.filename


def fetch_wheels(
    wheels: Sequence[PinnedWheel], cache_dir: Path, wheelhouse: Path | None = None
) -> dict[str, Path]:
    """Make every pinned wheel present (hash-checked) in the cache; return name -> path.

    Wheels come from the cache, else from ``wheelhouse`` (air-gapped sites), else from
    PyPI through pip (``--require-hashes``); every file's sha256 is verified.
    """
    found: dict[str, Path] = {}
    missing: list[PinnedWheel] = []
    for w in wheels:
        target = wheel_cache_path(cache_dir, w)
        if target.is_file():
            found[w.name] = target
        elif wheelhouse is not None and (wheelhouse / w.filename).is_file():
            _verify_hash(wheelhouse / w.filename, w)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheelhouse / w.filename, target.with_suffix(".partial"))
            os.replace(target.with_suffix(".partial"), target)
            found[w.name] = target
        else:
            missing.append(w)
    if missing:
        if wheelhouse is not None:
            log.warn(f"{len(missing)} wheels are not in the wheelhouse {wheelhouse}; fetching them from PyPI")
        found.update(_download_wheels(missing, cache_dir))
    return found


def _verify_hash(path: Path, wheel: PinnedWheel) -> None:
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise ChannelError(
            f"{path}: sha256 {actual} does not match {wheel.sha256} pinned in channel/wheels.txt; "
            "remove the file, or refresh the list if the pin is what changed"
        )


def _download_wheels(wheels: Sequence[PinnedWheel], cache_dir: Path) -> dict[str, Path]:
    log.step(f"fetching {len(wheels)} wheels from PyPI")
    tmp = Path(tempfile.mkdtemp(prefix="wheels.", dir=_ensure(cache_dir / "tmp")))
    try:
        reqs = tmp / "requirements.txt"
        reqs.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels))
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--quiet",
            *TARGET_INTERPRETER,
            "-d",
            tmp / "dl",
            "-r",
            reqs,
        ]
        for plat in TARGET_TAGS_PLATFORMS:
            argv += ["--platform", plat]
        proc.run(argv, error=ChannelError, what="pip download (channel wheels)", timeout=1800)
        out: dict[str, Path] = {}
        for w in wheels:
            got = tmp / "dl" / w.filename
            if not got.is_file():
                raise ChannelError(
                    f"pip did not download {w.filename}; is the pin in channel/wheels.txt right?"
                )
            _verify_hash(got, w)
            target = wheel_cache_path(cache_dir, w)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
            out[w.name] = target
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class WheelMetadata:
    requires_dist: tuple[str, ...]
    requires_python: str | None
    summary: str


def read_wheel_metadata(path: Path) -> WheelMetadata:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        if not names:
            raise ChannelError(f"{path.name}: no .dist-info/METADATA in the wheel")
        msg = HeaderParser().parsestr(zf.read(names[0]).decode("utf-8", errors="replace"))
    return WheelMetadata(
        requires_dist=tuple(msg.get_all("Requires-Dist") or ()),
        requires_python=msg.get("Requires-Python"),
        summary=(msg.get("Summary") or "").strip(),
    )


# ------------------------------------------------------------------ building one job


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
            "swstack.channel",
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


def _pack_tree(tree: Path, name: str, dest: Path) -> Path:
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
    _link_or_copy(ctx.wheel_paths[job.wheel.name], wheel)
    meta = read_wheel_metadata(wheel)
    recipe_dir = out / "recipe"
    recipe_dir.mkdir()
    deps = conda_run_deps(meta.requires_dist, meta.requires_python, binary=True)
    (recipe_dir / "recipe.yaml").write_text(render_binary_wheel_recipe(job, wheel, deps, meta.summary))
    _rattler_build(job, recipe_dir, out, ctx, {})


def _build_python(job: PackageJob, ctx: BuildContext, out: Path) -> None:
    assert job.recipe is not None
    stage = out / "stage"
    stage.mkdir()
    stage_python(ctx.python, stage)
    # The interpreter's own prefix (a path of this machine, often in a home) goes to the
    # build script in a file beside the stage: rattler-build records the script's
    # environment in the package, and only the fixed stage path may be there.
    stage.with_name(stage.name + ".old-prefix").write_text(str(ctx.python.prefix))
    env = {
        "SWSTACK_PYTHON_STAGE": str(stage),
        "SWSTACK_PYTHON_VERSION": ctx.python.version,
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
        "swstack.channel",
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


# ------------------------------------------------------------------ pip side: labclient


def _labclient_files(client: Path) -> list[Path]:
    return sorted(
        p
        for p in client.rglob("*")
        if p.is_file()
        and not any(
            part in ("__pycache__", "build", "dist") or part.endswith(".egg-info")
            for part in p.relative_to(client).parts
        )
    )


def build_labclient_wheel(client: Path, dest: Path, cache_dir: Path) -> Path:
    """Build ``labclient-1.0.0-py3-none-any.whl`` (cached by the source's hash)."""
    key = cache_key("labclient", hash_files(_labclient_files(client), client))
    entry = cache_dir / "channel" / f"labclient-{key}"
    wheels = sorted(entry.glob("*.whl"))
    if not wheels:
        src = Path(tempfile.mkdtemp(prefix="labclient.", dir=_ensure(cache_dir / "tmp")))
        try:
            _copy_tree(client, src / "labclient")
            proc.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                    "--disable-pip-version-check",
                    "--quiet",
                    "-w",
                    src / "dist",
                    src / "labclient",
                ],
                extra_env={"SOURCE_DATE_EPOCH": "1704067200"},
                error=ChannelError,
                what="pip wheel clients/labclient",
            )
            built = sorted((src / "dist").glob("labclient-*.whl"))
            if not built:
                raise ChannelError("pip wheel clients/labclient produced no wheel")
            tmp_entry = entry.with_name(entry.name + ".partial")
            shutil.rmtree(tmp_entry, ignore_errors=True)
            tmp_entry.mkdir(parents=True)
            shutil.copy2(built[0], tmp_entry / built[0].name)
            os.replace(tmp_entry, entry)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        wheels = sorted(entry.glob("*.whl"))
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheels[0].name
    shutil.copy2(wheels[0], target)
    return target


def write_simple_index(wheelhouse: Path, files: Sequence[Path]) -> None:
    """A PEP 503 index under ``wheelhouse/simple`` for wheels stored in ``wheelhouse``."""
    projects: dict[str, list[Path]] = {}
    for f in files:
        projects.setdefault(canonicalize_name(f.name.split("-")[0]), []).append(f)
    simple = wheelhouse / "simple"
    root_links = []
    for project, wheels in sorted(projects.items()):
        links = "\n".join(
            f'    <a href="../../{w.name}#sha256={sha256_file(w)}">{w.name}</a><br/>' for w in sorted(wheels)
        )
        atomic_write_text(
            simple / project / "index.html",
            f"<!DOCTYPE html>\n<html>\n  <body>\n{links}\n  </body>\n</html>\n",
        )
        root_links.append(f'    <a href="{project}/">{project}</a><br/>')
    atomic_write_text(
        simple / "index.html",
        "<!DOCTYPE html>\n<html>\n  <body>\n" + "\n".join(root_links) + "\n  </body>\n</html>\n",
    )


def make_labclient_repo(client: Path, bare: Path, work: Path) -> str:
    """A bare git repository of labclient: tag ``v1.0.0``, ``main`` one commit later at
    1.1.0.dev0. Fixed names and dates make the shas stable; returns main's sha."""
    tree = work / "labclient-git"
    shutil.rmtree(tree, ignore_errors=True)
    _copy_tree(client, tree)
    git = [
        "git",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "tag.gpgsign=false",
        "-c",
        "core.autocrlf=false",
        "-c",
        "user.name=swstack",
        "-c",
        "user.email=swstack@localhost",
    ]
    env = {**GIT_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "TZ": "UTC"}

    def run(*args: str | os.PathLike[str], date: str | None = None) -> str:
        extra = dict(env)
        if date:
            extra |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        return proc.output(
            [*git, *args], cwd=tree, extra_env=extra, error=ChannelError, what=f"git {args[0]}"
        )

    run("init", "--quiet", "-b", "main")
    run("add", "--all")
    run("commit", "--quiet", "-m", f"labclient {LABCLIENT_VERSION}", date=GIT_DATES[0])
    run("tag", f"v{LABCLIENT_VERSION}")
    for rel in ("pyproject.toml", "src/labclient/__init__.py"):
        path = tree / rel
        path.write_text(path.read_text().replace(f'"{LABCLIENT_VERSION}"', f'"{LABCLIENT_DEV_VERSION}"'))
    run("commit", "--quiet", "--all", "-m", f"Start {LABCLIENT_DEV_VERSION}", date=GIT_DATES[1])
    sha = run("rev-parse", "HEAD")
    bare.parent.mkdir(parents=True, exist_ok=True)
    run("clone", "--quiet", "--bare", tree, bare)
    shutil.rmtree(tree, ignore_errors=True)
    return sha


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")
    )


# ---------------------------------------------------------------------- the whole build


def default_out_dir(root: Path | None = None) -> Path:
    return (root or paths.project_root()) / "artifacts" / "channel"


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
        raise ChannelError(f"{wheel_list} is missing; create it with `python -m swstack.channel lock-wheels`")
    wheels = parse_wheel_list(wheel_list.read_text(), str(wheel_list))
    python = current_python()
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
        work = Path(tempfile.mkdtemp(prefix="channel-assemble.", dir=_ensure(cache_dir / "tmp")))
        try:
            with atomic_dir(out_dir) as tmp_out:
                _assemble(plan, cache_dir, tmp_out)
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
    with exclusive_lock(_ensure(cache_dir / "channel") / ".lock",
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
        _link_or_copy(pkg, target)
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
            _link_or_copy(pkg, out / pkg.parent.name / pkg.name)
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


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------- maintenance: wheels.txt


def lock_wheels(channel_dir: Path) -> list[PinnedWheel]:
    """Resolve ``channel/wheels.in`` for linux-64 / CPython 3.11 into ``wheels.txt``."""
    wheels_in = channel_dir / "wheels.in"
    reqs = [
        line.strip()
        for line in wheels_in.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--report",
            report,
            *TARGET_INTERPRETER,
            "--target",
            Path(tmp) / "t",
        ]
        for plat in TARGET_TAGS_PLATFORMS:
            argv += ["--platform", plat]
        proc.run([*argv, *reqs], error=ChannelError, what="pip (resolving channel/wheels.in)", timeout=1800)
        data = json.loads(report.read_text())
    wheels = []
    for item in data["install"]:
        info = item["download_info"]
        wheels.append(
            PinnedWheel(
                name=canonicalize_name(item["metadata"]["name"]),
                version=item["metadata"]["version"],
                sha256=info["archive_info"]["hashes"]["sha256"],
                filename=info["url"].rsplit("/", 1)[1],
            )
        )
    header = (
        "# The closure of channel/wheels.in for linux-64 / CPython 3.11, pinned by hash.\n"
        "# Generated by `python -m swstack.channel lock-wheels`; do not edit by hand."
    )
    atomic_write_text(channel_dir / "wheels.txt", format_wheel_list(wheels, header))
    return wheels


# ---------------------------------------------------------------------- command line


def _run_rattler_build(recipe: Path, output_dir: Path, channels: Sequence[str]) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m swstack.channel")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the offline channel")
    b.add_argument("--out", type=Path, default=None)
    b.add_argument("--wheelhouse", type=Path, default=None)
    b.add_argument("-j", "--jobs", type=int, default=2)
    sub.add_parser("lock-wheels", help="re-resolve channel/wheels.in into channel/wheels.txt")
    rb = sub.add_parser("rattler-build", help=argparse.SUPPRESS)
    rb.add_argument("--recipe", type=Path, required=True)
    rb.add_argument("--output-dir", type=Path, required=True)
    rb.add_argument("--channel", action="append", default=[])
    pt = sub.add_parser("pack-tree", help=argparse.SUPPRESS)
    pt.add_argument("--tree", type=Path, required=True)
    pt.add_argument("--name", required=True)
    pt.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    log.setup()
    root = paths.project_root()
    try:
        if args.cmd == "rattler-build":
            _run_rattler_build(args.recipe, args.output_dir, args.channel)
        elif args.cmd == "pack-tree":
            _pack_tree(args.tree, args.name, args.dest)
        elif args.cmd == "lock-wheels":
            wheels = lock_wheels(root / "channel")
            log.info(f"channel/wheels.txt: {len(wheels)} wheels")
        else:
            build_channel(
                args.out or default_out_dir(root),
                recipes_dir=root / "channel" / "recipes",
                cache_dir=paths.cache_dir(),
                wheelhouse=args.wheelhouse,
                jobs=args.jobs,
            )
    except SwstackError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
