"""Root directory -> the on-disk layout of a host: where versions, ramdisk copies and live links live.

    <root>/sw            -> sw.tmpfs (production) or a plain directory (minimal)
    <root>/sw.tmpfs/     the ramdisk: <live> -> .<tree>@<version>, one copy per loaded version
    <root>/sw.<version>/ persistent trees, one sub-directory per tree (stack id: py3, py3-dev)
    <root>/sw.hdd        -> sw.<version> last activated
    <root>/.swstack/     lock, state.json, staging/, downloads/

A tree is named by its stack id (``py3``, ``py3-dev`` for the dev variant); its live
name is the last component of the prefix it was built for (``/data0/sw/py3`` -> ``py3``,
the seed's ``/data0/sw/anaconda3`` -> ``anaconda3``). Variants of one stack share a live
name, so they are versions of one live path: ``sw/py3 -> .py3-dev@<version>``.

Everything here is pure path arithmetic plus small reads; nothing is written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import ActivateError
from ..manifest import IN_TREE_PATH, RESERVED_VERSIONS, Manifest

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# What swstack writes beside its trees in sw.<version>: chunk records and file indexes.
_RECORD_RE = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._+-]*\.(chunks|files)\.json(\.partial)?")


def check_name(kind: str, value: str) -> str:
    """Refuse stack and version names that could escape the root or collide with the seed's names."""
    if not is_version_name(value):
        raise ActivateError(
            f"invalid {kind} name {value!r}: use letters, digits and . _ + - "
            f"(not 'tmpfs' or 'hdd', which are the ramdisk and disk links)"
        )
    return value


def live_name(prefix: str) -> str:
    """The live name a tree answers to: the last component of the prefix it was built for (pure)."""
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ActivateError(f"prefix {prefix!r}: a tree is built for a directory under the live path, not for /")
    return check_name("prefix", name)


def in_tree_text(tree: Path) -> str | None:
    """The text of a tree's in-tree manifest; None when it cannot be read."""
    try:
        return (tree / IN_TREE_PATH).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_tree_manifest(tree: Path) -> Manifest:
    """The in-tree manifest of a tree on the host: what swstack put there says which stack and
    version the tree is. One line saying what is wrong when there is none, or no readable one."""
    text = in_tree_text(tree)
    if text is None:
        raise ActivateError(f"{tree}: no {IN_TREE_PATH}, not a swstack tree")
    try:
        return Manifest.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ActivateError(f"{tree / IN_TREE_PATH}: not a swstack manifest ({exc})") from exc


def tree_manifest(tree: Path) -> Manifest | None:
    """``read_tree_manifest``, or None: for what only sizes a tree or shows its variant."""
    try:
        return read_tree_manifest(tree)
    except ActivateError:
        return None


def command(root: Path | str, text: str) -> str:
    """``swstack <text>`` as a hint to type, naming ``--root`` unless it is the default: a hint
    pasted on a test or staging root must not act on the production one."""
    extra = "" if str(root) == paths.ROOT else f" --root {shlex.quote(str(root))}"
    return f"`swstack {text}{extra}`"


@dataclass(frozen=True)
class Layout:
    root: Path

    def command(self, text: str) -> str:
        """``swstack <text>`` for this root (``command``)."""
        return command(self.root, text)

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

    def live_link(self, live: str) -> Path:
        return self.link_dir / live

    def live_path(self, live: str) -> Path:
        """The path users and kernels see, and the prefix the tree must carry."""
        return self.sw / live

    def served_tree(self, stack: str, version: str) -> Path:
        """The real directory the live link points at for ``version``."""
        return self.ramdisk_copy(stack, version) if self.production else self.persistent_tree(stack, version)

    def link_target(self, stack: str, version: str) -> str:
        """Relative target of the live link, so the tree stays valid if the root is moved or bind-mounted."""
        return f".{stack}@{version}" if self.production else f"../sw.{version}/{stack}"

    def tree_of_target(self, target: str) -> tuple[str, str] | None:
        """Inverse of ``link_target``: (tree, version), accepting either configuration's form."""
        m = re.fullmatch(r"\.([^/@]+)@([^/]+)", target)
        if m:
            return m.group(1), m.group(2)
        m = re.fullmatch(rf"(?:\.\./|{re.escape(str(self.root))}/)sw\.([^/]+)/([^/]+)", target)
        return (m.group(2), m.group(1)) if m else None

    def live_tree(self, live: str) -> tuple[str, str] | None:
        """(tree, version) the live link ``live`` points at, or None."""
        try:
            return self.tree_of_target(os.readlink(self.live_link(live)))
        except OSError:
            return None

    def live_version(self, live: str) -> str | None:
        found = self.live_tree(live)
        return found[1] if found else None

    def live_links(self) -> dict[str, tuple[str, str]]:
        """Every live link -> the (tree, version) it points at."""
        out: dict[str, tuple[str, str]] = {}
        if self.link_dir.is_dir():
            for entry in self.link_dir.iterdir():
                if entry.is_symlink() and not entry.name.startswith("."):
                    found = self.live_tree(entry.name)
                    if found:
                        out[entry.name] = found
        return out

    def is_live(self, tree: str, version: str) -> bool:
        return (tree, version) in self.live_links().values()

    def live_name_of(self, tree: str, version: str) -> str:
        """The live name of a tree on the host: from the prefix in its in-tree manifest."""
        manifest = tree_manifest(self.persistent_tree(tree, version))
        try:
            return live_name(manifest.prefix) if manifest else tree
        except ActivateError:
            return tree

    def versions(self) -> list[str]:
        """Versions with a persistent directory, oldest first: ``sw.<version>`` directories whose
        ``<version>`` is a valid version name (not ``tmpfs``/``hdd``, no ``@``, no ``.partial``)."""
        found = []
        if self.root.is_dir():
            for entry in self.root.iterdir():
                name = entry.name
                if (
                    name.startswith("sw.")
                    and not name.endswith(".partial")
                    and is_version_name(name[3:])
                    and entry.is_dir()
                    and not entry.is_symlink()
                ):
                    found.append(name[3:])
        return sorted(found, key=version_key)

    def foreign_content(self, version: str) -> str | None:
        """What in ``sw.<version>`` swstack did not put there, or None if it holds only its trees
        (each with an in-tree manifest naming this version and the tree) and their records.
        ``prune`` deletes only directories of the second kind."""
        vdir = self.version_dir(version)
        trees = 0
        for entry in sorted(vdir.iterdir()):
            name = entry.name
            if name.startswith("."):
                if not _RECORD_RE.fullmatch(name) or not entry.is_file() or entry.is_symlink():
                    return f"{name} is not a record swstack writes"
                continue
            if entry.is_symlink() or not entry.is_dir():
                return f"{name} is not a tree"
            try:
                inside = read_tree_manifest(entry)
            except ActivateError:
                return f"{name} has no readable {IN_TREE_PATH}"
            if (inside.stack_id, inside.version) != (name, version):
                return f"{name}'s {IN_TREE_PATH} describes {inside.stack_id} {inside.version}"
            trees += 1
        return None if trees else "no tree"

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


def is_version_name(value: str) -> bool:
    """A name ``check_name`` accepts (pure); ``_NAME_RE`` has no '@', which a ramdisk copy's name
    (``.<stack>@<version>``) uses as its separator."""
    return bool(_NAME_RE.match(value)) and value not in RESERVED_VERSIONS


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
    """One live path's record; ``tree`` names the variant's tree when it differs from the live name."""

    version: str
    previous: str | None = None
    source: str = ""
    relocated_from: str | None = None
    activated_at: str = ""
    tree: str = ""
    previous_tree: str = ""

    def tree_of(self, live: str) -> str:
        return self.tree or live


_STATE_FIELDS = {f: (str, type(None)) if f in ("previous", "relocated_from") else (str,)
                 for f in StackState.__dataclass_fields__}


def _stack_states(raw: object) -> dict[str, StackState]:
    """``state.json``'s ``stacks`` table, each field checked: the file is the host's own, but a
    hand edit or a torn write must end in a message that says where, not a TypeError's."""
    # A misspelt or extra top-level key is refused too: read as "nothing recorded", `restore`
    # after a reboot would reload nothing and report it as done.
    for key in raw if isinstance(raw, dict) else ():
        if key != "stacks":
            raise ActivateError(f"{key}: unknown key; expected only stacks")
    stacks = raw.get("stacks", {}) if isinstance(raw, dict) else None
    if not isinstance(stacks, dict):
        raise ActivateError("stacks: expected an object of live name -> record")
    states = {}
    for name, entry in stacks.items():
        if not isinstance(entry, dict):
            raise ActivateError(f"stacks.{name}: expected an object, got {json.dumps(entry)}")
        for key, value in entry.items():
            if key not in _STATE_FIELDS:
                raise ActivateError(f"stacks.{name}.{key}: unknown field")
            if not isinstance(value, _STATE_FIELDS[key]):
                raise ActivateError(f"stacks.{name}.{key}: expected a string, got {json.dumps(value)}")
        if "version" not in entry:
            raise ActivateError(f"stacks.{name}: no version")
        states[str(name)] = StackState(**entry)
    return states


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
                f"{layout.command('set-version')} to record the active versions again"
            ) from exc
        try:
            state = cls(_stack_states(raw))
            state.check_names()
        except ActivateError as exc:
            raise ActivateError(
                f"{layout.state_file}: not a swstack state file ({exc}); move it aside and run "
                f"{layout.command('set-version')} to record the active versions again"
            ) from exc
        return state

    def check_names(self) -> None:
        """Every name the record holds is one a path may be made of (the file is the host's,
        but it names directories that are created and removed)."""
        for live, entry in self.stacks.items():
            check_name("stack", live)
            check_name("version", entry.version)
            for kind, value in (("tree", entry.tree), ("previous version", entry.previous or ""),
                                ("previous tree", entry.previous_tree)):  # fmt: skip
                if value:
                    check_name(kind, value)

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
