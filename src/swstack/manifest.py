"""The artifact manifest: what a packed stack contains, shared by the build and host sides.

Written by ``pack`` as ``artifacts/<stack>/<version>/manifest.json`` (and, without the
``tarball`` section, inside the tarball as ``conda-meta/swstack-manifest.json``);
read by ``image`` and by the host commands. Standard library only: the host side
installs without the build dependencies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
IN_TREE_PATH = "conda-meta/swstack-manifest.json"
# uname's machine -> the conda platform's architecture part.
_CONDA_ARCH = {"x86_64": "64", "aarch64": "aarch64", "arm64": "aarch64", "ppc64le": "ppc64le"}


def host_platform() -> str:
    """This machine's conda platform (``linux-64``, ``linux-aarch64``): what it can run."""
    import platform

    machine = platform.machine()
    return f"linux-{_CONDA_ARCH.get(machine, machine)}"


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
class TarballInfo:
    name: str  # file name, beside manifest.json
    sha256: str
    size: int
    compression: str  # "zstd" | "gzip"


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
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stack_id(self) -> str:
        """``py3`` for the default variant, ``py3-dev`` for another."""
        return self.stack if self.variant in ("", "default", "stable") else f"{self.stack}-{self.variant}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def without_tarball(self) -> Manifest:
        from dataclasses import replace

        return replace(self, tarball=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["packages"] = tuple(PackageEntry(**p) for p in data.get("packages", ()))
        data["kernels"] = tuple(data.get("kernels", ()))
        tb = data.get("tarball")
        data["tarball"] = TarballInfo(**tb) if tb else None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_text())
