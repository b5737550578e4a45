"""Lockfile -> installed prefix at its production path -> packed artifact.

``plan_build`` reads the lockfile and decides everything (paths, mounts, the install plan,
the version); ``run_build`` does it: an empty build directory is bind-mounted at the
prefix's parent (``/data0/sw``) inside a sandbox, ``swstack.install`` fills it there, the
audit checks that no foreign prefix is left, and ``swstack.pack`` packs it, still inside,
where conda-pack sees the real prefix. The machine's own ``/data0`` is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, artifact, log, proc
from .attest import attest_artifact
from .audit import audit
from .errors import BuildError, PackError, StepFailed
from .fsutil import atomic_write_text, exclusive_lock, sha256_file
from .install import CondaItem, InstallPlan, KernelItem, PipItem, check_local_file
from .lock import PYPI_INDEX, lock, lock_time, lockfile_path, pip_index_file, read_lockfile
from .manifest import Manifest, check_version, host_platform
from .pack import next_version
from .sandbox import DockerSandbox, Mount, Sandbox, open_sandbox
from .site import Site
from .spec import Stack

WORK = "/opt/swstack/work"
ARTIFACTS = "/opt/swstack/artifacts"
EMPTY = "empty"  # a directory of the work dir, mounted over the site's signing keys
KERNEL_SPECS = "/opt/swstack/kernel-specs"


@dataclass(frozen=True)
class BuildPlan:
    stack: Stack
    platform: str
    lockfile: Path
    lockfile_sha256: str
    build_dir: Path  # host directory mounted at the prefix's parent
    work_dir: Path  # install plan and pip locks, mounted read-only
    artifacts: Path
    version: str
    source_date_epoch: int
    install: InstallPlan
    mounts: tuple[Mount, ...]
    network: bool
    pip_locks: dict[str, dict[str, Any]]

    @property
    def host_prefix(self) -> Path:
        return self.build_dir / Path(self.stack.prefix).name

    @property
    def artifact_dir(self) -> Path:
        return self.artifacts / self.stack.stack_id / self.version

    @property
    def install_mounts(self) -> tuple[Mount, ...]:
        """The install step's mounts: all but the artifacts directory. That step runs the stack's own
        code (a git dependency's build), which must not reach the artifacts of other stacks and
        versions (their tarballs and manifests, which publish and sign send out); only pack writes there."""
        return tuple(m for m in self.mounts if m.target != ARTIFACTS)


# ---- planning (pure but for reading the lockfile) ------------------------------------------------------


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url.removeprefix("git+"))
    if parsed.scheme != "file":
        return None
    path = urllib.parse.unquote(parsed.path)
    return Path(path.split("@")[0] if url.startswith("git+") else path)


def local_roots(urls: list[str]) -> list[Path]:
    """The fewest directories to mount so that every file:// URL resolves inside the sandbox."""
    dirs = set()
    for url in urls:
        path = _local_path(url)
        if path is None:
            continue
        if url.startswith("git+"):
            dirs.add(path)
        else:
            # a conda channel root is the parent of the subdir; a wheelhouse file's parent suffices
            dirs.add(path.parent.parent if url.endswith((".conda", ".tar.bz2")) else path.parent)
    roots: list[Path] = []
    for d in sorted(dirs, key=lambda p: len(p.parts)):
        if not any(d.is_relative_to(r) for r in roots):
            roots.append(d)
    return roots


def conda_item(package: Any, site: Site) -> CondaItem:
    """A locked conda package -> what the installer fetches: the site's mirror of its canonical URL."""
    fetch = site.fetch_url(package.url)
    return CondaItem(package.name, package.url, package.hash.sha256, package.hash.md5,
                     fetch="" if fetch == package.url else fetch)


def pip_item(package: Any, site: Site) -> PipItem:
    """A locked pip package -> how the installer gets it on this site.

    An index-relative name (``https://pypi.org/simple/<project>/<file>``) is the site's
    wheelhouse file, else ``name==version`` from the site's index (or PyPI); a git URL goes
    through the site's git mirror; any other URL is fetched as it is.
    """
    url = package.url
    if url.startswith("git+"):
        repo, _, commit = url.removeprefix("git+").rpartition("@")
        return PipItem(package.name, url, None, fetch=f"git+{site.git_url(repo)}@{commit}", version=package.version)
    named = pip_index_file(url)
    if named is None:
        return PipItem(package.name, url, package.hash.sha256, fetch=url, version=package.version)
    local = site.pip_file_url(*named)
    if local is not None:
        return PipItem(package.name, url, package.hash.sha256, fetch=local, version=package.version)
    return PipItem(package.name, url, package.hash.sha256, version=package.version,
                   index=site.pip_index_url or PYPI_INDEX)


def existing_versions(artifacts: Path, stack_id: str, *, complete: bool = False) -> list[str]:
    """The version directories of a stack (``complete``: only those holding a manifest.json)."""
    stack_dir = artifacts / stack_id
    if not stack_dir.is_dir():
        return []
    dirs = [p for p in stack_dir.iterdir() if p.is_dir()]
    return sorted(p.name for p in dirs if not complete or (p / artifact.MANIFEST_NAME).is_file())


def latest_manifest(artifacts: Path, stack_id: str, platform: str) -> Manifest | None:
    """The newest complete artifact (its manifest.json exists) of a stack for a platform.

    A manifest that cannot be read is skipped with a warning: the artifact it belonged to
    cannot be used, and the next build makes a new one.
    """
    found = []
    for version in existing_versions(artifacts, stack_id):
        path = artifacts / stack_id / version / artifact.MANIFEST_NAME
        if path.is_file():
            try:
                manifest = artifact.load_manifest(path)
            except artifact.ArtifactError as exc:
                log.warn(f"unreadable manifest: {exc}; that artifact is ignored")
                continue
            if manifest.platform == platform:
                found.append((path.stat().st_mtime, manifest))
    return max(found, key=lambda item: item[0])[1] if found else None


def artifact_manifest(artifacts: Path, stack_id: str, platform: str, version: str | None = None) -> Manifest | None:
    """The manifest of ``version``'s artifact (None: the newest) of a stack for a platform, or
    None when there is no such complete artifact (an unreadable manifest warns, as in ``latest_manifest``)."""
    if version is None:
        return latest_manifest(artifacts, stack_id, platform)
    path = artifacts / stack_id / version / artifact.MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = artifact.load_manifest(path)
    except artifact.ArtifactError as exc:
        log.warn(f"unreadable manifest: {exc}; that artifact is ignored")
        return None
    return manifest if manifest.platform == platform else None


def why_not_current(stack: Stack, site: Site, project: Path, platform: str | None = None, *,
                    version: str | None = None) -> str | None:
    """Why ``stack`` needs a build, or None when its newest artifact (``version``: that version's)
    is whole and from today's inputs."""
    return _judge_artifact(stack, site, project, platform, version)[1]


def current_artifact(stack: Stack, site: Site, project: Path, platform: str | None = None, *,
                     version: str | None = None) -> Path | None:
    """doit's uptodate: the directory of the newest artifact (``version``: that version's) when it is
    whole and was built from today's lockfile and stack file, its manifest read once. When it is
    not, None, and one line says why (the build that follows fixes it, or refuses a version built
    from other inputs)."""
    manifest, reason = _judge_artifact(stack, site, project, platform, version)
    if reason is not None or manifest is None:
        log.info(f"build:{stack.stack_id} is not up to date: {reason}")
        return None
    return site.artifacts / stack.stack_id / manifest.version


def _judge_artifact(stack: Stack, site: Site, project: Path, platform: str | None,
                    version: str | None) -> tuple[Manifest | None, str | None]:
    """The manifest of the artifact a build would reuse (None: there is none) and why it cannot be
    reused (None: it can)."""
    path = lockfile_path(stack, project)
    if not path.is_file():
        return None, f"{path} does not exist yet"
    manifest = artifact_manifest(site.artifacts, stack.stack_id, platform or host_platform(), version)
    if manifest is None:
        return None, f"no artifact of {stack.stack_id}{f' {version}' if version else ''} in {site.artifacts}"
    if manifest.lockfile_sha256 != sha256_file(path):
        return manifest, f"{stack.stack_id} {manifest.version} was built from another {path.name}"
    if manifest.stackfile_sha256 != stack.source_hash:
        return manifest, f"{stack.stack_id} {manifest.version} was built from another version of {stack.source}"
    directory = site.artifacts / stack.stack_id / manifest.version
    if not manifest.attestations:
        # pack writes manifest.json last, and the build then adds the SBOM and provenance to it:
        # a build stopped between the two left an artifact that looks finished but is not.
        stopped = "lists no SBOM or provenance (its build stopped after packing)"
        return manifest, f"{directory / artifact.MANIFEST_NAME} {stopped}"
    return manifest, artifact.damage(directory, manifest)


def build_dir_for(stack: Stack, site: Site) -> Path:
    """The host directory mounted at the prefix's parent while ``stack`` builds."""
    return site.cache / "build" / stack.stack_id / "sw"


def plan_build(stack: Stack, site: Site, project: Path, *, version: str | None = None,
               platform: str | None = None, today: datetime | None = None) -> BuildPlan:
    platform = platform or host_platform()
    if platform not in stack.platforms:
        raise BuildError(f"{stack.source}: stack {stack.name} does not list platform {platform} (it lists "
                         f"{', '.join(stack.platforms)}); builds run on the platform they target")
    path = lockfile_path(stack, project)
    lockfile = read_lockfile(path)
    packages = [p for p in lockfile.package if p.platform == platform]
    conda = [conda_item(p, site) for p in packages if p.manager == "conda"]
    pip = [pip_item(p, site) for p in packages if p.manager == "pip"]
    for item in conda:
        check_local_file(item.name, item.url, item.source, item.sha256)
    build_dir = build_dir_for(stack, site)
    work_dir = site.cache / "build" / stack.stack_id / "work"
    package_cache = site.cache / "pkgs"
    spec_dirs = []
    mounts = [Mount(build_dir, os.path.dirname(stack.prefix)), Mount(work_dir, WORK, read_only=True),
              Mount(package_cache, str(package_cache)), Mount(site.artifacts, ARTIFACTS)]
    for i, rel in enumerate(stack.kernel_spec_dirs):
        source = (stack.source.parent / rel).resolve() if stack.source else Path(rel)
        if not source.is_dir():
            raise BuildError(f"{stack.source}: kernel_spec_dirs: {rel!r} is not a directory ({source})")
        mounts.append(Mount(source, f"{KERNEL_SPECS}/{i}", read_only=True))
        spec_dirs.append(f"{KERNEL_SPECS}/{i}")
    urls = [c.source for c in conda] + [p.fetch or p.url for p in pip if p.fetch or not p.index]
    mounts += [Mount(root, str(root), read_only=True) for root in local_roots(urls)]
    if site.signing_keys is not None and site.signing_keys.is_dir():
        # The steps run the stack's code (a git dependency's build): inside, the keys' directory is empty.
        mounts.append(Mount(work_dir / EMPTY, str(site.signing_keys), read_only=True))
    install = InstallPlan(
        prefix=stack.prefix,
        platform=platform,
        conda=conda,
        pip=pip,
        kernels=[KernelItem(k.name, k.display_name, k.language, list(k.argv), dict(k.env), k.interrupt_mode)
                 for k in stack.kernels],
        kernel_spec_dirs=spec_dirs,
        owner=numeric_owner(stack) if stack.owner else None,
        package_cache=str(package_cache),
        extensions=list(stack.jupyterlab.extensions),
    )
    chosen = check_version(version, BuildError) if version is not None else next_version(
        existing_versions(site.artifacts, stack.stack_id), (today or datetime.now(timezone.utc)).date())
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return BuildPlan(
        stack=stack,
        platform=platform,
        lockfile=path,
        lockfile_sha256=sha256_file(path),
        build_dir=build_dir,
        work_dir=work_dir,
        artifacts=site.artifacts,
        version=chosen,
        source_date_epoch=int(epoch) if epoch and epoch.isdigit() else lock_time(path),
        install=install,
        mounts=tuple(mounts),
        network=any(_local_path(u) is None for u in urls) or any(p.index for p in pip),
        pip_locks={p.name: {"url": p.url, "sha256": p.sha256 or ""} for p in pip},
    )


# ---- doing ---------------------------------------------------------------------------------------------


def _git_commit(project: Path) -> str:
    try:
        return proc.output(["git", "-C", str(project), "rev-parse", "HEAD"], check=True)
    except Exception:
        return ""


def _tools() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    tools = [f"swstack={__version__}"]
    for dist in ("py-rattler", "conda-lock"):
        with contextlib.suppress(PackageNotFoundError):
            tools.append(f"{dist}={version(dist)}")
    return tools


def _fresh_dir(path: Path) -> None:
    """Make ``path`` an empty directory, or fail in one line saying what is in the way."""
    try:
        _remove_tree(path)
        path.mkdir(parents=True)
    except OSError as exc:
        raise BuildError(
            f"cannot empty {path}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
            + "; stop whatever still writes there (a build killed before the sandbox ended its processes), "
            "or remove the directory by hand, then build again"
        ) from None


def _remove_tree(path: Path) -> None:
    """``rmtree``, tried twice: a process still writing into the tree (ENOTEMPTY) may have ended by then."""
    for attempt in (1, 2):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 2:
                raise
            time.sleep(1)


def make_artifacts_dir(path: Path) -> None:
    """The site's artifacts directory, made before the build: the site file names it, so a path
    that cannot be a directory is that file's to fix, said before minutes of installing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(
            f"artifacts directory {path}: {exc.strerror or exc}; set the site file's `artifacts` "
            "to a directory this user can write"
        ) from None


@contextlib.contextmanager
def own_errors(plan: BuildPlan) -> Iterator[None]:
    """A step that failed with its own error (install's ``BuildError``, pack's ``PackError``: its
    exit code, its last line ``error: ...``) fails the build with that line and that code, paths
    (the artifacts and kernel spec directories) named as on this machine; the tail of its output,
    already streamed above, is not repeated."""
    try:
        yield
    except StepFailed as exc:
        own = {BuildError.exit_code: BuildError, PackError.exit_code: PackError}.get(exc.code)
        if own is None or not exc.last_line.startswith("error: "):
            raise  # a crash or a sandbox failure: the tail is what there is to read
        message = exc.last_line.removeprefix("error: ").replace(ARTIFACTS, str(plan.artifacts))
        for mount in plan.mounts:  # a kernel spec directory, as the stack file names it
            if mount.target.startswith(KERNEL_SPECS + "/"):
                message = message.replace(mount.target + "/", f"{mount.source}/")
        raise own(message) from None


def install_in_sandbox(plan: BuildPlan, sandbox: Sandbox) -> None:
    make_artifacts_dir(plan.artifacts)
    _fresh_dir(plan.build_dir)  # a build always starts from an empty prefix (the seed's --clean)
    _fresh_dir(plan.work_dir)
    (plan.work_dir / EMPTY).mkdir()
    Path(plan.install.package_cache).mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.work_dir / "install.json", plan.install.to_json())
    atomic_write_text(plan.work_dir / "pip-locks.json", json.dumps(plan.pip_locks, indent=1))
    log.step(f"install {plan.stack.stack_id} at {plan.stack.prefix} ({sandbox.name} sandbox, "
             f"{len(plan.install.conda)} conda + {len(plan.install.pip)} pip packages)")
    with own_errors(plan):
        sandbox.run([*sandbox.python(), "-m", "swstack.install", f"{WORK}/install.json"],
                    mounts=plan.install_mounts, network=plan.network)


def pack_in_sandbox(plan: BuildPlan, sandbox: Sandbox, kernels: list[str], project: Path) -> Manifest:
    stack = plan.stack
    argv = [*sandbox.python(), "-m", "swstack.pack", "--prefix", stack.prefix, "--out", ARTIFACTS,
            "--stack", stack.name, "--variant", stack.variant, "--default-variant", stack.default_variant,
            "--version", plan.version,
            "--platform", plan.platform, "--format", stack.pack.format, "--threads", str(stack.pack.threads),
            "--source-date-epoch", str(plan.source_date_epoch),
            "--lockfile-sha256", plan.lockfile_sha256, "--stackfile-sha256", stack.source_hash,
            "--git-commit", _git_commit(project), "--pip-locks", f"{WORK}/pip-locks.json", "--overwrite",
            # The path pack would print is the sandbox's mount point; the build names the real one.
            "--quiet"]
    if stack.pack.level:
        argv += ["--level", str(stack.pack.level)]
    if plan.install.owner:
        argv += ["--owner", plan.install.owner]
    for tool in _tools():
        argv += ["--tool", tool]
    for kernel in kernels:
        argv += ["--kernel", kernel]
    with own_errors(plan):
        sandbox.run(argv, mounts=plan.mounts, network=False)
    manifest_path = plan.artifact_dir / "manifest.json"
    if not manifest_path.is_file():
        raise BuildError(f"packing finished without writing {manifest_path}")
    return Manifest.load(manifest_path)


def numeric_owner(stack: Stack) -> str:
    """The stack's ``owner`` as ``uid:gid``, its names resolved on the build machine: tar headers carry
    numbers, and the sandbox (a container has its own user database) chowns by them. A name this
    machine does not know fails here, in one line, before anything is installed."""
    import grp
    import pwd

    assert stack.owner is not None
    ids = []
    for kind, name, lookup in (("user", stack.owner.user, pwd.getpwnam), ("group", stack.owner.group, grp.getgrnam)):
        if name.isdigit():
            ids.append(name)
            continue
        try:
            entry = lookup(name)
        except KeyError:
            raise BuildError(
                f"{stack.where(('owner',))}: owner: no {kind} {name!r} on this machine, which builds the tree "
                f"and writes its owner as numbers; create the {kind} here, or give numeric ids (owner = \"899:899\")"
            ) from None
        ids.append(str(entry.pw_uid if isinstance(entry, pwd.struct_passwd) else entry.gr_gid))
    return ":".join(ids)


def installed_kernels(host_prefix: Path) -> list[str]:
    kernels = host_prefix / "share" / "jupyter" / "kernels"
    return sorted(p.name for p in kernels.iterdir() if (p / "kernel.json").is_file()) if kernels.is_dir() else []


def site_sandbox(site: Site) -> Sandbox:
    """The sandbox the site asks for, its docker builder based on the site's Debian settings."""
    from .baseimage import load_base_spec

    return open_sandbox(site.sandbox, base=load_base_spec(mirror=site.debian_mirror, suite=site.debian_suite))


def builder_identity(sandbox: Sandbox) -> dict[str, str | None]:
    """The builder image and its digest for the provenance (none for the namespace sandbox)."""
    if not isinstance(sandbox, DockerSandbox):
        return {"builder_image": None, "builder_digest": None}
    return {"builder_image": sandbox.image, "builder_digest": sandbox.engine.inspect_image(sandbox.image).id}


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    artifact_dir: Path
    seconds: float


def refuse_other_build_of(plan: BuildPlan) -> None:
    """A version given again (``version=``) may be rebuilt from the same inputs, which gives
    the same bytes; from other inputs it would replace an artifact that may be pushed and
    published under that version already."""
    path = plan.artifact_dir / artifact.MANIFEST_NAME
    if not path.is_file():
        return
    remedy = "give another version=, or remove that directory to replace it"
    try:
        old = artifact.load_manifest(path)
    except artifact.ArtifactError as exc:
        # What it was built from cannot be told, so it is refused as one from other inputs
        # is, but the message names the damage rather than inputs nobody can see.
        raise BuildError(f"{plan.stack.stack_id} {plan.version} is already there, but {exc}; {remedy}") from None
    if (old.lockfile_sha256, old.stackfile_sha256) != (plan.lockfile_sha256, plan.stack.source_hash):
        raise BuildError(
            f"{plan.artifact_dir} already holds {plan.stack.stack_id} {plan.version} built from other inputs "
            f"(lockfile or stack file); {remedy}"
        )


def drop_unfinished(artifact_dir: Path) -> None:
    """Remove an artifact directory the pack did not finish (no manifest.json: pack writes
    it last), so no later step, nor the nightly's diff, takes it for an artifact."""
    if artifact_dir.is_dir() and not (artifact_dir / artifact.MANIFEST_NAME).is_file():
        shutil.rmtree(artifact_dir, ignore_errors=True)
        log.info(f"removed the unfinished {artifact_dir}")


def drop_unattested(artifact_dir: Path) -> None:
    """Remove an artifact directory whose attesting was stopped (Ctrl-C, a failure): its manifest.json,
    which attesting rewrites last, lists no SBOM or provenance yet, and image, push and publish would
    take the directory for an artifact all the same."""
    try:
        listed = artifact.load_manifest(artifact_dir / artifact.MANIFEST_NAME).attestations
    except artifact.ArtifactError:
        listed = ()
    if artifact_dir.is_dir() and not listed:
        shutil.rmtree(artifact_dir, ignore_errors=True)
        log.info(f"removed the unfinished {artifact_dir}")


def run_build(stack: Stack, site: Site, project: Path, *, version: str | None = None,
              sandbox: Sandbox | None = None, relock: bool = True) -> BuildResult:
    """Lock if stale, install in a sandbox, audit, pack. Returns the artifact's manifest."""
    started = time.monotonic()
    if relock:
        lock(stack, site, project)
    sandbox = sandbox or site_sandbox(site)
    # The build directory is shared by every checkout on the machine (it sits in the cache):
    # a second build of the same stack waits instead of emptying the first one's prefix.
    build_dir = build_dir_for(stack, site)
    with exclusive_lock(build_dir.parent / ".lock", f"build: waiting for another build of {stack.stack_id}") as waited:
        if waited and version is None and (done := current_artifact(stack, site, project)) is not None:
            # The build waited for (this checkout's, started a moment earlier) made what this one
            # would: the up-to-date check ran before the wait.
            log.info(f"{stack.stack_id}: the build waited for made {done} from the same inputs; not building again")
            return BuildResult(artifact.load_manifest(done / artifact.MANIFEST_NAME), done, time.monotonic() - started)
        plan = plan_build(stack, site, project, version=version)
        refuse_other_build_of(plan)
        install_in_sandbox(plan, sandbox)
        log.step(f"audit {plan.stack.prefix} for foreign prefixes")
        audit(plan.host_prefix, plan.stack.prefix, plan.build_dir)
        try:
            manifest = pack_in_sandbox(plan, sandbox, installed_kernels(plan.host_prefix), project)
        except BaseException:
            drop_unfinished(plan.artifact_dir)
            raise
    try:
        manifest = attest_artifact(plan.artifact_dir, **builder_identity(sandbox))
    except BaseException:
        drop_unattested(plan.artifact_dir)
        raise
    seconds = time.monotonic() - started
    log.info(f"built {manifest.stack_id} {manifest.version} in {seconds:.0f}s -> {plan.artifact_dir}")
    return BuildResult(manifest, plan.artifact_dir, seconds)
