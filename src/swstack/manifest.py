"""The artifact manifest: what a packed stack contains, shared by the build and host sides.

Written by ``pack`` as ``artifacts/<stack>/<version>/manifest.json`` (and, without the
``tarball`` section, inside the tarball as ``conda-meta/swstack-manifest.json``);
read by ``image`` and by the host commands. Standard library only: the host side
installs without the build dependencies.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SwstackError

SCHEMA = 1
IN_TREE_PATH = "conda-meta/swstack-manifest.json"
# uname's machine -> the conda platform's architecture part.
_CONDA_ARCH = {"x86_64": "64", "aarch64": "aarch64", "arm64": "aarch64", "ppc64le": "ppc64le"}


def host_platform() -> str:
    """This machine's conda platform (``linux-64``, ``linux-aarch64``): what it can run."""
    import platform

    machine = platform.machine()
    return f"linux-{_CONDA_ARCH.get(machine, machine)}"

# A version names a directory (artifacts/<stack>/<version>/, a host's sw.<version>), a file
# (<stack>-<version>-<platform>.tar.zst) and an OCI tag (<registry>/<stack>:<version>), so it
# takes what all three take: an OCI tag's characters and length (no '+', at most 128), starting
# with a letter or digit, as the host's names do (so no '.', '..' or '-option').
# A path component of an OCI repository name (the distribution spec's): lowercase only. The
# stack file's image.repository and every registry reference are checked against it.
REPOSITORY_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
# The host's link names (sw.tmpfs, sw.hdd): never a version, on either side.
RESERVED_VERSIONS = frozenset({"tmpfs", "hdd"})
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_RULE = "letters, digits and . _ - (at most 128, the first a letter or digit), e.g. 2026.11.21 or 29.0.0"


def check_version(version: str, error: type[SwstackError]) -> str:
    """``version`` if it is one (see ``VERSION_RULE``), else ``error`` saying what is allowed.

    The one rule for a version, checked where one comes in (doit's ``version=``, ``pack
    --version``, ``plan_build``), before anything is written.
    """
    if not _VERSION_RE.fullmatch(version) or version in RESERVED_VERSIONS:
        reserved = " (not tmpfs or hdd, a host's link names)" if version in RESERVED_VERSIONS else ""
        raise error(f"version {version!r}: use {VERSION_RULE}{reserved}")
    return version


def normalise_pip_name(name: str) -> str:
    """A Python distribution's name as PEP 503 compares names: lower case, each run of ``-_.`` one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_info_name_version(dist_info: Path) -> tuple[str, str]:
    """(Name, Version) of an installed distribution, from its ``METADATA``, else from the
    ``<name>-<version>.dist-info`` directory's name."""
    import email.parser  # here, not at import: the host side imports this module too

    try:
        meta = email.parser.Parser().parsestr((dist_info / "METADATA").read_text(errors="replace"), True)
        name, version = meta.get("Name", ""), meta.get("Version", "")
    except OSError:
        name = version = ""
    if not name:
        name, _, version = dist_info.name[: -len(".dist-info")].partition("-")
    return name, version


# The variant names a manifest written before it recorded ``default_variant`` used for
# its stack's default variant; only reading such a manifest needs them.
_UNRECORDED_DEFAULTS = ("", "default", "stable")


def stack_id(stack: str, variant: str, default_variant: str) -> str:
    """The id that names a stack's artifacts and images: ``py3`` for the variant the stack
    file declares as its default, ``py3-dev`` for another. The one rule, for both sides."""
    return stack if variant == default_variant else f"{stack}-{variant}"


# The largest user or group id an owner may name: (uid_t)-1 means "no owner" to chown, and tar
# refuses more. The stack file's owner and pack's --owner are held to it.
MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class PackageEntry:
    name: str
    version: str
    build: str  # conda build string; "" for pip packages
    channel: str  # conda channel URL, or the pip index / "git+URL@sha" for pip packages
    sha256: str
    size: int
    manager: str = "conda"  # "conda" | "pip"


@dataclass(frozen=True)
class TarballChunk:
    """One independently verifiable piece of a zstd tarball: a complete zstd frame of whole
    tar members, at ``offset`` in the file, ``size`` compressed bytes, their ``sha256``."""

    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class TarballInfo:
    name: str  # file name, beside manifest.json
    sha256: str
    size: int
    compression: str  # "zstd" | "gzip"
    # zstd: contiguous from 0, sizes summing to ``size``; gzip and older manifests: none.
    chunks: tuple[TarballChunk, ...] = ()


@dataclass(frozen=True)
class AttestationInfo:
    """A document about the artifact kept beside it (SBOM, provenance), named with its sha256."""

    name: str  # file name, beside manifest.json
    sha256: str
    media_type: str


@dataclass(frozen=True)
class Manifest:
    stack: str
    variant: str
    version: str
    platform: str
    prefix: str  # the absolute path baked into the tree, e.g. /data0/sw/py3
    lockfile_sha256: str
    stackfile_sha256: str
    tools: dict[str, str]
    packages: tuple[PackageEntry, ...]
    file_count: int
    total_size: int  # bytes of the unpacked tree
    git_commit: str
    build_time: str  # ISO 8601, UTC
    source_date_epoch: int
    owner: str | None = None  # "uid:gid" applied to the tree, or None (root-owned, normalised)
    kernels: tuple[str, ...] = ()
    tarball: TarballInfo | None = None
    # Written after packing (attest.py), so never part of the in-tree copy.
    attestations: tuple[AttestationInfo, ...] = ()
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)
    default_variant: str | None = None  # the stack file's default variant; None: an older manifest

    @property
    def stack_id(self) -> str:
        """``py3`` for the default variant, ``py3-dev`` for another (see ``stack_id``)."""
        default = self.default_variant
        if default is None:
            default = self.variant if self.variant in _UNRECORDED_DEFAULTS else ""
        return stack_id(self.stack, self.variant, default)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def without_tarball(self) -> Manifest:
        from dataclasses import replace

        return replace(self, tarball=None, attestations=())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Raises ValueError naming the key when a field is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("a manifest is a JSON object")
        data = dict(data)
        packages = data.get("packages", ())
        if not isinstance(packages, (list, tuple)):
            raise ValueError("packages: expected a list")
        data["packages"] = tuple(_typed(PackageEntry, p, f"packages[{i}]") for i, p in enumerate(packages))
        kernels = data.get("kernels", ())
        if not isinstance(kernels, (list, tuple)) or not all(isinstance(k, str) for k in kernels):
            raise ValueError("kernels: expected a list of names")
        data["kernels"] = tuple(kernels)
        tb = data.get("tarball")
        data["tarball"] = _tarball(tb) if tb else None
        attestations = data.get("attestations", ())
        if not isinstance(attestations, (list, tuple)):
            raise ValueError("attestations: expected a list")
        data["attestations"] = tuple(
            _typed(AttestationInfo, a, f"attestations[{i}]") for i, a in enumerate(attestations)
        )
        manifest: Manifest = _typed(cls, data, "")
        return manifest

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_text())


# Field annotations (strings: ``from __future__ import annotations``) -> the JSON types they take.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "str | None": (str, type(None)),
    "dict[str, str]": (dict,),
    "dict[str, Any]": (dict,),
}


def _tarball(data: Any) -> TarballInfo:
    """The ``tarball`` section, its chunk table checked to tile the file (pure)."""
    if not isinstance(data, dict):
        raise ValueError("tarball: expected a JSON object")
    data = dict(data)
    chunks = data.get("chunks", ())
    if not isinstance(chunks, (list, tuple)):
        raise ValueError("tarball.chunks: expected a list")
    data["chunks"] = tuple(_typed(TarballChunk, c, f"tarball.chunks[{i}]") for i, c in enumerate(chunks))
    info: TarballInfo = _typed(TarballInfo, data, "tarball")
    _check_chunk_table(info)
    return info


def _check_chunk_table(info: TarballInfo) -> None:
    """Chunks start at 0, follow each other without gap or overlap and end at the file's end."""
    offset = 0
    for i, chunk in enumerate(info.chunks):
        where = f"tarball.chunks[{i}]"
        if chunk.offset != offset:
            raise ValueError(f"{where}.offset: expected {offset} (chunks are contiguous from 0), got {chunk.offset}")
        if chunk.size <= 0:
            raise ValueError(f"{where}.size: expected a positive size, got {chunk.size}")
        if not _is_sha256(chunk.sha256):
            raise ValueError(f"{where}.sha256: expected 64 lowercase hex digits")
        offset += chunk.size
    if info.chunks and offset != info.size:
        raise ValueError(f"tarball.chunks: they cover {offset} bytes, the tarball has {info.size}")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _typed(cls: Any, data: Any, where: str) -> Any:
    """``cls(**data)`` for a manifest dataclass, with each known field's JSON type checked (pure)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'manifest'}: expected a JSON object")
    fields = cls.__dataclass_fields__
    missing = [n for n, f in fields.items() if n not in data and f.default is f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{where + ': ' if where else ''}missing {', '.join(missing)}")
    for name, value in data.items():
        if name not in fields:
            continue
        allowed = _JSON_TYPES.get(str(fields[name].type))
        if allowed is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
            key = f"{where}.{name}" if where else name
            raise ValueError(f"{key}: expected {fields[name].type}, got {type(value).__name__}")
        if str(fields[name].type) == "dict[str, str]" and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError(f"{where + '.' if where else ''}{name}: expected strings")
    return cls(**{k: v for k, v in data.items() if k in fields})
