"""``channel/recipes/python`` -> the channel's CPython (compiled from Debian's pinned source,
see ``cpython``) staged as a filtered, relocatable tree with its Debian libraries bundled.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import ChannelError
from .cpython import (
    RECIPE_FILE,
    CPythonRecipe,
    DebPackage,
    bundle_libraries,
    candidate_debs,
    compile_key,
    installed_versions,
    read_recipe,
    toolchain,
)
from .target import PY_FULL_VERSION


@dataclass(frozen=True)
class PythonBuild:
    """The CPython the channel's ``python`` package is made from: its pinned inputs."""

    recipe: CPythonRecipe
    compile_key: str  # the compiled interpreter's key in the cache
    libraries: tuple[DebPackage, ...]  # the .debs its shared libraries are bundled from

    @property
    def version(self) -> str:
        return self.recipe.version

    @property
    def major_minor(self) -> str:
        return self.recipe.major_minor

    @property
    def fingerprint(self) -> str:
        """Every input of the package's bytes but the recipe files (the plan adds those)."""
        digest = hashlib.sha256(self.compile_key.encode() + b"\0")
        for deb in self.libraries:
            digest.update(f"{deb.filename}={deb.sha256}".encode() + b"\0")
        return digest.hexdigest()


def pinned_python(python_recipe: Path) -> PythonBuild:
    """The channel's CPython as ``python_recipe/cpython.toml`` pins it, with this machine's
    compiler, build packages and apt candidates (read, not changed: nothing is built here)."""
    recipe = read_recipe(python_recipe / RECIPE_FILE)
    if recipe.version != PY_FULL_VERSION:
        raise ChannelError(f"{python_recipe / RECIPE_FILE}: source.version {recipe.version} is not CPython "
                           f"{PY_FULL_VERSION}, the version the channel is built for (target.PY_FULL_VERSION)")
    key = compile_key(recipe, installed_versions(recipe.build_depends), toolchain())
    debs = candidate_debs(recipe.libraries.values())
    return PythonBuild(recipe=recipe, compile_key=key, libraries=debs)


# Parts of the interpreter the package leaves out: third-party packages (except pip),
# test suites, caches, static libraries, Tk and IDLE.
_PY_BIN_KEEP = re.compile(r"^(python[0-9.]*(-config)?|pip[0-9.]*|pydoc[0-9.]*|2to3(-[0-9.]+)?)$")
_PY_DROP_DIRS = {"__pycache__", "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo"}
_PY_DROP_EXT_RE = re.compile(
    r"^(_test\w*|_ctypes_test|_xxtestfuzz|_xxsubinterpreters|xxlimited\w*|_tkinter|nis)\."
)


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


def stage_python(python: PythonBuild, compiled: Path, debs: Mapping[str, Path], stage: Path, work: Path) -> None:
    """Copy the compiled interpreter ``compiled`` into ``stage`` (filtered), bundle its
    non-glibc libraries from ``debs`` (unpacked under ``work``) so the package runs on a
    slim base image, and point every ELF file's RUNPATH at ``$ORIGIN``-relative ``lib/``."""
    for dirpath, dirnames, filenames in os.walk(compiled):
        here = Path(dirpath)
        rel_dir = here.relative_to(compiled)
        dirnames[:] = [d for d in dirnames if python_keep(rel_dir / d, python.version)]
        (stage / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            rel = rel_dir / name
            if python_keep(rel, python.version):
                shutil.copy2(compiled / rel, stage / rel, follow_symlinks=False)
    # `python` and `pip`, as conda-forge's packages have them (CPython installs python3, pip3).
    for name in ("python", "pip"):
        if not (stage / "bin" / name).exists():
            (stage / "bin" / name).symlink_to(f"{name}{python.major_minor}")
    elves = sorted(p for p in stage.rglob("*") if _is_linked_elf(p))
    bundled = bundle_libraries(elves, python.recipe.libraries, debs, stage / "lib", work)
    for path in elves + bundled:
        origin_to_lib = os.path.relpath(stage / "lib", path.parent)
        rpath = "$ORIGIN" if origin_to_lib == "." else f"$ORIGIN/{origin_to_lib}"
        proc.run(["patchelf", "--set-rpath", rpath, path], error=ChannelError, what=f"patchelf {path.name}")
