"""What the host CLI does: sources or versions in, a switched host and a result to print out.

Each command plans first (which trees to extract, copy and switch; pure apart from
reads), checks space, then does the steps in an order where a crash at any point
leaves a complete old or new version live and a rerun finishes the job:

    extract to .swstack/staging and, in the same pass, to sw.tmpfs/.<stack>@<version>.partial
    -> verify -> relocate -> chown -> rename to sw.<version>/<stack> -> rename the .partial copy
    (or copy a tree already on disk) -> switch sw/<live> -> record state.json -> switch sw.hdd
    -> drop unused ramdisk copies
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import log
from ..artifact import load_manifest, reraise
from ..errors import ActivateError, SwstackError
from ..fsutil import atomic_write_text, sha256_file
from ..manifest import IN_TREE_PATH, Manifest, PackageEntry, host_platform
from . import chunks, faults, inuse, relocate, reuse, signature, source, space, switch
from .extract import Mirror, extract
from .init import check_sw_linkable, link_sw
from .layout import (
    HostState,
    Layout,
    StackState,
    check_name,
    in_tree_text,
    live_name,
    normalize_version,
    read_tree_manifest,
    tree_manifest,
    version_key,
)
from .lock import host_lock
from .verify import Expected, check_in_tree_manifest, check_platform, expectations

UNCHANGED_EXIT = 3  # `activate`, `set-version`, `restore`, `prune`: nothing to do (Ansible's changed_when)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class StackResult:
    stack: str  # the live name: <root>/sw/<stack>
    version: str
    previous: str | None
    changed: bool
    steps: tuple[str, ...] = ()
    relocated_from: str | None = None
    kept_in_use: tuple[str, ...] = ()
    tree: str = ""  # the variant's tree (stack id), e.g. py3-dev


@dataclass(frozen=True)
class Outcome:
    results: tuple[StackResult, ...]
    hdd: str | None = None
    failed: tuple[str, ...] = ()  # `restore`: one line per stack it could not restore

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Target:
    """One tree to make live at one version, from an artifact or from the tree already on the host.

    ``stack`` names the tree (the stack id: py3, py3-dev); ``live`` the live path it answers
    to, <root>/sw/<live>, from the prefix it was built for.
    """

    stack: str
    version: str
    artifact: source.Artifact | None = None
    live: str = ""
    expected: Expected | None = None  # what checking the artifact at fetch found (``expectations``)

    @property
    def live_name(self) -> str:
        return self.live or self.stack


@dataclass(frozen=True)
class StackPlan:
    target: Target
    extract: bool
    copy: bool
    switch: bool
    record: bool
    previous: str | None
    previous_tree: str | None = None


def check_tree_on_host(tree: Path, stack: str, version: str) -> None:
    """A tree made live without its artifact must be one swstack put there: its in-tree manifest
    names this stack and version. An empty or foreign directory at that place is refused."""
    try:
        inside = read_tree_manifest(tree)
    except ActivateError as exc:
        raise ActivateError(f"{exc}; refusing to make it live") from exc
    if (inside.stack_id, inside.version) != (stack, version):
        raise ActivateError(
            f"{tree / IN_TREE_PATH}: describes {inside.stack_id} {inside.version}, not {stack} {version}; "
            f"refusing to make it live"
        )


def plan_stack(layout: Layout, state: HostState, target: Target, reload_copy: bool = False) -> StackPlan:
    """What activating ``target`` takes; ``reload_copy``: its ramdisk copy is there but damaged."""
    persistent = layout.persistent_tree(target.stack, target.version)
    have_tree = persistent.is_dir()
    if have_tree and target.artifact is not None:
        check_in_tree_manifest(
            in_tree_text(persistent),
            target.artifact.manifest,
            f"{persistent} (already on this host, version {target.version})",
        )
    elif have_tree:
        check_tree_on_host(persistent, target.stack, target.version)
    if not have_tree and target.artifact is None:
        versions = [v for v in layout.versions() if target.stack in layout.stacks_in(v)]
        raise ActivateError(
            f"{target.stack} {target.version} is not on this host (no {persistent}); "
            f"versions here: {', '.join(versions) or 'none'}; activate it from its artifact"
        )
    name = target.live_name
    live = layout.live_tree(name)
    entry = state.stacks.get(name)
    wanted = (target.stack, target.version)
    previous: tuple[str, str] | None
    if entry is not None and (entry.tree_of(name), entry.version) != wanted:
        previous = (entry.tree_of(name), entry.version)
    elif live is not None and live != wanted:
        previous = live
    elif entry is not None and entry.previous:
        previous = (entry.previous_tree or name, entry.previous)
    else:
        previous = None
    recorded = (entry.tree_of(name), entry.version) if entry else None
    recorded_previous = (entry.previous_tree or name, entry.previous) if entry and entry.previous else None
    return StackPlan(
        target=target,
        extract=not have_tree,
        copy=layout.production and (reload_copy or not layout.ramdisk_copy(target.stack, target.version).is_dir()),
        switch=live != wanted,
        record=recorded != wanted or recorded_previous != previous,
        previous=previous[1] if previous else None,
        previous_tree=previous[0] if previous else None,
    )


def _live_tree_bytes(layout: Layout, live_name: str) -> int:
    """Bytes of the tree live at ``live_name``, from its in-tree manifest (0 if unknown)."""
    live = layout.live_tree(live_name)
    manifest = tree_manifest(layout.persistent_tree(*live)) if live else None
    return manifest.total_size if manifest else 0


def space_needs(layout: Layout, plans: list[StackPlan]) -> list[space.SpaceNeed]:
    needs = []
    for p in plans:
        t = p.target
        shareable = 0
        if t.artifact is not None:
            m = t.artifact.manifest
            size = space.estimate(m.total_size, m.file_count)
            if previous_on_disk(layout, t, m.owner) is not None:
                shareable = _live_tree_bytes(layout, t.live_name)
        else:
            total, count = switch.tree_size(layout.persistent_tree(t.stack, t.version))
            size = space.estimate(total, count)
        if p.extract:
            needs.append(space.SpaceNeed("disk", layout.root, size, shareable))
        if p.copy:
            needs.append(space.SpaceNeed("ramdisk", layout.tmpfs, size, shareable if p.extract else 0))
    return needs


# ---------------------------------------------------------------- doing


def require_root(layout: Layout) -> None:
    """A root that is not there is an error, for the commands that read it too: a mistyped
    --root must not look like a healthy, empty host."""
    if not layout.root.is_dir():
        if layout.root.exists():
            raise ActivateError(f"{layout.root}: not a directory; pass --root the directory holding sw.<version>")
        raise ActivateError(
            f"{layout.root}: root directory missing; create it with {layout.command('init')}, "
            f"or pass --root the directory holding sw.<version>"
        )


def ramdisk_gone(layout: Layout) -> str | None:
    """What to do when ``sw`` is a link to a ``sw.tmpfs`` that is not there (the ramdisk's directory
    removed): the root is then neither configuration, and nothing can be made live under it."""
    if layout.production or not layout.sw.is_symlink() or layout.sw.exists():
        return None
    return (
        f"{layout.sw} -> {os.readlink(layout.sw)}, but {layout.tmpfs} is missing (the ramdisk's directory "
        f"was removed); run {layout.command('init')} to create it (and mount the ramdisk), "
        f"then {layout.command('restore')}"
    )


def check_not_writable_by_others(layout: Layout) -> None:
    """The directories whose entries swstack trusts (a ``.<tree>@<version>`` already on the ramdisk
    is made live as it is, a ``sw.<version>`` tree restored) must be writable only by us: in one
    any user may write (a tmpfs mounted without mode=0755 is 1777), a user could plant a version."""
    for path in (layout.root, layout.tmpfs, layout.private, layout.sw):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IWOTH or st.st_uid not in (0, os.geteuid()):
            who = "writable by every user" if st.st_mode & stat.S_IWOTH else f"owned by uid {st.st_uid}"
            raise ActivateError(
                f"{path}: {who} (mode {stat.S_IMODE(st.st_mode):o}), so anyone could plant a version to go "
                f"live; give it to root with mode 755 (a tmpfs: mode=0755 in /etc/fstab, see swstack init)"
            )


def prepare_root(layout: Layout) -> None:
    """Create what swstack keeps under the root and, in production, the sw -> sw.tmpfs link."""
    require_root(layout)
    check_not_writable_by_others(layout)
    layout.private.mkdir(exist_ok=True)
    if layout.production:
        check_sw_linkable(layout)
        link_sw(layout)
    else:
        gone = ramdisk_gone(layout)
        if gone:
            raise ActivateError(gone)
        layout.sw.mkdir(exist_ok=True)


def clean_leftovers(layout: Layout) -> None:
    """Remove what a killed run left half-done; we hold the lock, so nothing else is writing."""
    for d in (layout.staging, layout.private / "trash"):
        if d.exists():
            switch.remove_tree(d)
    _empty_downloads(layout)  # a killed run's
    for entry in layout.private.glob(f".{layout.state_file.name}.*.partial"):
        entry.unlink()  # a run killed while it wrote the state file: every writer names its own
    if layout.production:
        for entry in layout.tmpfs.iterdir():
            if entry.name.startswith(".") and (entry.name.endswith(".partial") or ".new-" in entry.name):
                switch.remove_tree(entry)


def _partial(layout: Layout, stack: str, version: str) -> Path:
    dest = layout.ramdisk_copy(stack, version)
    return dest.with_name(dest.name + ".partial")


def stage_tree(layout: Layout, plan: StackPlan) -> str | None:
    """Artifact -> verified, relocated, owned tree at sw.<version>/<stack>; returns the old prefix.

    When the version goes onto the ramdisk, its copy is written in the same pass into
    sw.tmpfs/.<stack>@<version>.partial (``load_ramdisk`` renames it).
    """
    t = plan.target
    assert t.artifact is not None and t.expected is not None
    art, expected = t.artifact, t.expected
    staging = layout.staging / f"{t.stack}@{t.version}"
    layout.staging.mkdir(parents=True, exist_ok=True)
    os.mkdir(staging, 0o755)
    mirror = None
    if plan.copy:
        partial = _partial(layout, t.stack, t.version)
        switch.remove_tree(partial)
        os.mkdir(partial, 0o755)
        live = layout.live_tree(t.live_name)
        mirror = Mirror(partial, layout.ramdisk_copy(*live) if live else None)
    try:
        log.step(f"{t.stack} {t.version}: verifying and extracting {art.tarball.name}")
        previous = previous_on_disk(layout, t, art.manifest.owner)
        segments = chunk_plan(art, previous, mirror.previous if mirror is not None else None)
        result = extract(art.tarball, staging, expected, previous, mirror, segments, layout.command("prune --keep N"))
        if result.replayed:
            log.info(
                f"{t.stack} {t.version}: {result.replayed} of {len(segments or ())} chunks unchanged, "
                f"not read: their files are shared with the live version"
            )
        if previous is not None:
            reuse.report(f"{t.stack} {t.version}", previous.linked, previous.linked_bytes)
        if mirror is not None:
            reuse.report(f"{t.stack} {t.version} on the ramdisk", mirror.linked, mirror.linked_bytes)
        check_in_tree_manifest(result.in_tree_manifest, art.manifest, str(art.tarball))
        faults.hit("extracted")
        target_prefix = str(layout.live_path(t.live_name))
        moved_from = None
        hashes = dict(result.hashes)
        relocation = relocate.plan(staging, art.manifest.prefix, target_prefix)
        if relocation is not None:
            relocate.relocate(staging, relocation)
            moved_from = ", ".join(relocation.placeholders)
            for rel in relocation.paths:
                if not (staging / rel).is_file() or (staging / rel).is_symlink():
                    continue
                if rel in hashes:
                    hashes[rel] = sha256_file(staging / rel)
                if mirror is not None:
                    reuse.replace_with_copy(staging / rel, mirror.root / rel)
        faults.hit("relocated")
        owner = switch.parse_owner(art.manifest.owner)
        if owner is not None:
            if os.geteuid() == 0:
                switch.chown_tree(staging, owner)
                if mirror is not None:
                    switch.chown_tree(mirror.root, owner)
            else:
                log.warn(f"{t.stack}: not root, so the tree is not given to its owner {art.manifest.owner}")
        persistent = layout.persistent_tree(t.stack, t.version)
        persistent.parent.mkdir(exist_ok=True)
        if result.chunks is not None:  # what each chunk held, less the chunks of relocated files
            record = chunks.without(result.chunks, relocation.paths if relocation else ())
            chunks.write_record(chunks.record_path(persistent.parent, t.stack), record)
        else:
            reuse.write_index(reuse.index_path(persistent.parent, t.stack), hashes)
        os.rename(staging, persistent)
        faults.hit("persisted")
        return moved_from
    except BaseException:
        switch.remove_tree(staging)
        if mirror is not None:
            switch.remove_tree(mirror.root)
        raise
    finally:
        with contextlib.suppress(OSError):
            layout.staging.rmdir()


def chunk_plan(
    art: source.Artifact, previous: reuse.Previous | None, live_copy: Path | None
) -> list[chunks.Segment] | None:
    """A chunked tarball's chunks, each to read or (held by the live tree's record) to replay; None if unchunked."""
    table = art.manifest.tarball.chunks if art.manifest.tarball is not None else ()
    if not table:
        return None
    if previous is None:
        return chunks.plan(table, {}, None)
    record = chunks.read_record(chunks.record_path(previous.tree.parent, previous.tree.name))
    copy = live_copy if live_copy is not None and live_copy.is_dir() else None
    return chunks.plan(table, record, previous.tree, copy)


def previous_on_disk(layout: Layout, target: Target, owner: str | None) -> reuse.Previous | None:
    """The tree live at the target's live path, if a new tree may share files with it (same owner)."""
    live = layout.live_tree(target.live_name)
    if live is None or live == (target.stack, target.version):
        return None
    tree = layout.persistent_tree(*live)
    manifest = tree_manifest(tree)
    if manifest is None or manifest.owner != owner or not _owned_by(tree, owner):
        return None
    return reuse.Previous.load(tree, reuse.index_path(tree.parent, live[0]))


def _owned_by(tree: Path, owner: str | None) -> bool:
    """Whether the tree, and its in-tree manifest, belong to the user the new tree will belong to.

    A tree given to its owner is that user's to change, the in-tree manifest that names the owner
    included: only the file system's record of who owns it says whose files a new tree would share.
    """
    wanted = switch.parse_owner(owner) if os.geteuid() == 0 else None  # only root gives trees away
    uid = wanted[0] if wanted is not None else os.geteuid()
    try:
        return os.lstat(tree).st_uid == uid and os.lstat(tree / IN_TREE_PATH).st_uid == uid
    except OSError:
        return False


def previous_on_ramdisk(layout: Layout, live_name: str, stack: str, version: str) -> reuse.RamdiskPrevious | None:
    live = layout.live_tree(live_name)
    if live is None or live == (stack, version):
        return None
    return reuse.RamdiskPrevious.load(layout.persistent_tree(*live), layout.ramdisk_copy(*live))


def load_ramdisk(
    layout: Layout, stack: str, version: str, live_name: str | None = None, written: bool = False
) -> None:
    """Put a version's ramdisk copy in place: rename the copy ``stage_tree`` wrote (``written``), or copy it."""
    dest = layout.ramdisk_copy(stack, version)
    partial = _partial(layout, stack, version)
    if written:
        faults.hit("ramdisk-copying")
        os.rename(partial, dest)
        faults.hit("ramdisk-copied")
        return
    switch.remove_tree(partial)
    log.step(f"{stack} {version}: loading onto the ramdisk {layout.tmpfs}")
    try:
        faults.hit("ramdisk-copying")
        previous = previous_on_ramdisk(layout, live_name or stack, stack, version)
        switch.copy_tree(layout.persistent_tree(stack, version), partial, previous)
        if previous is not None:
            reuse.report(f"{stack} {version} on the ramdisk", previous.linked, previous.linked_bytes)
    except OSError as exc:
        switch.remove_tree(partial)
        raise ActivateError(
            f"copying {stack} {version} onto the ramdisk {layout.tmpfs} failed ({exc}); "
            f"nothing live changed; free ramdisk space or grow it"
        ) from exc
    except BaseException:
        switch.remove_tree(partial)
        raise
    if dest.is_dir():
        # A damaged copy (``restore``): set aside, not deleted, since running kernels may
        # hold it; the last step drops it once unused. The live link names dest throughout.
        os.rename(dest, dest.with_name(f"{dest.name}{SET_ASIDE}{os.getpid()}"))
    os.rename(partial, dest)
    faults.hit("ramdisk-copied")


@dataclass(frozen=True)
class Dropped:
    removed: tuple[str, ...] = ()  # ramdisk copies removed
    kept: tuple[str, ...] = ()  # not live but in use: "<path> (in use by PID n)"


def _relocated_from(layout: Layout, target: Target) -> str | None:
    """The prefix a tree on the host was built for, when it is not its live path (it was relocated)."""
    manifest = tree_manifest(layout.persistent_tree(target.stack, target.version))
    if manifest is None or manifest.prefix == str(layout.live_path(target.live_name)):
        return None
    return manifest.prefix


SET_ASIDE = ".damaged-"  # restore renames a damaged copy ``.<tree>@<version>`` to ``<that>.damaged-<pid>``


def copy_users(copy: Path) -> list[int]:
    """PIDs using a ramdisk copy: those mapping it, and those mapping a damaged copy of it that
    ``restore`` set aside. The latter opened their files through the copy's path (their sys.prefix
    names it), so the copy loaded again in its place is the one they import from next."""
    users = inuse.users_of(copy)
    for aside in copy.parent.glob(glob.escape(copy.name + SET_ASIDE) + "*"):
        users += inuse.users_of(aside)
    return sorted(set(users))


def drop_unused_copies(layout: Layout, dry_run: bool = False) -> Dropped:
    """Remove ramdisk copies that are no longer live, unless a process still uses them; name both
    (``dry_run``: name them only)."""
    kept: list[str] = []
    removed: list[str] = []
    if not layout.production:
        return Dropped()
    live = set(layout.live_links().values())
    for entry in sorted(layout.tmpfs.iterdir()):
        name = entry.name
        if not (name.startswith(".") and "@" in name) or name.endswith(".partial") or not entry.is_dir():
            continue
        stack, version = name[1:].split("@", 1)
        if (stack, version) in live:
            continue
        users = copy_users(entry)
        if users:
            kept.append(f"{entry} (in use by PID {', '.join(map(str, users[:5]))})")
            log.info(f"keeping {entry}: still in use by PID {', '.join(map(str, users[:5]))}")
        else:
            if not dry_run:
                switch.remove_tree(entry)
            removed.append(str(entry))
    return Dropped(tuple(removed), tuple(kept))


def _apply(layout: Layout, plans: list[StackPlan], hdd: str | None, sources: dict[str, str]) -> Outcome:
    state = HostState.load(layout)
    space.check(space_needs(layout, plans), layout)
    moved: dict[str, str | None] = {}
    try:
        for p in plans:
            if p.extract:
                moved[p.target.stack] = stage_tree(layout, p)
        for p in plans:
            if p.copy:
                load_ramdisk(layout, p.target.stack, p.target.version, p.target.live_name, written=p.extract)
    except BaseException:
        # A release refused at its second stack leaves nothing of its first on the ramdisk: the
        # partial copies go as a killed run's would, the loaded ones as unused copies do.
        clean_leftovers(layout)
        drop_unused_copies(layout)
        raise
    # Commit: every tree is complete; each switch is one rename.
    # Held signals: a Ctrl-C lands after the record and sw.hdd, never between a switch and them.
    with switch.signals_held():
        for p in plans:
            if p.switch:
                # What the link served until now (not the recorded previous version: after a
                # reboot, ``restore`` switches from nothing).
                before = layout.live_version(p.target.live_name)
                switch.replace_symlink(
                    layout.live_link(p.target.live_name), layout.link_target(p.target.stack, p.target.version)
                )
                log.info(
                    f"{p.target.live_name}: {before or 'nothing'} -> {p.target.version} "
                    f"({p.target.stack}) is live at {layout.live_path(p.target.live_name)}"
                )
        faults.hit("switched")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for p in plans:
            name = p.target.live_name
            if p.record or p.target.stack in moved:
                old = state.stacks.get(name)
                same = old is not None and old.version == p.target.version  # else the old record is another tree's
                entry = StackState(
                    version=p.target.version,
                    previous=p.previous,
                    source=sources.get(p.target.stack) or (old.source if old and same else ""),
                    relocated_from=moved.get(p.target.stack, old.relocated_from if old and same
                                             else _relocated_from(layout, p.target)),
                    activated_at=now if p.switch or p.record else (old.activated_at if old else now),
                    tree="" if p.target.stack == name else p.target.stack,
                    previous_tree="" if p.previous_tree in (None, name) else str(p.previous_tree),
                )
                state = state.with_stack(name, entry)
        if any(p.record or p.extract for p in plans):
            _write_state(layout, state, [p for p in plans if p.switch])
        faults.hit("state-written")
        hdd_changed = False
        if hdd is not None and layout.version_dir(hdd).is_dir():
            if layout.hdd.exists() and not layout.hdd.is_symlink():
                log.warn(f"{layout.hdd} is a real directory, not a link; leaving it alone")
            else:
                hdd_changed = switch.replace_symlink(layout.hdd, f"sw.{hdd}")
        faults.hit("hdd-switched")
    kept = drop_unused_copies(layout).kept
    results = []
    for p in plans:
        steps = [
            s
            for s, on in (
                ("extracted", p.extract),
                ("loaded onto the ramdisk", p.copy),
                ("switched", p.switch),
                ("recorded", p.record),
            )
            if on
        ]
        results.append(
            StackResult(
                p.target.live_name,
                p.target.version,
                p.previous,
                changed=bool(steps),
                steps=tuple(steps),
                relocated_from=moved.get(p.target.stack),
                kept_in_use=kept,
                tree=p.target.stack,
            )
        )
    if hdd_changed and results and not any(r.changed for r in results):
        results[-1] = replace(results[-1], changed=True, steps=("sw.hdd switched",))
    return Outcome(tuple(results), hdd)


def _write_state(layout: Layout, state: HostState, switched: list[StackPlan]) -> None:
    """Record ``state``; a write that fails after a switch (a full disk) says what is live unrecorded.

    The machine's bare 'No space left on device', exit 1, read as 'nothing happened' while the
    switch had already been made, and `restore` (a reboot) would bring back the recorded version.
    """
    try:
        atomic_write_text(layout.state_file, state.to_json())
    except OSError as exc:
        if not switched:
            raise
        live = ", ".join(f"{p.target.live_name} {p.target.version}" for p in switched)
        # One command per stack: a bare `set-version V` would also switch V's other stacks.
        again = " and ".join(
            layout.command(f"set-version {p.target.version} --stack {p.target.stack}") for p in switched
        )
        raise SwstackError(
            f"{layout.state_file}: {exc.strerror or exc}; switched but not recorded: {live} is live, "
            f"the record (what restore and a reboot bring back) is unchanged; free the disk, then "
            f"{again} records it"
        ) from exc


def _run_locked(root: Path, wait: float, body: object) -> Outcome:
    layout = Layout(root)
    prepare_root(layout)
    with host_lock(layout.lock_file, wait):
        faults.hit("locked")
        clean_leftovers(layout)
        return body(layout)  # type: ignore[operator,no-any-return]


# ---------------------------------------------------------------- commands


_RELEASE_SHAPE = 'a [stacks] table of name = "<source>" (path, URL or OCI reference)'


class Release(dict[str, str]):
    """A release file read: {source: the stack name it gives}, and where each name is written."""

    def __init__(self, names: Mapping[str, str], where: Mapping[str, str]):
        super().__init__(names)
        self.where = dict(where)  # source -> "file:line" of its key


def read_release(path: Path) -> Release:
    """A release manifest: TOML ``[stacks] py3 = "<source>"`` or JSON ``{"stacks": {...}}`` -> {source: name}.

    Every mistake is one ``ActivateError`` line naming the file (and line, for TOML) and the field."""
    import json

    from .. import toml as tomllib
    from ..tomlloc import decode_error_at, index_lines, line_of

    is_json = path.suffix == ".json"
    text = signature.read_utf8(path, "the release manifest")
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        if is_json:
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
            lines = index_lines(text)
    except json.JSONDecodeError as exc:
        raise ActivateError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        line, reason = decode_error_at(exc)
        raise ActivateError(f"{path}{f':{line}' if line else ''}: not valid TOML: {reason}") from None

    def where(*key: str) -> str:
        line = line_of(lines, key) if lines else None
        return f"{path}:{line}" if line else str(path)

    if not isinstance(data, dict):
        raise ActivateError(f"{path}: expected a JSON object {{\"stacks\": {{...}}}}, got {type(data).__name__}")
    for key in data:
        if key != "stacks":
            raise ActivateError(f"{where(key)}: {key}: unknown key; a release holds only {_RELEASE_SHAPE}")
    stacks = data.get("stacks")
    if not isinstance(stacks, dict) or not stacks:
        got = "nothing" if stacks is None else json.dumps(stacks, default=str)
        raise ActivateError(f"{where('stacks')}: stacks: expected {_RELEASE_SHAPE}, got {got}")
    base = path.parent
    out: dict[str, str] = {}
    located: dict[str, str] = {}
    for name, value in stacks.items():
        if not name or not name.isprintable():
            raise ActivateError(f"{where('stacks')}: stacks: {name!r} is not a stack name; name the stack it holds")
        if not isinstance(value, str) or not value.strip():
            raise ActivateError(
                f"{where('stacks', name)}: stacks.{name}: expected the stack's source as a non-empty string "
                f"(path, URL or OCI reference), got {json.dumps(value, default=str)}"
            )
        spec = str(base / value) if source.kind_of(value) == "path" and not os.path.isabs(value) else value
        if spec in out:
            raise ActivateError(
                f"{where('stacks', name)}: stacks.{name}: the same source as stacks.{out[spec]}; "
                f"give each stack its own artifact"
            )
        out[spec] = str(name)
        located[spec] = where("stacks", name)
    return Release(out, located)


def activate(
    root: Path,
    sources: list[str],
    wait: float = 0.0,
    policy: signature.TrustPolicy | None = None,
    names: Release | None = None,
) -> Outcome:
    """Fetch, verify (signatures too, when ``policy`` requires them), extract and switch the artifacts together.

    ``names``: the stack a release file says each source holds (``read_release``), checked."""
    if not sources:
        raise ActivateError("nothing to activate: give artifact sources or --release FILE")
    trust = policy or signature.TrustPolicy()

    def body(layout: Layout) -> Outcome:
        try:
            return activate_fetched(layout, [signature.fetch(s, layout.downloads, trust) for s in sources])
        finally:
            _empty_downloads(layout)

    def activate_fetched(layout: Layout, artifacts: list[source.Artifact]) -> Outcome:
        targets: dict[str, Target] = {}
        for art in artifacts:
            check_platform(art.manifest, art.source, host_platform())
            said = names.get(art.source) if names else None
            if names and said is not None and said not in (art.manifest.stack, art.manifest.stack_id):
                raise ActivateError(
                    f"{names.where[art.source]}: the release names {art.source} {said}, but it holds "
                    f"{art.manifest.stack_id}; fix the release file's key"
                )
            # At fetch, before any plan: a broken artifact is refused even when its version's
            # tree is already here (then it is not read again).
            expected = expectations(art)
            stack = check_name("stack", art.manifest.stack_id)
            live = live_name(art.manifest.prefix)
            if live in targets:
                other = targets[live]
                source_of = other.artifact.source if other.artifact else other.stack
                raise ActivateError(
                    f"{source_of} ({other.stack} {other.version}) and {art.source} ({stack} "
                    f"{art.manifest.version}) both answer to {layout.live_path(live)}; "
                    f"give one artifact per live path"
                )
            targets[live] = Target(stack, check_name("version", art.manifest.version), art, live, expected)
        state = HostState.load(layout)
        plans = [plan_stack(layout, state, t) for t in targets.values()]
        hdd = plans[-1].target.version
        return _apply(
            layout, plans, hdd, {t.stack: recorded_source(t.artifact.source) for t in targets.values() if t.artifact}
        )

    return _run_locked(root, wait, body)


def recorded_source(given: str) -> str:
    """A source as ``state.json`` keeps it: a path made absolute (relative to where the command ran,
    it would mean nothing to the next reader), a URL or OCI reference as given."""
    return os.path.abspath(given) if source.kind_of(given) == "path" else given


def _empty_downloads(layout: Layout) -> None:
    """Remove what runs downloaded (http, OCI): once extracted, or refused, a download is of no
    further use, and the root's disk must not fill with every version ever fetched. We hold the
    lock, so no other run is downloading."""
    if layout.downloads.is_dir():
        for entry in layout.downloads.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                switch.remove_tree(entry)
            else:
                entry.unlink()


def parse_version_arg(arg: str, root: Path) -> tuple[str, str | None]:
    """``set-version``'s argument -> (version, tree or None).

    ``2026.11.01``, ``sw.2026.11.01``, ``<root>/sw.2026.11.01`` name a version;
    ``<root>/sw.2026.11.01/py3`` a version and one of its trees. A path must lie under ``root``."""
    text = arg.rstrip("/")
    if "/" not in text:
        return normalize_version(text), None
    path = Path(text)
    tree: str | None = None
    if path.parent.name.startswith("sw.") and not path.name.startswith("sw."):
        path, tree = path.parent, path.name
    if not path.name.startswith("sw."):
        raise ActivateError(
            f"{arg}: not a version; give VERSION, sw.VERSION, {root}/sw.VERSION or {root}/sw.VERSION/<stack>"
        )
    if os.path.realpath(path.parent) != os.path.realpath(root):
        raise ActivateError(
            f"{arg} is not under the root {root}; pass --root {path.parent} to switch that root's versions"
        )
    return normalize_version(path.name), tree


def set_version(root: Path, version: str, stack: str | None = None, wait: float = 0.0) -> Outcome:
    """Make a version already on the host live (all its stacks, or one); ``version`` may be a path
    to the version's directory or to one of its trees (see ``parse_version_arg``)."""
    name, tree_arg = parse_version_arg(version, root)
    version = check_name("version", name)
    if tree_arg is not None and stack is not None and stack != tree_arg:
        raise ActivateError(f"the path names the stack {tree_arg} but --stack says {stack}; give one of them")
    stack = stack or tree_arg

    def body(layout: Layout) -> Outcome:
        if not layout.version_dir(version).is_dir():
            raise ActivateError(
                f"{layout.version_dir(version)}: no such version on this host; "
                f"versions here: {', '.join(layout.versions()) or 'none'}"
            )
        trees = {s: layout.live_name_of(s, version) for s in layout.stacks_in(version)}
        if stack:
            chosen = {s: live for s, live in trees.items() if stack in (s, live)}
            if not chosen:
                given = "the path" if tree_arg is not None else "--stack"
                raise ActivateError(_unknown_stack(layout, version, stack, trees, given))
            trees = chosen
        if not trees:
            raise ActivateError(f"{layout.version_dir(version)} holds no stack")
        by_live: dict[str, str] = {}
        for tree, live in sorted(trees.items()):
            if live in by_live:
                raise ActivateError(
                    f"{layout.version_dir(version)} holds {by_live[live]} and {tree}, both for "
                    f"{layout.live_path(live)}: pick one with --stack"
                )
            by_live[live] = tree
        state = HostState.load(layout)
        plans = [
            plan_stack(layout, state, Target(check_name("stack", tree), version, None, live))
            for live, tree in by_live.items()
        ]
        return _apply(layout, plans, version, {})

    return _run_locked(root, wait, body)


def _unknown_stack(layout: Layout, version: str, stack: str, trees: dict[str, str], given: str = "--stack") -> str:
    """Why ``--stack`` (or a tree path, ``given``) names nothing in ``version``: a stack of other versions, or none."""
    elsewhere = [
        v for v in layout.versions() if any(stack in (s, layout.live_name_of(s, v)) for s in layout.stacks_in(v))
    ]
    if elsewhere:
        return (
            f"{layout.version_dir(version)} has no stack {stack} (it holds {', '.join(sorted(trees)) or 'none'}); "
            f"versions with {stack}: {', '.join(elsewhere)}"
        )
    known = ", ".join(sorted({s for v in layout.versions() for s in layout.stacks_in(v)})) or "none"
    named = f"--stack {stack}" if given == "--stack" else f"{layout.version_dir(version) / stack} (the path given)"
    return f"{named}: unknown stack, no version on this host holds it; known stacks: {known}"


def restore(root: Path, wait: float = 0.0) -> Outcome:
    """After a reboot: load the recorded active versions onto the (empty) ramdisk and relink them.

    Stack by stack: one that cannot be restored (its persistent tree gone, say) is named in
    ``Outcome.failed`` and the others are still served.
    """

    def body(layout: Layout) -> Outcome:
        state = HostState.load(layout)
        # restore never moves sw.hdd (it is on disk and survives a reboot); its outcome still says
        # where it points, as activate's and set-version's do, not null beside a sw.hdd in place.
        if not state.stacks:
            log.info(f"nothing recorded in {layout.state_file}; nothing to restore")
            return Outcome((), layout.hdd_version())
        results: list[StackResult] = []
        failed: list[str] = []
        for name, entry in sorted(state.stacks.items()):
            try:
                results += _restore_stack(layout, state, name, entry).results
            except ActivateError as exc:
                failed.append(f"{name}: not restored: {exc}")
        return Outcome(tuple(results), layout.hdd_version(), tuple(failed))

    return _run_locked(root, wait, body)


def _restore_stack(layout: Layout, state: HostState, name: str, entry: StackState) -> Outcome:
    """Load one recorded version onto the ramdisk (again, if its copy is damaged) and relink it."""
    tree = entry.tree_of(name)
    target = Target(tree, entry.version, None, name)
    plan = plan_stack(layout, state, target, reload_copy=_copy_differs(layout, tree, entry.version))
    return _apply(layout, [plan], None, {})


def _copy_differs(layout: Layout, stack: str, version: str) -> bool:
    """Whether the version's ramdisk copy is there but differs from its persistent tree (verified when
    it was activated, not hashed against the artifact again), as ``active --verify`` compares them:
    type, mode, size, mtime and sha256, file by file (a change that kept size and mtime shows only in
    the hash)."""
    copy, persistent = layout.ramdisk_copy(stack, version), layout.persistent_tree(stack, version)
    if not (layout.production and copy.is_dir() and persistent.is_dir()):
        return False
    differences = compare_trees(persistent, copy, by_hash=True)
    if differences:
        more = f" and {len(differences) - 1} more" if len(differences) > 1 else ""
        log.warn(f"{copy} differs from {persistent} ({differences[0]}{more}); loading it again")
    return bool(differences)


# ---------------------------------------------------------------- reports


@dataclass(frozen=True)
class StackStatus:
    stack: str  # the live name
    tree: str | None  # the variant's tree (stack id) the live path serves
    variant: str | None
    version: str | None
    recorded: str | None
    previous: str | None
    live_path: str
    served_from: str | None
    persistent: str | None
    in_sync: bool | None  # None: no ramdisk in this configuration
    differences: tuple[str, ...] = ()


def _snapshot(tree: Path, by_hash: bool) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, tree)
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            elif by_hash:
                out[rel] = ("file", mode, st.st_size, st.st_mtime_ns, sha256_file(Path(path)))
            else:
                out[rel] = ("file", mode, st.st_size, st.st_mtime_ns)
    return out


def compare_trees(a: Path, b: Path, by_hash: bool) -> list[str]:
    """Relative paths whose type, mode, size and mtime (and, ``by_hash``, content hash) differ between two trees."""
    left, right = _snapshot(a, by_hash), _snapshot(b, by_hash)
    return sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))


def _stack_status(
    layout: Layout, name: str, entry: StackState | None, link: tuple[str, str] | None, verify: bool
) -> StackStatus:
    tree, version = link or (entry.tree_of(name) if entry else name, None)
    persistent = layout.persistent_tree(tree, version) if version else None
    served = layout.served_tree(tree, version) if version else None
    manifest = tree_manifest(persistent) if persistent else None
    variant = manifest.variant if manifest else None
    in_sync: bool | None = None
    diffs: list[str] = []
    if version and layout.production:
        if served and served.is_dir() and persistent and persistent.is_dir():
            diffs = compare_trees(persistent, served, verify)
            in_sync = not diffs
        else:
            in_sync = False
            diffs = [f"missing: {p}" for p in (served, persistent) if p and not p.is_dir()]
    return StackStatus(
        name,
        tree if version else None,
        variant,
        version,
        entry.version if entry else None,
        entry.previous if entry else None,
        str(layout.live_path(name)),
        str(served) if served else None,
        str(persistent) if persistent else None,
        in_sync,
        tuple(diffs),
    )


# A switch made while ``active`` reads (it takes no lock) is read again, this many times at most.
_ACTIVE_ATTEMPTS = 5


def active(root: Path, verify: bool = False) -> list[StackStatus]:
    """Each live path's status. ``active`` takes no lock, so a switch can land while it compares a
    copy (whose old version is then removed under it) or between reading the record and the link:
    a stack whose link or record moved meanwhile is read again, never reported as a damaged copy."""
    layout = Layout(root)
    require_root(layout)
    state = HostState.load(layout)
    names = set(state.stacks) | set(layout.live_links())
    out = []
    for name in sorted(names):
        for attempt in range(_ACTIVE_ATTEMPTS):
            entry, link = state.stacks.get(name), layout.live_tree(name)
            try:
                status: StackStatus | None = _stack_status(layout, name, entry, link, verify)
            except FileNotFoundError:  # a file of a copy being removed
                if attempt == _ACTIVE_ATTEMPTS - 1:
                    raise
                status = None
            state = HostState.load(layout)
            if status is not None and layout.live_tree(name) == link and state.stacks.get(name) == entry:
                break
        assert status is not None
        out.append(status)
    return out


@dataclass(frozen=True)
class VersionInfo:
    version: str
    stacks: tuple[str, ...]
    active: tuple[str, ...]
    previous: tuple[str, ...]
    size: int


def list_versions(root: Path) -> tuple[list[VersionInfo], str | None]:
    layout = Layout(root)
    require_root(layout)
    state = HostState.load(layout)
    out = []
    for v in layout.versions():
        stacks = tuple(layout.stacks_in(v))
        size = 0
        for s in stacks:
            manifest = tree_manifest(layout.persistent_tree(s, v))
            size += manifest.total_size if manifest else 0
        out.append(
            VersionInfo(
                v,
                stacks,
                tuple(s for s in stacks if layout.is_live(s, v)),
                tuple(s for s, e in state.stacks.items() if e.previous == v),
                size,
            )
        )
    return out, layout.hdd_version()


@dataclass(frozen=True)
class Diff:
    stack: str
    a: str
    b: str
    added: tuple[tuple[str, str], ...]
    removed: tuple[tuple[str, str], ...]
    changed: tuple[tuple[str, str, str], ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _manifest_for(layout: Layout, ref: str, stack: str | None) -> Manifest:
    path = Path(ref)
    if path.is_file() or (path.is_dir() and (path / "manifest.json").is_file()):
        with reraise(ActivateError):
            return load_manifest(path)
    version = normalize_version(ref)
    stacks = layout.stacks_in(version)
    if not stacks:
        raise ActivateError(
            f"{ref}: neither a manifest.json nor a version on this host "
            f"(versions: {', '.join(layout.versions()) or 'none'})"
        )
    if stack is None:
        if len(stacks) > 1:
            raise ActivateError(f"version {version} holds {', '.join(stacks)}: pick one with --stack")
        stack = stacks[0]
    if stack not in stacks:
        raise ActivateError(f"version {version} has no {stack}; stacks there: {', '.join(stacks)}")
    return read_tree_manifest(layout.persistent_tree(stack, version))


def _pkg_label(p: object) -> str:
    build = getattr(p, "build", "")
    return f"{getattr(p, 'version', '')}" + (f"={build}" if build else "")


def diff_packages(a: Manifest, b: Manifest) -> Diff:
    """Packages added, removed and changed from manifest ``a`` to ``b`` (pure)."""
    left = {(p.manager, p.name): p for p in a.packages}
    right = {(p.manager, p.name): p for p in b.packages}
    added = tuple(sorted((k[1], _pkg_label(right[k])) for k in right.keys() - left.keys()))
    removed = tuple(sorted((k[1], _pkg_label(left[k])) for k in left.keys() - right.keys()))
    changed = tuple(
        sorted(
            _changed_labels(k[1], left[k], right[k])
            for k in left.keys() & right.keys()
            if (left[k].version, left[k].build, left[k].sha256)
            != (right[k].version, right[k].build, right[k].sha256)
        )
    )
    return Diff(a.stack_id, a.version, b.version, added, removed, changed)


def _changed_labels(name: str, old: PackageEntry, new: PackageEntry) -> tuple[str, str, str]:
    """(name, old label, new label); when version and build are the same, the labels carry the
    short sha256 so that a rebuilt package shows what changed: ``1.0=py_0 sha256:1a2b3c4d5e6f``."""
    before, after = _pkg_label(old), _pkg_label(new)
    if before == after:
        before += f" sha256:{(old.sha256 or 'none')[:12]}"
        after += f" sha256:{(new.sha256 or 'none')[:12]}"
    return name, before, after


def diff(root: Path, a: str, b: str, stack: str | None = None) -> Diff:
    layout = Layout(root)
    first, second = _manifest_for(layout, a, stack), _manifest_for(layout, b, stack)
    if first.stack != second.stack:  # variants of one stack compare; two stacks do not
        raise ActivateError(
            f"{a} is {first.stack} and {b} is {second.stack}: diff compares two versions of one stack"
        )
    return diff_packages(first, second)


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[str, ...]
    keep: dict[str, str] = field(default_factory=dict)  # version -> why


@dataclass(frozen=True)
class Pruned:
    plan: PrunePlan
    copies: tuple[str, ...] = ()  # ramdisk copies removed (dry run: that would be): no longer live and unused
    dry_run: bool = False
    kept_in_use: tuple[str, ...] = ()  # ramdisk copies no longer live that a process uses: "<path> (in use by PID n)"

    @property
    def changed(self) -> bool:
        return not self.dry_run and bool(self.plan.remove or self.copies)


def plan_prune(
    versions: list[str], keep: int, protected: dict[str, str], foreign: Mapping[str, str] | None = None
) -> PrunePlan:
    """Keep the ``keep`` newest and every protected version (pure). ``foreign``: version directories
    holding something swstack did not put there -> what; never removed, nor counted among the newest."""
    foreign = foreign or {}
    ordered = sorted((v for v in versions if v not in foreign), key=version_key)
    newest = set(ordered[-keep:]) if keep > 0 else set()
    reasons = {v: "newest" for v in newest}
    reasons.update({v: why for v, why in protected.items() if v in ordered})
    reasons.update({v: f"not made by swstack: {what}" for v, what in foreign.items()})
    return PrunePlan(tuple(v for v in ordered if v not in reasons), reasons)


def _protected_versions(layout: Layout, state: HostState) -> dict[str, str]:
    """Versions prune must keep, and why: recorded, previous, live, sw.hdd's, or in use."""
    protected: dict[str, str] = {}
    for name, entry in state.stacks.items():
        if entry.previous:
            protected.setdefault(entry.previous, f"previous version of {name}")
        protected[entry.version] = f"recorded active version of {name}"
    for live, (tree, v) in layout.live_links().items():
        protected[v] = f"live version of {live} ({tree})"
    hdd = layout.hdd_version()
    if hdd is not None:
        protected.setdefault(hdd, "sw.hdd points at it")
    for v in layout.versions():
        if v in protected:
            continue
        users = inuse.users_of(layout.version_dir(v))
        users += [
            u
            for s in layout.stacks_in(v)
            if layout.production
            for u in copy_users(layout.ramdisk_copy(s, v))
        ]
        if users:
            protected[v] = f"in use by PID {', '.join(map(str, sorted(set(users))[:5]))}"
    return protected


def prune(root: Path, keep: int, dry_run: bool = False, wait: float = 0.0) -> Pruned:
    if keep < 0:
        raise ActivateError("--keep must be 0 or more")

    result = Pruned(PrunePlan(()), dry_run=dry_run)

    def body(layout: Layout) -> Outcome:
        nonlocal result
        state = HostState.load(layout)
        versions = layout.versions()
        foreign = {v: what for v in versions if (what := layout.foreign_content(v)) is not None}
        plan = plan_prune(versions, keep, _protected_versions(layout, state), foreign)
        result = Pruned(plan, dry_run=dry_run)
        if dry_run:
            dropped = drop_unused_copies(layout, dry_run=True)
            result = Pruned(plan, dropped.removed, dry_run=True, kept_in_use=dropped.kept)
            return Outcome(())
        trash = layout.private / "trash"
        for v in plan.remove:
            trash.mkdir(exist_ok=True)
            # Rename first: a half-deleted version never looks like a version.
            doomed = trash / f"sw.{v}"
            os.rename(layout.version_dir(v), doomed)
            switch.remove_tree(doomed)
            log.info(f"removed {layout.version_dir(v)}")
        dropped = drop_unused_copies(layout)
        result = Pruned(plan, dropped.removed, kept_in_use=dropped.kept)
        return Outcome(())

    _run_locked(root, wait, body)
    return result
