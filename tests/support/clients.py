"""Debian's container clients (skopeo, podman, umoci) with all their state in a test directory.

Input: a scratch directory. Output: argv builders and runners whose configuration,
storage, signature policy and registries.d live under that directory, so a test never
reads or changes the machine's own ``/etc/containers`` or ``/var/lib/containers``.
podman runs as root inside a container here: vfs storage, cgroupfs, no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from swstack import proc

INSECURE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def need(*tools: str) -> None:
    """Skip with the fix when a client is missing (scripts/setup installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing; run scripts/setup")


@dataclass(frozen=True)
class Clients:
    """One private configuration for skopeo and podman."""

    home: Path
    # podman refuses a runroot longer than 50 characters: a short directory of its own.
    runroot: Path

    @classmethod
    def make(cls, home: Path, policy: dict[str, object] | None = None) -> Clients:
        clients = cls(home, Path(tempfile.mkdtemp(prefix="swstack-run-")))
        for d in (clients.registries_d, clients.storage, clients.runroot, clients.tmp):
            d.mkdir(parents=True, exist_ok=True)
        clients.write_policy(policy or INSECURE_POLICY)
        # Empty files: no search registries, no global containers.conf settings.
        (home / "registries.conf").write_text("unqualified-search-registries = []\n")
        (home / "containers.conf").write_text('[engine]\nevents_logger = "none"\n')
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{clients.runroot}"\ngraphroot = "{clients.storage}"\n'
        )
        return clients

    @property
    def policy(self) -> Path:
        # containers/image reads $HOME/.config/containers/policy.json before /etc's.
        return self.home / ".config" / "containers" / "policy.json"

    @property
    def registries_d(self) -> Path:
        # ... and $HOME/.config/containers/registries.d when it exists.
        return self.home / ".config" / "containers" / "registries.d"

    @property
    def storage(self) -> Path:
        return self.home / "storage"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    def close(self) -> None:
        """Remove the runroot (the home goes with the test's directory)."""
        shutil.rmtree(self.runroot, ignore_errors=True)

    def write_policy(self, policy: dict[str, object]) -> None:
        self.policy.parent.mkdir(parents=True, exist_ok=True)
        self.policy.write_text(json.dumps(policy, indent=1))

    def use_lookaside(self, registry: str, lookaside: Path) -> None:
        """Tell containers/image to read signatures of ``registry``'s images from ``lookaside``."""
        (self.registries_d / "swstack-test.yaml").write_text(
            f"docker:\n  {registry}:\n    lookaside: {lookaside.as_uri()}\n"
        )

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "XDG_RUNTIME_DIR": str(self.runroot),
            "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
        }

    def skopeo(self, *args: str) -> list[str]:
        return [
            "skopeo",
            "--policy",
            str(self.policy),
            "--registries.d",
            str(self.registries_d),
            *args,
        ]

    def podman(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.storage),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            *args,
        ]

    @staticmethod
    def run_flags() -> list[str]:
        """``podman run`` flags for this machine: no network, and modest explicit rlimits.

        Without CAP_SYS_RESOURCE runc may not give the container podman's default limits
        (nor this process's own hard ones); a lower value is always allowed.
        """
        return ["--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return proc.run(argv, env=self.env(), check=check, timeout=timeout)


def local_tree_listing(root: Path) -> list[str]:
    """``kind ./path sha256-or-target`` lines of a directory, as ``imagekit.tarball_listing`` lists a tarball."""
    import hashlib

    lines: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = "./" + path.relative_to(root).as_posix()
            if path.is_symlink():
                lines.append(f"l {rel} {os.readlink(path)}")
                if name in dirnames:
                    dirnames.remove(name)
            elif path.is_dir():
                lines.append(f"d {rel} -")
            else:
                lines.append(f"f {rel} {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return sorted(lines)
