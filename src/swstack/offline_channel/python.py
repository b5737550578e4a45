"""The CPython running swstack -> a staged, relocatable copy of it for the channel's ``python`` package.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import log, proc
from ..errors import ChannelError
from ..fsutil import sha256_file
from .target import PY_MAJOR_MINOR


@dataclass(frozen=True)
class PythonBuild:
    """The CPython the channel's ``python`` package is made from."""

    prefix: Path  # its install prefix (sys.base_prefix)
    version: str  # e.g. 3.11.7
    fingerprint: str  # sha256 of its shared library: changes when CPython is rebuilt

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


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
