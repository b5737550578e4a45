"""The Debian base image and the builder image, made without any registry.

Input: ``images/base/debootstrap.toml`` (suite, variant, extra packages), the apt mirror
(the machine's own by default, site-overridable), ``images/builder/Dockerfile`` and the
host's pinned versions of the builder's Python packages.
Output: images ``swstack/debian:<suite>-<key>`` and ``swstack/builder:<hash>`` in the
local engine; the reproducible rootfs tarball cached in ``cache_dir()/base/``.

Both are content-addressed, so ``ensure_builder`` does nothing when its inputs have not
changed: the base by (suite, variant, packages), the builder by a hash of its
Dockerfile, its requirements and the base it starts from.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import fsutil, log, proc
from .engine import Engine
from .errors import ImageError
from .paths import cache_dir

if sys.version_info >= (3, 11):
    from . import toml as tomllib
else:  # pragma: no cover - the build side runs on 3.11 here
    import tomli as tomllib

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"
BASE_SETTINGS = IMAGES_DIR / "base" / "debootstrap.toml"
BUILDER_DOCKERFILE = IMAGES_DIR / "builder" / "Dockerfile"

BASE_REPOSITORY = "swstack/debian"
BUILDER_REPOSITORY = "swstack/builder"
BUILDER_PYTHON = "/opt/swstack/venv/bin/python"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# The distribution's python3, which the builder's wheels must match.
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}

# What the build step imports inside the builder, pinned to the host's versions so the
# two sides agree (py-rattler's lock and cache formats in particular).
# setuptools and wheel build git pip dependencies into wheels inside the sandbox.
BUILDER_PACKAGES = ("py-rattler", "conda-pack", "zstandard", "pydantic", "packaging", "pyyaml", "setuptools", "wheel")

# Files no image needs and that only make the tarball differ from run to run.
_ROOTFS_PRUNE = (
    "dev",
    "proc",
    "sys",
    "tmp",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "var/cache/ldconfig",
    "debootstrap",
)
_DEBOOTSTRAP_STAGES = ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")
_FALLBACK_EPOCH = 1704067200  # 2024-01-01: file times in the rootfs when SOURCE_DATE_EPOCH is unset

_IMPORT_CHANGES = (
    'CMD ["/bin/bash"]',
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
)


@dataclass(frozen=True)
class BaseSpec:
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    mirror: str = DEFAULT_MIRROR

    @property
    def key(self) -> str:
        """The cache key: what decides the content, not where it is downloaded from."""
        text = json.dumps([self.suite, self.variant, sorted(self.packages)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.suite}-{self.key[:12]}"

    @property
    def tarball_name(self) -> str:
        return f"debian-{self.suite}-{self.variant}-{self.key}.tar"


@dataclass(frozen=True)
class BuilderPlan:
    base: str  # the base image reference
    dockerfile: str  # the Dockerfile's text
    requirements: tuple[str, ...]  # "name==version"
    python_version: str  # of the base's python3, which the wheels must fit
    machine: str  # x86_64, aarch64

    @property
    def tag(self) -> str:
        text = json.dumps([self.base, self.dockerfile, self.requirements, self.python_version, self.machine])
        return f"{BUILDER_REPOSITORY}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# -- planning (pure) ----------------------------------------------------------------------


def mirror_from_sources(texts: Iterable[str], suite: str) -> str | None:
    """The first ``deb`` mirror serving ``suite`` in apt sources (deb822 or one-line)."""
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            fields = _deb822_fields(stanza)
            if fields:
                if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    uris = fields.get("uris", "").split()
                    if uris and fields.get("enabled", "yes").lower() != "no":
                        return uris[0].rstrip("/")
                continue
            for line in stanza.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1].rstrip("/")
    return None


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
        if match is None:
            return fields
        fields[match.group(1).lower()] = match.group(2).strip()
    return fields


def load_base_spec(
    path: Path = BASE_SETTINGS, *, mirror: str | None = None, suite: str | None = None
) -> BaseSpec:
    """The base image settings; ``mirror`` and ``suite`` (from the site file) win over the defaults.

    Without a mirror the one the machine's apt sources use for the suite is taken.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"{path}: cannot read the base image settings: {exc}") from exc
    suite = suite or str(data.get("suite", "bookworm"))
    return BaseSpec(
        suite=suite,
        variant=str(data.get("variant", "minbase")),
        packages=tuple(str(p) for p in data.get("include", ())),
        mirror=mirror or host_apt_mirror(suite) or DEFAULT_MIRROR,
    )


def debootstrap_argv(spec: BaseSpec, target: Path) -> list[str]:
    argv = ["debootstrap", f"--variant={spec.variant}"]
    if spec.packages:
        argv.append("--include=" + ",".join(sorted(spec.packages)))
    return [*argv, spec.suite, str(target), spec.mirror]


def tar_argv(root: Path, output: Path, epoch: int) -> list[str]:
    """GNU tar of ``root`` with sorted names, numeric owners and clamped times: same tree, same bytes."""
    return [
        "tar",
        "--sort=name",
        "--numeric-owner",
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        f"--mtime=@{epoch}",
        "--clamp-mtime",
        "-C",
        str(root),
        "-cf",
        str(output),
        ".",
    ]


def builder_requirements(packages: Sequence[str] = BUILDER_PACKAGES) -> tuple[str, ...]:
    """``name==version`` for each package, at the version installed on the host."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as exc:
            raise ImageError(
                f"{name} is not installed on the host, so the builder image cannot pin it: run scripts/setup"
            ) from exc
    return tuple(pins)


def plan_builder(base: BaseSpec, *, dockerfile: Path = BUILDER_DOCKERFILE) -> BuilderPlan:
    if base.suite not in SUITE_PYTHON:
        raise ImageError(f"no known python3 version for Debian {base.suite!r}: add it to SUITE_PYTHON")
    return BuilderPlan(
        base=base.tag,
        dockerfile=dockerfile.read_text(),
        requirements=builder_requirements(),
        python_version=SUITE_PYTHON[base.suite],
        machine=platform.machine(),
    )


def pip_download_argv(plan: BuilderPlan, dest: Path) -> list[str]:
    """Wheels for the image's Python and machine, whatever the host's are."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={plan.python_version}",
        f"--platform=manylinux_2_36_{plan.machine}",
        f"--platform=manylinux2014_{plan.machine}",
        "--dest",
        str(dest),
        *plan.requirements,
    ]


# -- doing ------------------------------------------------------------------------------


def host_apt_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str | None:
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    files += sorted((apt_dir / "sources.list.d").glob("*.list"))
    texts = [f.read_text(errors="replace") for f in files if f.is_file()]
    return mirror_from_sources(texts, suite)


def ensure_base(engine: Engine, spec: BaseSpec | None = None) -> str:
    """The base image reference, importing it (and debootstrapping its rootfs) if missing."""
    spec = spec or load_base_spec()
    if engine.image_exists(spec.tag):
        log.debug(f"base image {spec.tag} is present")
        return spec.tag
    tarball = cache_dir() / "base" / spec.tarball_name
    if not tarball.is_file():
        build_rootfs_tarball(spec, tarball)
    log.step(f"importing the base image {spec.tag}")
    engine.import_rootfs(tarball, spec.tag, changes=_IMPORT_CHANGES)
    return spec.tag


def build_rootfs_tarball(spec: BaseSpec, tarball: Path) -> None:
    """debootstrap ``spec`` into a scratch dir, prune it and tar it reproducibly to ``tarball``."""
    if os.geteuid() != 0:
        raise ImageError(
            "building the Debian base image runs debootstrap, which needs root: "
            'run this step as root once (the image is cached), or use sandbox = "namespace"'
        )
    if proc.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: run scripts/setup")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".rootfs-{spec.key}.", dir=tarball.parent))
    root = scratch / "root"
    try:
        log.step(f"debootstrap {spec.suite} ({spec.variant}) from {spec.mirror}; this takes a few minutes")
        with log.progress("debootstrap", unit="steps") as bar:

            def on_line(line: str) -> None:
                log.debug(f"  | {line}")
                if line.startswith("I: ") and any(stage in line for stage in _DEBOOTSTRAP_STAGES):
                    bar.advance()
                if line.startswith(("E: ", "W: ")):
                    log.output(line)

            proc.run_streaming(debootstrap_argv(spec, root), error=ImageError, what="debootstrap", on_line=on_line)
        prune_rootfs(root)
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", _FALLBACK_EPOCH))
        with fsutil.atomic_output(tarball) as partial:
            proc.run(tar_argv(root, partial, epoch), error=ImageError, what="tar of the base rootfs")
        log.info(f"base rootfs: {tarball} ({log.human_bytes(tarball.stat().st_size)})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prune_rootfs(root: Path) -> None:
    """Delete the files (not the directories: apt insists on them) that hold run-time or download state."""
    for rel in _ROOTFS_PRUNE:
        path = root / rel
        if not path.is_dir() or path.is_symlink():
            continue
        if rel == "debootstrap":
            shutil.rmtree(path)
            continue
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                os.unlink(os.path.join(dirpath, name))
    for stale in ("etc/machine-id", "var/lib/dbus/machine-id"):
        if (root / stale).is_file():
            (root / stale).write_text("")


def ensure_builder(engine: Engine, *, base: BaseSpec | None = None) -> str:
    """The builder image reference, building the base and the builder if missing."""
    spec = base or load_base_spec()
    plan = plan_builder(spec)
    if engine.image_exists(plan.tag):
        log.debug(f"builder image {plan.tag} is present")
        return plan.tag
    ensure_base(engine, spec)
    wheels = builder_wheels(plan)
    log.step(f"building the builder image {plan.tag}")
    with tempfile.TemporaryDirectory(prefix="swstack-builder-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(plan.dockerfile)
        (context / "requirements.txt").write_text("\n".join(plan.requirements) + "\n")
        shutil.copytree(wheels, context / "wheels")
        engine.build(
            context,
            "Dockerfile",
            plan.tag,
            buildargs={"BASE": plan.base},
            labels={"org.swstack.role": "builder", "org.swstack.base": plan.base},
        )
    return plan.tag


def builder_wheels(plan: BuilderPlan) -> Path:
    """The wheels the builder installs, downloaded on the host once per requirement set."""
    key = hashlib.sha256(json.dumps([plan.requirements, plan.python_version, plan.machine]).encode())
    dest = cache_dir() / "builder-wheels" / key.hexdigest()[:16]
    if dest.is_dir():
        return dest
    log.step(f"downloading {len(plan.requirements)} wheels (and their dependencies) for the builder image")
    with fsutil.atomic_dir(dest) as partial:
        argv = pip_download_argv(plan, partial)
        proc.run(argv, error=ImageError, what="pip download for the builder image")
    return dest
