"""Stack + site -> ``lockfiles/<stack>[/<variant>]/conda-lock.yml`` (conda-lock's unified format).

For every platform of the stack, conda packages are solved with py-rattler against the
stack's channels, reached through the site's mirrors, with the stack's virtual packages for
that platform; pip packages are resolved by pip itself (``pip install --dry-run --report``
in a bare virtualenv, for the target platform's wheel tags), the conda side's Python
packages standing in as installed distributions; a git dependency is locked to a commit.

The lockfile names the real sources only: each conda package by its channel's own URL
(``https://conda.anaconda.org/conda-forge/...``), a pip file from a site's wheelhouse or
index by its index-relative name on PyPI, a git dependency by its real URL, each with its
sha256 (git: its commit). Mirrors are applied when solving and when fetching
(``Site.fetch_url``), never written down, so a lockfile is the same whoever makes it
where. It is written through conda-lock's models so that ``conda-lock render`` reads it.

``plan_lock`` is pure; ``staleness`` reads the lockfile and, for a site whose mirror is a
local directory, the locked files in it; solving talks to the channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import difflib
import functools
import gc
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log, proc
from .errors import LockError, StaleLockError
from .fsutil import atomic_output
from .site import Site, canonical_channel
from .spec import PipGit, Stack

LOCK_FORMAT = 2  # bump when the meaning of the inputs hash changes
# The pip index a lockfile names for files a site serves from its wheelhouse or own index:
# ``<PYPI_INDEX>/<project>/<file>`` with the file's sha256; the site maps it at install time.
PYPI_INDEX = "https://pypi.org/simple"
LOCKFILE_NAME = "conda-lock.yml"
PYPI_MAPPING = Path(__file__).with_name("data") / "pypi-mapping.json"


# ---- planning (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LockPlan:
    """Everything a solve needs and the hashes that tell whether a lockfile is current."""

    stack: Stack
    site: Site
    channel_urls: tuple[str, ...]  # what the solver reads: the channels through the site's mirrors
    channels: tuple[str, ...]  # what the lockfile names: the channels' own URLs
    platforms: tuple[str, ...]
    content_hash: dict[str, str]  # platform -> hash of the inputs
    path: Path


def lockfile_path(stack: Stack, project: Path) -> Path:
    return project / "lockfiles" / stack.lock_subdir / LOCKFILE_NAME


def inputs_hash(stack: Stack, platform: str) -> str:
    """The staleness key: what the stack asks for, for which platform.

    No site setting is part of it: mirrors are copies of the channels the stack names (as
    pixi treats them), so a lock does not depend on which site or machine made it.
    """
    payload = {
        "format": LOCK_FORMAT,
        "stack": stack.locking_inputs(),
        "channels": [canonical_channel(c) for c in stack.channels],
        "platform": platform,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def plan_lock(stack: Stack, site: Site, project: Path) -> LockPlan:
    return LockPlan(
        stack=stack,
        site=site,
        channel_urls=tuple(site.channel_url(c) for c in stack.channels),
        channels=tuple(canonical_channel(c) for c in stack.channels),
        platforms=stack.platforms,
        content_hash={p: inputs_hash(stack, p) for p in stack.platforms},
        path=lockfile_path(stack, project),
    )


def staleness(plan: LockPlan) -> str | None:
    """Why the lockfile at ``plan.path`` is stale, or None when it matches the inputs."""
    if not plan.path.is_file():
        return "it does not exist"
    try:
        lockfile = read_lockfile(plan.path)
    except LockError as exc:
        return str(exc)
    recorded = lockfile.metadata.content_hash
    if set(recorded) != set(plan.platforms):
        return f"platforms changed: locked {sorted(recorded)}, stack asks {sorted(plan.platforms)}"
    changed = [p for p in plan.platforms if recorded.get(p) != plan.content_hash[p]]
    if changed:
        return f"inputs changed for {', '.join(changed)} (stack file, variant or lock format)"
    return edited(lockfile, plan.path) or local_drift(lockfile, plan.site)


def local_file(url: str) -> Path | None:
    """The local path of a file:// URL, else None."""
    import urllib.parse

    parsed = urllib.parse.urlparse(url)
    return Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else None


def pip_index_file(url: str) -> tuple[str, str] | None:
    """``<PYPI_INDEX>/<project>/<file>`` -> (project, file); None for any other URL."""
    if not url.startswith(PYPI_INDEX + "/"):
        return None
    project, _, filename = url[len(PYPI_INDEX) + 1:].partition("/")
    return (project, filename) if project and filename and "/" not in filename else None


def local_drift(lockfile: Any, site: Site) -> str | None:
    """A locked package that the site's local mirror lacks or holds with other bytes.

    Remote channels never change a published file, but a site's local channel (the offline
    one) can be rebuilt; a lock whose packages the mirror no longer has as locked is stale,
    however unchanged its inputs. Only local mirrors are read; nothing is downloaded.
    """
    from .fsutil import sha256_file

    for package in lockfile.package:
        sha256 = package.hash.sha256
        if not sha256:
            continue
        if package.manager == "conda":
            fetch = site.fetch_url(package.url)
        else:
            named = pip_index_file(package.url)
            fetch = (site.pip_file_url(*named) if named else None) or package.url
        local = local_file(fetch)
        if local is None:
            continue
        if not local.is_file():
            return f"{package.name}: the mirror has no {local.name} ({fetch}; the local channel was rebuilt or moved)"
        if sha256_file(local) != sha256:
            return f"{package.name}: {fetch} has other bytes than when locked (the local channel was rebuilt)"
    return None


def virtual_package_specs(virtual: dict[str, str]) -> list[tuple[str, str, str]]:
    """``{"__archspec": "1=x86_64"}`` -> ``[("__archspec", "1", "x86_64")]``."""
    out = []
    for name, value in sorted(virtual.items()):
        version, _, build = value.partition("=")
        out.append((name, version or "0", build or "0"))
    return out


# ---- reading ---------------------------------------------------------------------------------


def read_lockfile(path: Path) -> Any:
    """Parse with conda-lock's own parser; errors become ``LockError``."""
    from conda_lock.lockfile import parse_conda_lock_file

    try:
        return parse_conda_lock_file(path)
    except FileNotFoundError:
        raise LockError(f"{path}: no lockfile; run `doit lock stack=...` first") from None
    except (AttributeError, TypeError, KeyError, IndexError):
        # The parser's own code tripping over a document of another shape (an empty file, a list).
        empty = not path.read_text(errors="replace").strip()
        what = "empty" if empty else "not a mapping of conda-lock's version, metadata and package"
        raise LockError(f"{path}: not a readable conda-lock file ({what}); lock again") from None
    except Exception as exc:
        problem = _first_problem(exc).replace(str(path), "the file")  # the message names it once
        raise LockError(f"{path}: not a readable conda-lock file ({problem}); lock again") from None


def _first_problem(exc: Exception) -> str:
    """One line of a parser's error: pydantic's first error with its location, else the message's first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            first = errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            if first.get("type") == "missing":  # its input is the whole enclosing mapping, not the field
                return f"{where}: {first['msg'].lower()}"
            got = repr(first.get("input"))
            return f"{where}: {first['msg'].lower()}, got {got if len(got) <= 60 else got[:57] + '...'}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---- solving (side effects) ----------------------------------------------------------------------


def _solve_conda(plan: LockPlan, platform: str, cache: Path) -> list[Any]:
    import rattler
    from rattler.exceptions import GatewayError

    virtual = [
        rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
        for n, v, b in virtual_package_specs(plan.stack.lock.virtual_packages_for(platform))
    ]
    gateway = rattler.Gateway(cache_dir=cache / "repodata")
    try:
        return asyncio.run(
            rattler.solve(
                sources=[rattler.Channel(url) for url in plan.channel_urls],
                specs=[rattler.MatchSpec(s) for s in plan.stack.conda],
                gateway=gateway,
                platforms=[rattler.Subdir(platform), rattler.Subdir("noarch")],
                virtual_packages=virtual,
            )
        )
    except GatewayError as exc:
        why = _explain_unreachable(plan, exc)
    except Exception as exc:
        why = _explain_unsolvable(plan, platform, exc)
    finally:
        inner = getattr(gateway, "_gateway", gateway)  # rattler's own gateway, which its runtime threads hold
        del gateway
        _wait_until_only_ours(inner)
        del inner
    # Raised outside the handlers: no context holding the solver's error, its frames and the gateway.
    raise LockError(why)


def _wait_until_only_ours(obj: object, timeout: float = 5.0) -> None:
    """Wait until the solver's runtime threads have let go of ``obj`` (the gateway). After a failed
    solve they keep it for about 0.1 s, finishing their fetches; `doit lock` printing the error and
    exiting in that window had them drop it during the interpreter's finalization, which aborts the
    process (a fatal PyGILState_Release, exit -6, after the message)."""
    deadline = time.monotonic() + timeout
    polls = 0
    # 3 references are ours: the caller's name, this parameter and getrefcount's argument.
    while sys.getrefcount(obj) > 3 and time.monotonic() < deadline:
        if polls % 20 == 0:
            gc.collect()  # a cycle through the solver's error and its frames, if nothing else holds it
        polls += 1
        time.sleep(0.005)


def _check_local_channels(plan: LockPlan) -> None:
    """A channel served from a directory (a site's mirror) that is not there: say so, not "no candidates"."""
    for channel, url in zip(plan.stack.channels, plan.channel_urls, strict=True):
        if url.startswith("file://") and not Path(url[len("file://"):]).is_dir():
            raise LockError(
                f"channel {channel}: {plan.site.mirror_description()} serves it from {url}, which does not "
                "exist; build it first (doit channel) or fix the site's [channels.mirrors]"
            )


def _explain_unreachable(plan: LockPlan, exc: Exception) -> str:
    """A channel's package index could not be fetched: which channel, why, and, for a channel the
    site does not mirror, the mirrored ones (a typo in a stack's ``channels`` reaches the network)."""
    text = str(exc).strip()
    causes = [line.removeprefix("Caused by: ") for line in text.splitlines()[1:] if line.strip()]
    why = f" ({causes[-1]})" if causes else ""
    failed = [c for c, url in zip(plan.stack.channels, plan.channel_urls, strict=True) if f"{url}/" in text]
    log.debug(text)  # the fetcher's whole chain of causes, for --verbosity; the message keeps the last
    parts = [f"cannot fetch the package index of {', '.join(failed) or ', '.join(plan.channel_urls)}{why}"]
    mirrored = sorted(plan.site.mirrors)
    for channel in failed:
        if mirrored and channel not in plan.site.mirrors:
            close = difflib.get_close_matches(channel, mirrored, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            parts.append(f"channel {channel!r} has no mirror in {plan.site.mirror_description()}{hint}")
    if plan.site.source is None:  # the newcomer's mistake on a machine that reaches no channel
        parts.append("no site file was given, so these are the real channels: on a machine that reaches none, "
                     "give one with site= or SWSTACK_SITE (this repository's: site=sites/offline.toml)")
    else:
        parts.append("check the stack's channels, the site's [channels.mirrors] and the network")
    return f"{_entry(plan.stack, 'channels')}: " + "; ".join(parts)


def _explain_unsolvable(plan: LockPlan, platform: str, exc: Exception) -> str:
    """The solver's explanation, plus the stack-file lines of the entries it mentions."""
    text = str(exc).strip()
    lines = [f"cannot solve {plan.stack.stack_id} for {platform} from {', '.join(plan.channel_urls)}:", text]
    mentioned = [spec for spec in plan.stack.conda if re.search(rf"\b{re.escape(spec.split()[0])}\b", text)]
    if plan.stack.source is not None:
        lines += [f"{_entry(plan.stack, 'dependencies', spec.split()[0])} = {spec!r} is part of the conflict"
                  for spec in mentioned]
    # A site's local mirror without the platform's index (the offline channel has linux-64 only):
    # the solver sees no package at all for it, which no change of the entries above mends.
    bare = [(channel, url) for channel, url in zip(plan.stack.channels, plan.channel_urls, strict=True)
            if (local := local_file(url)) is not None and not (local / platform / "repodata.json").is_file()]
    for channel, url in bare:
        lines.append(f"channel {channel}: site {plan.site.name!r} serves it from {url}, which has no {platform} "
                     f"packages (no {platform}/repodata.json); add {platform} to the mirror, or lock only the "
                     "platforms it carries")
    if not bare:
        lines.append("Relax or remove the entries above, or check that the channels carry these packages.")
    return "\n".join(lines)


def _conda_locked(record: Any, platform: str, plan: LockPlan) -> Any:
    """One solved record -> a lockfile entry naming the package's canonical URL (no mirror)."""
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    depends: dict[str, str] = {}
    for dep in record.depends:
        name, _, spec = dep.partition(" ")
        depends[name] = spec.strip() or "*"
    if not record.md5 or not record.sha256:
        raise LockError(f"{record.url}: the channel gives no md5/sha256 for this package; re-index the channel")
    return LockedDependency(
        name=record.name.normalized,
        version=str(record.version),
        manager="conda",
        platform=platform,
        dependencies=depends,
        url=plan.site.canonical_url(str(record.url), plan.stack.channels),
        hash=HashModel(md5=record.md5.hex(), sha256=record.sha256.hex()),
        build=str(record.build),
        categories={"main"},
    )


@contextlib.contextmanager
def _serve_directory(directory: Path) -> Iterator[str]:
    """Serve a wheelhouse over http on 127.0.0.1 while the pip resolver runs (it speaks http only)."""

    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("wheelhouse: " + format % args)


def _git_commit(url: str, ref: str, where: str = "") -> str:
    """Resolve a branch, tag or sha of a git repository to a full commit sha.

    ``where`` names the stack-file entry (``stacks/py3.toml:22: pip.dependencies.x``) for messages."""
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    out = proc.output(["git", "ls-remote", url, ref, f"refs/tags/{ref}^{{}}"], error=LockError,
                      what=f"git ls-remote {url} {ref}")
    shas = [line.split()[0] for line in out.splitlines() if line.strip()]
    if not shas:
        where = f"{where}.ref: " if where else ""
        raise LockError(f"{where}{url} has no branch or tag named {ref!r}; fix the ref (a branch, a tag "
                        "or a full 40-character commit sha)")
    return shas[-1]  # a peeled tag (^{}) is listed last and names the commit


def _entry(stack: Stack, *key: str) -> str:
    """``<file>:<line>: <key>``: the entry the stack takes for ``key`` (``Stack.locate``)."""
    where, found = stack.locate(key)
    return f"{where}: {'.'.join(map(str, found))}"


def _pip_entry(stack: Stack, name: str) -> str:
    """``<stack file>:<line>: pip.dependencies.<name>``, the variant's entry where it overrides the base one."""
    return _entry(stack, "pip", "dependencies", name)


def _pip_requirements(stack: Stack, site: Site) -> list[str]:
    """PEP 508 lines for pip; a git dependency is pinned to the commit its ref names today."""
    lines = []
    for name, spec in stack.pip:
        if isinstance(spec, PipGit):
            url = site.git_url(spec.git)
            sub = f"#subdirectory={spec.subdirectory}" if spec.subdirectory else ""
            # pip's "name @ git+file://" parsing differs between versions; the #egg= form works in all.
            commit = _git_commit(url, spec.ref, _pip_entry(stack, name))
            lines.append(f"git+{url}@{commit}#egg={name}{'&' + sub[1:] if sub else ''}")
        else:
            lines.append(f"{name}{spec if spec not in ('', '*') else ''}")
    return lines


def _explain_pip_unresolvable(stack: Stack, site: Site, text: str) -> str | None:
    """pip found no version of one of the stack's pip dependencies: one line naming its stack-file
    entry, where pip looked and what is there; None for any other failure (pip's own words stay)."""
    from packaging.utils import canonicalize_name

    found = re.search(r"No matching distribution found for (\S+)(?: \(from ([^)]+)\))?", text)
    if found is None:
        return None
    wanted = re.match(r"[A-Za-z0-9._-]+", found.group(2) or found.group(1))
    names = {canonicalize_name(n): n for n, _ in stack.pip}
    name = names.get(canonicalize_name(wanted.group(0))) if wanted else None
    if name is None:
        return None
    versions = re.search(rf"requirement {re.escape(found.group(1))} .*?\(from versions: ([^)]*)\)", text)
    there = f" (versions there: {versions.group(1)})" if versions else ""
    if site.pip_wheelhouse is not None:
        where, fix = f"the site's wheelhouse {site.pip_wheelhouse}", "add its wheel to the wheelhouse"
    else:
        where, fix = f"the index {site.pip_index_url or PYPI_INDEX}", "check that the index carries it"
    if found.group(2):  # a requirement of the stack's pip package, found neither in conda nor in pip
        required = re.match(r"[A-Za-z0-9._-]+", found.group(1))
        fix = (f"add {required.group(0) if required else found.group(1)} to [dependencies] (conda), "
               f"or {fix}")
        what = f"needs {found.group(1)}, which neither the conda packages nor {where} provide{there}"
    else:
        what = f"no version of {name} in {where} matches {found.group(1)!r}{there}"
        fix = f"fix the name or the version, or {fix}"
    return f"{_pip_entry(stack, name)}: {what}; {fix}"


def _explain_wheelhouse(site: Site, served: str, text: str) -> str | None:
    """pip was sent (at ``served``, the wheelhouse over http) to a file the wheelhouse's index lists
    but the wheelhouse lacks or holds with other bytes: one line naming the file, as for a conda
    mirror; None for any other failure."""
    import urllib.parse

    at = re.escape(served)
    missing = re.search(rf"HTTP error 404 while getting {at}/([^\s#]+)", text)
    changed = re.search(rf"{at}/([^\s#]+)#\S*:\s+Expected sha256 (\w+)\s+Got\s+(\w+)", text)
    if missing is not None:
        filename = urllib.parse.unquote(missing.group(1))
        what = f"the site's wheelhouse {site.pip_wheelhouse} has no {filename}, which its index still lists"
    elif changed is not None:
        filename = urllib.parse.unquote(changed.group(1))
        what = f"{site.pip_wheelhouse}/{filename} has sha256 {changed.group(3)}, its index says {changed.group(2)}"
    else:
        return None
    project = filename.rsplit("/", 1)[-1].split("-", 1)[0].replace("_", "-").lower()
    return f"{project}: {what}; restore the file in the wheelhouse or rebuild the wheelhouse"


def _stub_distributions(conda_locked: dict[str, Any], directory: Path) -> None:
    """Make the conda side's Python packages look installed to pip (name and version only).

    pip then resolves only what conda does not provide, exactly as it would in the
    finished environment, where these packages are installed by conda.
    """
    from packaging.utils import canonicalize_name

    mapping = json.loads(PYPI_MAPPING.read_text())
    by_conda = {entry["conda_name"]: entry["pypi_name"] for entry in mapping.values()}
    for dep in conda_locked.values():
        if "python" not in dep.dependencies or dep.name == "python":
            continue
        name = canonicalize_name(by_conda.get(dep.name, dep.name))
        info = directory / f"{name.replace('-', '_')}-{dep.version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {dep.version}\n")
        (info / "INSTALLER").write_text("conda\n")


def _build_tools(directory: Path) -> Path:
    """A directory exposing this interpreter's pip, setuptools and wheel to the resolver.

    On ``PYTHONPATH`` it comes before the resolver virtualenv's own packages, so the pip
    that resolves is this environment's (``--platform`` with ``--dry-run`` needs a recent
    one; ``venv`` brings the interpreter's bundled pip). Resolving a git dependency builds
    its metadata, which needs the build backend; an offline site's index need not carry it.
    """
    import importlib.util

    directory.mkdir(parents=True, exist_ok=True)
    for module in ("pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "packaging"):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        target = directory / source.name
        if not target.exists():
            target.symlink_to(source)
    # wheel's bdist_wheel command is found through its distribution's entry points.
    from importlib import metadata

    for dist_name in ("setuptools", "wheel"):
        try:
            info = Path(str(metadata.distribution(dist_name)._path))  # type: ignore[attr-defined]
        except metadata.PackageNotFoundError:
            continue
        if not (directory / info.name).exists():
            (directory / info.name).symlink_to(info)
    return directory


def _resolver_python(cache: Path, python_version: str) -> Path:
    """A bare virtualenv (pip and setuptools only) whose interpreter matches the stack's Python."""
    import sys

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != python_version:
        raise LockError(f"pip dependencies are resolved with Python {here}, but the stack locks Python "
                        f"{python_version}; run the lock with a Python {python_version} interpreter")
    venv = cache / "pip-resolver" / here
    python = venv / "bin" / "python"
    if not python.exists():
        proc.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--clear", str(venv)],
                 error=LockError, what="creating the pip resolver's virtualenv")
    return python


_WHEEL_ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "linux-ppc64le": "ppc64le"}


def target_machine(platform: str) -> str:
    """A conda platform -> the ``platform_machine`` of its hosts (wheel tags and pip markers)."""
    arch = _WHEEL_ARCH.get(platform)
    if arch is None:
        raise LockError(f"pip dependencies cannot be locked for platform {platform!r} "
                        f"(pip platforms known: {', '.join(sorted(_WHEEL_ARCH))})")
    return arch


# How the resolver runs pip: ``platform.machine()`` answers the target's machine before pip
# starts. ``--platform`` only chooses wheel tags; pip evaluates environment markers
# (``platform_machine == "x86_64"``) against its own process, which would resolve an aarch64
# lock as on the x86_64 machine that makes it. Its marker environment is computed once, on
# first use, from ``platform.machine()``; a git dependency's setup.py run under it sees the
# target too.
PIP_FOR_TARGET = ("import platform, sys; machine = sys.argv.pop(1); platform.machine = lambda: machine; "
                  "from pip._internal.cli.main import main; sys.exit(main())")


def applies_on(requirement: Any, platform: str) -> bool:
    """Whether a ``Requires-Dist`` requirement holds on ``platform``'s hosts, extras off."""
    if requirement.marker is None:
        return True
    return bool(requirement.marker.evaluate({"platform_machine": target_machine(platform), "extra": ""}))


def pip_target_options(platform: str, python_version: str, virtual: dict[str, str]) -> list[str]:
    """pip options that make it choose wheels for ``platform``, not for the machine locking.

    The wheel tags are those the target accepts: manylinux up to the glibc of its
    ``__glibc`` virtual package, CPython ``python_version``'s ABI, abi3 and pure wheels;
    binary wheels only (pip cannot build an sdist for another machine). Pure.
    """
    arch = target_machine(platform)
    glibc = virtual.get("__glibc", "2.17").partition("=")[0]
    major, _, minor = glibc.partition(".")
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(int(minor or 0), 16, -1)] if major == "2" else []
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += ["manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
    tags.append(f"linux_{arch}")
    abi = "cp" + python_version.replace(".", "")
    options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
               "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in tags:
        options += ["--platform", tag]
    return options


def _canonical_pip_url(item: dict[str, Any], site: Site, from_site: bool) -> str:
    """The URL a lockfile records for one resolved pip item: never the site's mirror or server."""
    from packaging.utils import canonicalize_name

    info = item["download_info"]
    url = str(info["url"])
    if "vcs_info" in info:
        return f"git+{site.canonical_git_url(url)}@{info['vcs_info']['commit_id']}"
    if from_site:
        return f"{PYPI_INDEX}/{canonicalize_name(item['metadata']['name'])}/{url.rsplit('/', 1)[-1].split('#')[0]}"
    return url


def _confined(site: Site, work: Path, reads: Iterable[Path]) -> list[str]:
    """The bubblewrap prefix pip's resolver runs under. Resolving a git dependency runs its build
    backend (``setup.py``): the stack's code, which may write only ``work`` (the resolver's stubs,
    tools, report and home) and a ``/tmp`` of its own, and never sees the site's signing keys (a
    tmpfs over their directory). ``reads``: what it reads of the host's that may lie below the
    host's ``/tmp`` (a cache there), which the private root would hide."""
    from .sandbox import Mount, Tmpfs, private_root_argv

    if proc.which("bwrap") is None:
        raise LockError("bubblewrap (bwrap) is not installed: run scripts/setup (pip's resolver runs in it)")
    keys = site.signing_keys
    # pip clones a git dependency into /tmp, and downloads there a wheel whose index serves no
    # metadata file of its own (gigabytes for a large one): a directory on disk rather than a tmpfs,
    # removed with ``work``.
    tmp = work / "tmp"
    tmp.mkdir()
    # ``work`` is under the host's temporary directory, most often /tmp itself.
    mounts = [Mount(work, str(work)), *(Mount(path, str(path), read_only=True) for path in sorted(set(reads)))]
    return private_root_argv(mounts, tmpfs=[Tmpfs(str(keys), 1 << 16)] if keys is not None and keys.is_dir() else [],
                             tmp=tmp)


def _local_sources(stack: Stack, site: Site) -> list[Path]:
    """The local git repositories (a site's git mirror) and the local index pip reads from."""
    urls = [site.git_url(spec.git) for _, spec in stack.pip if isinstance(spec, PipGit)]
    return [path for url in [*urls, site.pip_index_url or ""] if (path := local_file(url)) and path.exists()]


def _solve_pip(stack: Stack, site: Site, conda_locked: dict[str, Any], platform: str) -> list[Any]:
    """Resolve pip dependencies for ``platform`` with pip's own resolver (``--dry-run --report``)."""
    if not stack.pip:
        return []
    import tempfile

    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency
    from packaging.requirements import Requirement

    python = conda_locked.get("python")
    if python is None:
        raise LockError(f"{stack.source}: [pip.dependencies] needs python among the conda dependencies")
    python_version = ".".join(python.version.split(".")[:2])
    resolver = _resolver_python(site.cache, python_version)
    requirements = _pip_requirements(stack, site)
    target = pip_target_options(platform, python_version, stack.lock.virtual_packages_for(platform))
    with tempfile.TemporaryDirectory(prefix="swstack-pip-") as tmp, contextlib.ExitStack() as ctx:
        stubs = Path(tmp) / "site"
        _stub_distributions(conda_locked, stubs)
        argv = [str(resolver), "-c", PIP_FOR_TARGET, target_machine(platform), "install", "--dry-run", "--quiet",
                "--ignore-requires-python", "--disable-pip-version-check", "--no-build-isolation",
                "--report", f"{tmp}/report.json", *target]
        from_site = False
        served = None
        if site.pip_wheelhouse is not None:
            if not (site.pip_wheelhouse / "simple").is_dir():
                raise LockError(f"{site.pip_wheelhouse}: a wheelhouse needs a PEP 503 'simple/' index "
                                "(the offline channel's `doit channel` writes one)")
            served = ctx.enter_context(_serve_directory(site.pip_wheelhouse))
            argv += ["--index-url", f"{served}/simple/"]
            from_site = True
        elif site.pip_index_url:
            argv += ["--index-url", site.pip_index_url]
            from_site = site.pip_index_url.rstrip("/") != PYPI_INDEX
        # pip reads its config from the environment: only the site's index counts.
        tools = _build_tools(Path(tmp) / "tools")
        # The resolver's virtualenv (in the site's cache), the tools' sources, the local sources.
        reads = [resolver.parent.parent, *(Path(os.readlink(link)) for link in tools.iterdir()),
                 *_local_sources(stack, site)]
        env = {"PYTHONPATH": f"{stubs}:{tools}", "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1",
               "PATH": "/usr/bin:/bin", "HOME": tmp}
        try:
            proc.run([*_confined(site, Path(tmp), reads), *argv, *requirements], env=env, error=LockError,
                     what=f"resolving the pip dependencies of {stack.stack_id} for {platform}")
        except LockError as exc:
            why = (_explain_wheelhouse(site, served, str(exc)) if served else None) or _explain_pip_unresolvable(
                stack, site, str(exc))
            raise LockError(why or str(exc)) from None
        report = json.loads((Path(tmp) / "report.json").read_text())
    locked = []
    for item in report.get("install", []):
        meta = item["metadata"]
        info = item["download_info"]
        sha256 = None
        if "vcs_info" not in info:
            sha256 = info.get("archive_info", {}).get("hashes", {}).get("sha256")
            if not sha256:
                raise LockError(f"{info['url']}: the index gives no sha256 for this file; pip dependencies "
                                "are hash-checked")
        depends = {}
        for text in meta.get("requires_dist", []) or []:
            requirement = Requirement(text)
            if applies_on(requirement, platform):
                depends[requirement.name] = str(requirement.specifier) or "*"
        locked.append(LockedDependency(
            name=meta["name"].lower(), version=meta["version"], manager="pip", platform=platform,
            dependencies=depends, url=_canonical_pip_url(item, site, from_site), hash=HashModel(sha256=sha256),
            categories={"main"},
        ))
    return locked


# The digest of the locked packages, beside conda-lock's hash of the inputs: the inputs say
# whether the lock is current, this says whether the file still holds what was locked.
PACKAGES_KEY = "swstack.packages_sha256"


def packages_digest(packages: Iterable[Any]) -> str:
    """sha256 over what installs: each package's platform, manager, name, version, URL and sha256."""
    import hashlib
    import json

    rows = sorted([p.platform, p.manager, p.name, p.version, p.url, p.hash.sha256 or ""] for p in packages)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def edited(lockfile: Any, path: Path) -> str | None:
    """Why the lockfile no longer holds what was locked (edited by hand), or None. The digest
    is part of what ``lock`` writes: a lockfile without it was edited too (its line deleted)."""
    recorded = (lockfile.metadata.custom_metadata or {}).get(PACKAGES_KEY)
    if not recorded:
        return f"{path}: it records no {PACKAGES_KEY} (the digest of its packages); lock again, never edit a lockfile"
    if recorded != packages_digest(lockfile.package):
        return (
            f"{path}: its packages are not the ones locked (a URL, version or sha256 was edited by hand); "
            f"lock again, never edit a lockfile"
        )
    return None


def _write(plan: LockPlan, packages: list[Any], channel_names: tuple[str, ...]) -> None:
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v2prelim.models import Lockfile, LockMeta, TimeMeta
    from conda_lock.models.channel import Channel

    sources = []
    if plan.stack.source is not None:
        sources.append(os.path.relpath(plan.stack.source.resolve(), plan.path.parent.resolve()))
    metadata = LockMeta(
        content_hash=plan.content_hash,
        channels=[Channel.from_string(url) for url in plan.channels],
        platforms=list(plan.platforms),
        sources=sources,
        time_metadata=TimeMeta.create(),
        custom_metadata={
            "swstack.stack": plan.stack.name,
            "swstack.variant": plan.stack.variant,
            "swstack.channels": ",".join(channel_names),
            "swstack.prefix": plan.stack.prefix,
            PACKAGES_KEY: packages_digest(packages),
        },
    )
    lockfile = Lockfile(package=packages, metadata=metadata)
    with atomic_output(plan.path) as partial:
        write_conda_lock_file(lockfile, partial, metadata_choices=set(), include_help_text=True)
        # The help text names the file it was written to: the final name, not the partial one.
        partial.write_text(_swstack_help(partial.read_text().replace(partial.name, plan.path.name), plan.stack))


def _swstack_help(text: str, stack: Stack) -> str:
    """conda-lock's help text, with its commands that re-solve (``conda-lock -f <stack file>``,
    ``conda-lock lock --update``, which cannot read a stack file) replaced by swstack's."""
    head, found, rest = text.partition("# To update a single package")
    if not found:
        return text
    body = rest[rest.index("\nversion:") + 1:]
    head = head.replace("was generated by conda-lock (https://github.com/conda/conda-lock)",
                        "was generated by swstack in conda-lock's format (https://github.com/conda/conda-lock)")
    return (f"{head}# To re-solve it, after changing the stack file (conda-lock's own `lock` cannot read one):\n"
            f"#     {stack.doit_command('lock')}\n{body}")


def _refuse_same_lock(plan: LockPlan, packages: list[Any], reason: str) -> None:
    """A solve that gives back the packages the current lockfile holds, for the same inputs:
    the lock was stale only because the site's local mirror lacks a file its own index still
    lists. Writing would change nothing but the timestamp (and every build would do it again);
    the mirror is what needs fixing, so say so and leave the lockfile alone."""
    try:
        previous = read_lockfile(plan.path)
    except LockError:
        return
    recorded = (previous.metadata.custom_metadata or {}).get(PACKAGES_KEY)
    if (previous.metadata.content_hash == plan.content_hash and recorded == packages_digest(previous.package)
            and recorded == packages_digest(packages)):
        raise LockError(
            f"{plan.path}: {reason}; the mirror's index still lists that file, so a new lock names the same "
            "packages: restore the file in the mirror or rebuild the mirror; the lockfile is left as it is"
        )


@dataclass(frozen=True)
class LockResult:
    path: Path
    changed: bool
    packages: int
    reason: str | None = None


def lock(stack: Stack, site: Site, project: Path, *, check: bool = False, force: bool = False) -> LockResult:
    """Write the lockfile if it is stale (or ``force``); with ``check`` only report staleness."""
    plan = plan_lock(stack, site, project)
    # A mirror directory that is not there is the site's problem, not the lockfile's: say so
    # before staleness would blame every package the mirror lacks.
    _check_local_channels(plan)
    reason = "forced" if force else staleness(plan)
    if reason is not None:
        # The messages below name the lockfile once: a reason that names it too drops it.
        reason = reason.removeprefix(f"{plan.path}: ")
    if reason is None:
        log.info(f"{plan.path}: up to date")
        return LockResult(plan.path, changed=False, packages=-1)
    if check:
        raise StaleLockError(
            f"{plan.path} is stale: {reason}.\n"
            f"Run `{stack.doit_command('lock')}` and commit the result."
        )
    log.step(f"locking {stack.stack_id} ({reason})")
    packages: list[Any] = []
    for platform in plan.platforms:
        records = _solve_conda(plan, platform, site.cache)
        conda = [_conda_locked(r, platform, plan) for r in records]
        log.info(f"  {platform}: {len(conda)} conda packages")
        pip = _solve_pip(stack, site, {d.name: d for d in conda}, platform)
        if pip:
            log.info(f"  {platform}: {len(pip)} pip packages")
        packages += conda + pip
    if not force:
        _refuse_same_lock(plan, packages, reason)
    _write(plan, packages, stack.channels)
    log.info(f"wrote {plan.path}")
    return LockResult(plan.path, changed=True, packages=len(packages), reason=reason)


def lock_time(path: Path) -> int:
    """The lockfile's creation time as a unix timestamp (packing clamps mtimes to it)."""
    created = read_lockfile(path).metadata.time_metadata
    if created is None:
        return 0
    when = dt.datetime.strptime(created.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())
