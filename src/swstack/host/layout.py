"""Root directory -> the on-disk layout of a host: where versions, ramdisk copies and live links live.

    <root>/sw            -> sw.tmpfs (production) or a plain directory (minimal)
    <root>/sw.tmpfs/     the ramdisk: <stack> -> .<stack>@<version>, one copy per loaded version
    <root>/sw.<version>/ persistent trees, one sub-directory per stack
    <root>/sw.hdd        -> sw.<version> last activated
    <root>/.swstack/     lock, state.json, staging/, downloads/

Everything here is pure path arithmetic plus small reads; nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ActivateError

RESERVED_VERSIONS = frozenset({"tmpfs", "hdd"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_name(kind: str, value: str) -> str:
    """Refuse stack and version names that could escape the root or collide with the seed's names."""
    if not _NAME_RE.match(value) or value in RESERVED_VERSIONS or "@" in value:
        raise ActivateError(
            f"invalid {kind} name {value!r}: use letters, digits and . _ + - "
            f"(not 'tmpfs' or 'hdd', which are the ramdisk and disk links)"
        )
    return value


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def sw(self) -> Path:
        return self.root / "sw"

    @property
    def tmpfs(self) -> Path:
        return self.root / "sw.tmpfs"

    @property
    def hdd(self) -> Path:
        return self.root / "sw.hdd"

    @property
    def private(self) -> Path:
        return self.root / ".swstack"

    @property
    def lock_file(self) -> Path:
        return self.private / "lock"

    @property
    def state_file(self) -> Path:
        return self.private / "state.json"

    @property
    def staging(self) -> Path:
        return self.private / "staging"

    @property
    def downloads(self) -> Path:
        return self.private / "downloads"

    @property
    def production(self) -> bool:
        """The seed's production configuration: a ramdisk (or a directory standing for one) at sw.tmpfs."""
        return self.tmpfs.is_dir()

    @property
    def link_dir(self) -> Path:
        """The real directory holding the per-stack live links."""
        return self.tmpfs if self.production else self.sw

    def version_dir(self, version: str) -> Path:
        return self.root / f"sw.{version}"

    def persistent_tree(self, stack: str, version: str) -> Path:
        return self.version_dir(version) / stack

    def ramdisk_copy(self, stack: str, version: str) -> Path:
        return self.tmpfs / f".{stack}@{version}"

    def live_link(self, stack: str) -> Path:
        return self.link_dir / stack

    def live_path(self, stack: str) -> Path:
        """The path users and kernels see, and the prefix the tree must carry."""
        return self.sw / stack

    def served_tree(self, stack: str, version: str) -> Path:
        """The real directory the live link points at for ``version``."""
        return self.ramdisk_copy(stack, version) if self.production else self.persistent_tree(stack, version)

    def link_target(self, stack: str, version: str) -> str:
        """Relative target of the live link, so the tree stays valid if the root is moved or bind-mounted."""
        return f".{stack}@{version}" if self.production else f"../sw.{version}/{stack}"

    def version_of_target(self, stack: str, target: str) -> str | None:
        """Inverse of ``link_target`` (accepts either configuration's form)."""
        m = re.fullmatch(rf"\.{re.escape(stack)}@(.+)", target)
        if m:
            return m.group(1)
        m = re.fullmatch(rf"(?:\.\./|{re.escape(str(self.root))}/)sw\.(.+)/{re.escape(stack)}", target)
        return m.group(1) if m else None

    def live_version(self, stack: str) -> str | None:
        try:
            return self.version_of_target(stack, os.readlink(self.live_link(stack)))
        except OSError:
            return None

    def versions(self) -> list[str]:
        """Versions with a persistent directory, oldest first."""
        found = []
        if self.root.is_dir():
            for entry in self.root.iterdir():
                name = entry.name
                if (
                    name.startswith("sw.")
                    and not name.endswith(".partial")
                    and entry.is_dir()
                    and not entry.is_symlink()
                ):
                    version = name[3:]
                    if version not in RESERVED_VERSIONS:
                        found.append(version)
        return sorted(found, key=version_key)

    def stacks_in(self, version: str) -> list[str]:
        vdir = self.version_dir(version)
        if not vdir.is_dir():
            return []
        return sorted(e.name for e in vdir.iterdir() if e.is_dir() and not e.name.startswith("."))

    def hdd_version(self) -> str | None:
        try:
            target = os.readlink(self.hdd)
        except OSError:
            return None
        name = Path(target).name
        return name[3:] if name.startswith("sw.") else None


def version_key(version: str) -> tuple[tuple[int, object], ...]:
    """Natural order: 2026.9.1 < 2026.10.1; dates in either spelling sort as dates."""
    parts = re.split(r"[.\-_+]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def normalize_version(arg: str) -> str:
    """Accept the seed's spellings: '2020-02-05', 'sw.2020-02-05' or '/data0/sw.2020-02-05'."""
    name = Path(arg.rstrip("/")).name
    return name[3:] if name.startswith("sw.") else name


@dataclass(frozen=True)
class StackState:
    version: str
    previous: str | None = None
    source: str = ""
    relocated_from: str | None = None
    activated_at: str = ""


@dataclass(frozen=True)
class HostState:
    """What was activated, kept on disk so ``restore`` can reload an empty ramdisk after a reboot."""

    stacks: dict[str, StackState] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: Layout) -> HostState:
        try:
            raw = json.loads(layout.state_file.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ActivateError(
                f"{layout.state_file}: unreadable ({exc}); move it aside and run "
                f"`swstack set-version` to record the active versions again"
            ) from exc
        return cls({name: StackState(**entry) for name, entry in raw.get("stacks", {}).items()})

    def to_json(self) -> str:
        from dataclasses import asdict

        return (
            json.dumps(
                {"stacks": {k: asdict(v) for k, v in sorted(self.stacks.items())}}, indent=2, sort_keys=True
            )
            + "\n"
        )

    def with_stack(self, name: str, entry: StackState) -> HostState:
        return HostState({**self.stacks, name: entry})
