"""Run a build step with the build directory mounted at the production prefix.

Input: argv, bind mounts (e.g. ``<builddir> -> /data0/sw``), environment, network on/off.
Output: the step's effects inside the mounted directories, owned by the invoking user;
its output streamed to the log; ``SandboxError`` with the output tail on failure.

Two backends behind one ``Sandbox`` Protocol, chosen by the site's ``sandbox`` setting:

- ``docker``: a container of the builder image (its own Debian Python and venv), with
  the swstack package mounted read-only and run as the invoking user;
- ``namespace``: bubblewrap, with a new root assembled from the host's top-level
  directories one by one, read-only, an empty ``/data0`` and a private ``/tmp`` of its own,
  using the host's Python.

Either way the machine's own ``/data0`` is never created or touched: the sandbox's
``/data0`` lives in a private root, and nothing of the host's ``/tmp`` (other users' files,
ssh-agent and X11 sockets) is seen inside. ``private_root_argv`` offers the same private
root to any command (tests use it with a size-limited tmpfs as a small ramdisk).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import log, paths, proc
from .baseimage import BUILDER_PYTHON, BaseSpec, ensure_builder
from .engine import TAIL_LINES, DockerEngine, Engine
from .errors import SandboxError, StepFailed

KINDS = ("docker", "namespace", "auto")
PRIVATE_ROOT = paths.ROOT  # each sandbox has its own, so the machine's is never touched

# Top-level host directories the private root never binds: /data0 is the private one,
# and /proc, /dev and /tmp get their own mounts below.
_NOT_BOUND = frozenset({PRIVATE_ROOT.strip("/").split("/")[0], "proc", "dev", "tmp"})

# Where the docker backend mounts the swstack package inside the builder image.
CONTAINER_SOURCE = "/opt/swstack/src"

# The size of the tmpfs at /tmp when a caller of ``private_root_argv`` gives it no directory: RAM,
# as much as is written, for a command that writes little there (a test's kernel, a probe).
TMP_TMPFS_SIZE = 256 << 20


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Tmpfs:
    target: str
    size: int  # bytes; the sandbox sees a file system of exactly this size


@dataclass(frozen=True)
class TopEntry:
    """One entry of the host's ``/``: a directory, a file or a symlink (with its target)."""

    name: str
    kind: str  # "dir" | "file" | "symlink"
    link: str = ""


class Sandbox(Protocol):
    name: str

    def python(self) -> list[str]:
        """The argv prefix of a Python with swstack, rattler, conda_pack and zstandard importable."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        mounts: Sequence[Mount],
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        network: bool = True,
    ) -> None:
        """Run ``argv`` inside; raise ``SandboxError`` with the output tail on failure."""
        ...


# -- planning (pure) ----------------------------------------------------------------------


def select_kind(setting: str, engine_answers: Callable[[], bool]) -> str:
    """The backend for a site's ``sandbox`` setting: ``auto`` is docker when an engine answers."""
    if setting not in KINDS:
        raise SandboxError(f"unknown sandbox kind {setting!r}: use one of {', '.join(KINDS)}")
    if setting == "auto":
        return "docker" if engine_answers() else "namespace"
    return setting


def host_top_level(root: Path = Path("/")) -> tuple[TopEntry, ...]:
    """Read the host's top-level entries (sorted) for ``private_root_argv``."""
    entries = []
    for child in sorted(root.iterdir()):
        if child.is_symlink():
            entries.append(TopEntry(child.name, "symlink", os.readlink(child)))
        elif child.is_dir():
            entries.append(TopEntry(child.name, "dir"))
        else:
            entries.append(TopEntry(child.name, "file"))
    return tuple(entries)


def private_root_argv(
    mounts: Sequence[Mount] = (),
    tmpfs: Sequence[Tmpfs | tuple[str, int]] = (),
    *,
    symlinks: Sequence[tuple[str, str]] = (),
    tmp: Path | None = None,
    network: bool = True,
    workdir: str | None = None,
    top_level: Sequence[TopEntry] | None = None,
) -> list[str]:
    """The bubblewrap argv prefix (ending in ``--``) of a private root with its own ``/data0`` and ``/tmp``.

    The root is bwrap's own tmpfs. Each host top-level directory is bound on its own, read-only,
    never ``/`` as a whole: with ``--bind / /`` a ``mkdir /data0`` would reach the real
    disk. ``/tmp`` is never the host's (every user's files, ssh-agent and X11 sockets): it is
    ``tmp``, a host directory the caller made for this run and removes afterwards, or without one
    a tmpfs of ``TMP_TMPFS_SIZE`` bytes; a host path below ``/tmp`` that the command needs is one
    of its ``mounts``, but for this Python and swstack, bound read-only when they live there
    (``own_python_below_tmp``). Only ``/tmp`` and the ``mounts`` not marked read-only can be written.
    Then come, in this order, the ``tmpfs`` mounts (``(target, bytes)``), the bind ``mounts`` and
    the ``symlinks`` (``(link_target, link_path)``), so a mount may land in a tmpfs or in
    ``/tmp`` and a symlink may point at either (``/data0/sw -> /data0/sw.tmpfs``). Every process
    started inside dies with the process that started bubblewrap.
    """
    # Its own PID namespace, ended with bwrap, and bwrap ended with its parent: a build killed or
    # interrupted leaves no process behind (compileall's workers went on writing into the next
    # build's directory).
    argv = ["bwrap", "--die-with-parent", "--unshare-pid"]
    # Mount points the host lacks: bwrap makes them, which it cannot do in a read-only bind.
    missing = [t for t in (*(m.target for m in mounts), *(t.target if isinstance(t, Tmpfs) else t[0] for t in tmpfs))
               if not os.path.lexists(t)]
    for entry in host_top_level() if top_level is None else top_level:
        if entry.name in _NOT_BOUND:
            continue
        path = "/" + entry.name
        if entry.kind == "symlink":
            argv += ["--symlink", entry.link, path]
        else:  # read-only: what runs inside (a package's build, a kernel) writes only to the mounts
            argv += _read_only(path, missing)
    private_tmp = ["--size", str(TMP_TMPFS_SIZE), "--tmpfs", "/tmp"] if tmp is None else ["--bind", str(tmp), "/tmp"]
    argv += ["--proc", "/proc", "--dev", "/dev", *private_tmp]
    for path in own_python_below_tmp():
        argv += ["--ro-bind", path, path]
    argv += ["--dir", PRIVATE_ROOT]
    for fs in (t if isinstance(t, Tmpfs) else Tmpfs(*t) for t in tmpfs):
        _check_target(fs.target)
        argv += ["--size", str(int(fs.size)), "--tmpfs", fs.target]
    for mount in mounts:
        _check_target(mount.target)
        argv += ["--ro-bind" if mount.read_only else "--bind", str(mount.source), mount.target]
    for link_target, link_path in symlinks:
        _check_target(link_path)
        argv += ["--symlink", link_target, link_path]
    if not network:
        argv.append("--unshare-net")
    if workdir:
        argv += ["--chdir", workdir]
    argv.append("--")
    return argv


def own_python_below_tmp() -> list[str]:
    """This Python and what it imports (its virtualenv, the Python it was made from, swstack, the
    rest of ``sys.path``) where they live below the host's ``/tmp``: a checkout and its virtualenv
    there (a CI job's clone) run the steps, and the private ``/tmp`` would hide them. Outermost
    paths only, read-only, before the caller's mounts (so one of those may land inside)."""
    candidates = {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable), str(package_dir().parent), *sys.path}
    below = sorted({os.path.abspath(p) for p in candidates if p} - {"/tmp"})
    below = [p for p in below if p.startswith("/tmp/") and os.path.exists(p)]
    return [p for i, p in enumerate(below) if not any(p.startswith(q + "/") for q in below[:i])]


def _read_only(path: str, missing: Sequence[str]) -> list[str]:
    """Bind the host's ``path`` read-only; a directory on the way to a ``missing`` mount point
    becomes one of the private root's own instead (its entries bound one by one, read-only), so
    bwrap can make the mount point there, never on the host's disk."""
    if not any(t.startswith(path + "/") for t in missing) or not os.path.isdir(path) or os.path.islink(path):
        return ["--ro-bind", path, path]
    argv = ["--dir", path]
    for child in sorted(os.scandir(path), key=lambda e: e.name):
        if child.is_symlink():
            argv += ["--symlink", os.readlink(child.path), child.path]
        else:
            argv += _read_only(child.path, missing)
    return argv


def _check_target(target: str) -> None:
    if not target.startswith("/") or target.rstrip("/") in ("", "/") or ".." in target.split("/"):
        raise SandboxError(f"mount target {target!r} must be an absolute path below /, without '..'")


# Environment variables a step inside never gets: the registry's and the signing key's secrets,
# and any variable whose name says it holds one (a CI's tokens). What runs inside is the stack's
# code (a git dependency's build, its kernels), which a less trusted contributor may write.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|_AUTH|^DOCKER_CONFIG$|"
                          r"^SWSTACK_REGISTRY_USER$", re.IGNORECASE)


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables that may hold a secret (``_SECRET_NAME``), and ``TMPDIR`` the
    private root's ``/tmp``: the host's (pam_tmpdir's ``/tmp/user/<uid>``) is no directory there."""
    return {**{k: v for k, v in env.items() if not _SECRET_NAME.search(k)}, "TMPDIR": "/tmp"}


def container_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a builder container: swstack importable, a writable HOME, UTF-8."""
    return {
        "PYTHONPATH": CONTAINER_SOURCE,
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }


def package_dir() -> Path:
    """The directory of the running swstack package, mounted read-only into containers."""
    return Path(__file__).resolve().parent


# -- doing ------------------------------------------------------------------------------


class NamespaceSandbox:
    """Bubblewrap around the host's own Python; files are created as the invoking user."""

    name = "namespace"

    def __init__(self) -> None:
        if proc.which("bwrap") is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: run scripts/setup")

    def python(self) -> list[str]:
        return [sys.executable]

    def run(
        self,
        argv: Sequence[str],
        *,
        mounts: Sequence[Mount],
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        network: bool = True,
    ) -> None:
        tail: deque[str] = deque(maxlen=TAIL_LINES)

        def line(text: str) -> None:
            tail.append(text)
            log.output(text)

        what = f"{_short(argv)} (namespace sandbox)"
        # The step's /tmp: a directory of its own on the disk the host's temporary files are on, not a
        # tmpfs, since pip unpacks every wheel it installs there and builds a git dependency there (a
        # large wheel alone is gigabytes, which would be RAM). mkdtemp's 0700 keeps other users out
        # of it; it is removed once bwrap has exited, and every process of the step with it.
        with tempfile.TemporaryDirectory(prefix="swstack-tmp-") as tmp:
            full = private_root_argv(mounts, tmp=Path(tmp), network=network, workdir=workdir) + list(argv)
            code = proc.run_streaming(full, env={**sandbox_env(os.environ), **(env or {})}, error=SandboxError,
                                      what=what, on_line=line, check=False)
        if code != 0:
            raise step_failed(f"{what} failed (exit {code})", code, list(tail))


class DockerSandbox:
    """A container of the builder image, the swstack package mounted read-only, run as ``user``."""

    name = "docker"

    def __init__(self, engine: Engine, image: str, *, user: tuple[int, int] | None = None) -> None:
        self.engine = engine
        self.image = image
        self.user = user or (os.getuid(), os.getgid())

    def python(self) -> list[str]:
        return [BUILDER_PYTHON]

    def run(
        self,
        argv: Sequence[str],
        *,
        mounts: Sequence[Mount],
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        network: bool = True,
    ) -> None:
        source = Mount(package_dir(), f"{CONTAINER_SOURCE}/swstack", read_only=True)
        # Running as the invoking user (not root, then chown) means every file the step
        # creates in a mount is already the user's, and a crash leaves nothing root-owned.
        result = self.engine.run(
            self.image,
            list(argv),
            mounts=[*mounts, source],
            env=container_env(env or {}),
            workdir=workdir or "/tmp",
            user=f"{self.user[0]}:{self.user[1]}",
            network=network,
            on_output=log.output,
            check=False,
        )
        if result.exit_code != 0:
            headline = f"{' '.join(argv[:3])} failed in container {self.image} (exit {result.exit_code})"
            raise step_failed(headline, result.exit_code, result.tail.splitlines())


def step_failed(headline: str, code: int, tail: list[str]) -> StepFailed:
    """A step's non-zero exit: its output's tail in the message, its last line kept apart."""
    detail = "\n".join("    " + line for line in tail)
    return StepFailed(headline + (f":\n{detail}" if detail else ""), code=code, last_line=tail[-1] if tail else "")


def open_sandbox(
    kind: str,
    *,
    engine: Engine | None = None,
    user: tuple[int, int] | None = None,
    base: BaseSpec | None = None,
) -> Sandbox:
    """The sandbox for a site's ``sandbox`` setting; the docker one builds its image if missing.

    ``user`` (uid, gid) owns what a docker step creates; it defaults to the invoking user.
    ``base`` is the Debian base of the builder image, e.g.
    ``load_base_spec(mirror=site.debian_mirror, suite=site.debian_suite)``.
    """
    engine = engine or DockerEngine()
    chosen = select_kind(kind, engine.available)
    if chosen == "namespace":
        return NamespaceSandbox()
    engine.ping()  # the clear "no Docker engine answers at ..." message when kind = "docker"
    return DockerSandbox(engine, ensure_builder(engine, base=base), user=user)


def _short(argv: Sequence[str]) -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv[:3]))
