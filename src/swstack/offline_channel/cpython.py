"""``channel/recipes/python/cpython.toml`` -> a CPython compiled from Debian's pinned source
(cached by a key of every compile input) and the Debian library packages bundled with it.

The channel's python package is a function of these inputs only, never of the machine's
own interpreter or installed libraries: the source tarball is checked against its pinned
sha256, the compile runs in a fixed directory with a fixed clock and a bare environment,
and the shared libraries are taken from the candidate ``.deb`` files apt downloads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .. import log, proc
from ..errors import ChannelError
from ..fsutil import atomic_dir, atomic_output, sha256_file
from .target import BUILD_ROOT, SOURCE_DATE_EPOCH, ensure_dir

RECIPE_FILE = "cpython.toml"
# CPython is compiled and installed here, whatever the cache: the install prefix is written
# into text files (rewritten to the package's prefix) and libpython (a fallback only), and
# the source directory into the sysconfig data, so both must be one path on every machine.
COMPILE_DIR = BUILD_ROOT / "cpython"
INSTALL_PREFIX = COMPILE_DIR / "prefix"
# Bump when the way CPython is compiled changes (the key of every compiled CPython changes).
COMPILE_RULES = "1"
# No -g (CPython's default OPT has it): debug info records the build directory and is
# not shipped. No PGO/LTO: they multiply the compile time. Modules that would link a
# library outside cpython.toml's list (Tk, gdbm, Berkeley DB, NIS) are switched off, so
# the build does not depend on which other -dev packages the machine has.
CONFIGURE_ARGS = (
    "--enable-shared",
    "--with-ensurepip=install",
    "OPT=-DNDEBUG -fwrapv -O3 -Wall",
    "py_cv_module__tkinter=n/a",
    "py_cv_module__gdbm=n/a",
    "--with-dbmliborder=",  # no _dbm backend (setup.py would take any it finds)
    "py_cv_module_nis=n/a",
)
MAKE_JOBS = 2


@dataclass(frozen=True)
class CPythonRecipe:
    """``cpython.toml``: the pinned source, the build's Debian packages, the bundled libraries."""

    version: str
    url: str
    sha256: str
    build_depends: tuple[str, ...]
    libraries: Mapping[str, str]  # soname -> Debian package

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def tarball_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DebPackage:
    """One Debian package at apt's candidate version, as ``apt-get download --print-uris`` names it."""

    name: str
    filename: str
    sha256: str


def read_recipe(path: Path) -> CPythonRecipe:
    """Parse ``cpython.toml``; errors name the file and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ChannelError(f"{path}: {exc}") from exc

    def get(table: str, key: str) -> object:
        value = data.get(table, {}).get(key) if isinstance(data.get(table), dict) else None
        if value is None:
            raise ChannelError(f"{path}: {table}.{key}: missing; see docs/channel.md")
        return value

    version, url, sha256 = (str(get("source", k)) for k in ("version", "url", "sha256"))
    depends = get("build", "depends")
    libraries = data.get("libraries")
    if not isinstance(depends, list) or not isinstance(libraries, dict) or not libraries:
        raise ChannelError(f"{path}: build.depends must be a list and [libraries] a table of soname = package")
    recipe = CPythonRecipe(
        version=version,
        url=url,
        sha256=sha256.lower(),
        build_depends=tuple(str(d) for d in depends),
        libraries={str(k): str(v) for k, v in libraries.items()},
    )
    if not re.fullmatch(r"[0-9a-f]{64}", recipe.sha256):
        raise ChannelError(f"{path}: source.sha256: not a sha256 ({recipe.sha256!r})")
    return recipe


def candidate_debs(packages: Iterable[str]) -> tuple[DebPackage, ...]:
    """apt's candidate ``.deb`` of each package, with its sha256 from the archive's index
    (no download: ``--print-uris``)."""
    names = sorted(set(packages))
    out = proc.output(["apt-get", "download", "--print-uris", *names], error=ChannelError,
                      what="apt-get download --print-uris")
    debs = parse_print_uris(out)
    missing = set(names) - {d.name for d in debs}
    if missing:
        raise ChannelError(f"apt has no candidate for {', '.join(sorted(missing))}: run apt-get update")
    return debs


def parse_print_uris(text: str) -> tuple[DebPackage, ...]:
    """``'uri' file_version_arch.deb size SHA256:hex`` lines -> packages. Pure."""
    debs = []
    for line in text.splitlines():
        m = re.match(r"'[^']+' (([^_\s]+)_\S+\.deb) \d+ SHA256:([0-9a-f]{64})$", line.strip())
        if m:
            debs.append(DebPackage(name=m[2], filename=m[1], sha256=m[3]))
    return tuple(sorted(debs, key=lambda d: d.name))


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """The installed version of each package ("" if it is not installed)."""
    names = sorted(set(packages))
    # One query for all (exit 1 when some are unknown: those are simply absent).
    result = proc.run(["dpkg-query", "-W", "-f=${Package} ${Status} ${Version}\n", *names], check=False,
                      error=ChannelError, what="dpkg-query")
    versions = dict.fromkeys(names, "")
    for line in result.stdout.splitlines():
        m = re.match(r"(\S+) install ok installed (\S+)$", line)
        if m and m[1] in versions:
            versions[m[1]] = m[2]
    return versions


def toolchain() -> str:
    """The compiler's and linker's version lines: part of the compile key."""
    gcc = proc.output(["gcc", "--version"], error=ChannelError, what="gcc --version").splitlines()[0]
    ld = proc.output(["ld", "--version"], error=ChannelError, what="ld --version").splitlines()[0]
    return f"{gcc}\n{ld}"


def compile_key(recipe: CPythonRecipe, build_versions: Mapping[str, str], tools: str) -> str:
    """Everything the compiled bytes depend on: source, flags, directory, clock, compiler,
    the build's Debian packages. Pure."""
    missing = sorted(name for name, version in build_versions.items() if not version)
    if missing:
        raise ChannelError(f"compiling CPython needs the Debian packages {', '.join(missing)}: run scripts/setup")
    digest = hashlib.sha256()
    for part in (COMPILE_RULES, recipe.sha256, str(COMPILE_DIR), str(SOURCE_DATE_EPOCH), str(MAKE_JOBS),
                 *CONFIGURE_ARGS, tools, *(f"{k}={v}" for k, v in sorted(build_versions.items()))):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def compiled_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / "cpython" / key


def ensure_compiled(recipe: CPythonRecipe, key: str, cache_dir: Path) -> Path:
    """The compiled CPython for ``key`` in the cache (an installed prefix tree), compiled now
    if missing. The caller holds ``BUILD_ROOT``'s lock: the compile runs in ``COMPILE_DIR``."""
    done = compiled_dir(cache_dir, key)
    if (done / "bin").is_dir():
        return done
    tarball = fetch_source(recipe, cache_dir)
    log.step(f"python: compiling CPython {recipe.version} (once per cache, minutes)")
    started = time.monotonic()
    _compile(recipe, tarball)
    log.info(f"python: CPython {recipe.version} compiled in {time.monotonic() - started:.0f}s")
    with atomic_dir(done) as tmp:
        shutil.copytree(INSTALL_PREFIX, tmp, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(COMPILE_DIR, ignore_errors=True)
    return done


def fetch_source(recipe: CPythonRecipe, cache_dir: Path) -> Path:
    """The source tarball in the cache, downloaded if missing, checked against its sha256."""
    path = ensure_dir(cache_dir / "cpython" / "src") / recipe.tarball_name
    if not path.is_file():
        log.info(f"python: downloading {recipe.url}")
        try:
            with (
                atomic_output(path) as part,
                urllib.request.urlopen(recipe.url, timeout=120) as resp,
                open(part, "wb") as fh,
            ):
                shutil.copyfileobj(resp, fh)
        except OSError as exc:
            raise ChannelError(
                f"downloading {recipe.url} failed: {exc}; without access to Debian's archive, put the "
                f"file (sha256 {recipe.sha256}) at {path}"
            ) from exc
    got = sha256_file(path)
    if got != recipe.sha256:
        path.unlink()
        raise ChannelError(f"{recipe.url}: sha256 {got}, cpython.toml pins {recipe.sha256}")
    return path


def _compile(recipe: CPythonRecipe, tarball: Path) -> None:
    shutil.rmtree(COMPILE_DIR, ignore_errors=True)
    home = ensure_dir(COMPILE_DIR / "home")
    proc.run(["tar", "-xzf", tarball, "-C", COMPILE_DIR], error=ChannelError, what="unpacking CPython")
    src = COMPILE_DIR / f"Python-{recipe.version}"
    if not (src / "configure").is_file():
        raise ChannelError(f"{tarball.name}: no Python-{recipe.version}/configure inside")
    # A bare environment: no CFLAGS, locale, pip configuration or home of this machine.
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "PIP_CONFIG_FILE": os.devnull,
    }
    steps: Sequence[tuple[str, list[str]]] = (
        ("configure", ["./configure", f"--prefix={INSTALL_PREFIX}", *CONFIGURE_ARGS]),
        ("make", ["nice", "-n", "15", "make", f"-j{MAKE_JOBS}"]),
        ("make install", ["nice", "-n", "15", "make", "install"]),
    )
    for what, argv in steps:
        # umask 022: the installed files' modes must not depend on the caller's umask.
        proc.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *argv], cwd=src, env=env,
                 error=ChannelError, what=f"CPython {what}", timeout=7200)


def fetch_debs(debs: Sequence[DebPackage], cache_dir: Path) -> dict[str, Path]:
    """The ``.deb`` files in the cache (downloaded with ``apt-get download`` if missing),
    each checked against the sha256 apt's index gave. Package name -> file."""
    where = ensure_dir(cache_dir / "cpython" / "debs")
    missing = [d for d in debs if not (where / d.filename).is_file()]
    if missing:
        log.info(f"python: downloading {', '.join(d.filename for d in missing)}")
        proc.run(["apt-get", "download", *(d.name for d in missing)], cwd=where, error=ChannelError,
                 what="apt-get download", timeout=600)
    paths = {}
    for deb in debs:
        path = where / deb.filename
        if not path.is_file() or sha256_file(path) != deb.sha256:
            path.unlink(missing_ok=True)
            raise ChannelError(f"{deb.filename}: missing or not the sha256 apt's index names; try again")
        paths[deb.name] = path
    return paths


# glibc's own libraries come from the host (every Linux has them, at a compatible version).
GLIBC_LIBS = re.compile(r"^(ld-linux[-\w.]*|libc|libm|libpthread|libdl|librt|libutil|libresolv|libanl)\.so")


def needed_sonames(path: Path) -> list[str]:
    """The DT_NEEDED entries of one ELF file."""
    out = proc.output(["patchelf", "--print-needed", path], error=ChannelError, what=f"patchelf {path.name}")
    return out.split()


def bundle_libraries(
    elves: Sequence[Path], libraries: Mapping[str, str], debs: Mapping[str, Path], libdir: Path, work: Path
) -> list[Path]:
    """Copy the shared libraries ``elves`` need (transitively, glibc's and libpython aside)
    into ``libdir``, each from its Debian package's ``.deb``."""
    queue = [s for e in elves for s in needed_sonames(e)]
    copied: list[Path] = []
    seen: set[str] = set()
    while queue:
        soname = queue.pop()
        if soname in seen or GLIBC_LIBS.match(soname) or soname.startswith("libpython"):
            continue
        seen.add(soname)
        package = libraries.get(soname)
        if package is None:
            raise ChannelError(
                f"CPython links {soname}, which channel/recipes/python/cpython.toml's [libraries] does not list: "
                "add it with the Debian package it comes from"
            )
        found = _library_in_deb(soname, debs[package], work / package)
        target = libdir / soname
        shutil.copyfile(found, target)
        target.chmod(0o755)
        copied.append(target)
        queue.extend(needed_sonames(target))
    log.debug(f"python: bundled {', '.join(sorted(seen)) or 'no libraries'}")
    return sorted(copied)


def _library_in_deb(soname: str, deb: Path, tree: Path) -> Path:
    if not tree.is_dir():
        tree.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["dpkg-deb", "-x", deb, tree], error=ChannelError, what=f"dpkg-deb -x {deb.name}")
    for libdir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        candidate = tree / libdir / soname
        if candidate.exists():
            return candidate.resolve()
    raise ChannelError(f"{deb.name} holds no {soname} (cpython.toml's [libraries] names the wrong package)")
