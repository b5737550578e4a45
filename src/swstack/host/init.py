"""Root directory -> the host layout created (sw -> sw.tmpfs, .swstack), its owners set, the ramdisk checked.

``swstack init`` is the seed's step S1.1 made repeatable: it creates what is missing,
gives the layout to root when run as root, and checks that ``sw.tmpfs`` really is a
tmpfs mount (from ``/proc/self/mountinfo``). When it is not, it prints the fstab line
that mounts it; it never mounts anything itself. Nothing changed -> exit 3.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..errors import ActivateError
from . import switch
from .layout import Layout, command

_SIZE_RE = re.compile(r"^[1-9][0-9]*[kKmMgGtT%]?$")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
LAYOUT_MODE = 0o755


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    options: str
    super_options: str = ""  # the filesystem's own: a tmpfs shows mode=755 here unless it is 1777


@dataclass(frozen=True)
class InitResult:
    root: str
    changes: tuple[str, ...]
    tmpfs_mounted: bool
    tmpfs_size: int | None  # bytes, when mounted
    fstab_line: str

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def check_size(size: str) -> str:
    """A tmpfs ``size=`` value: 32G, 512M, 50% (pure)."""
    if not _SIZE_RE.match(size):
        raise ActivateError(f"--ramdisk-size {size!r}: give a tmpfs size such as 32G, 512M or 50%")
    return size


def size_bytes(size: str) -> int | None:
    """32G -> bytes; None for a percentage (pure)."""
    if size.endswith("%"):
        return None
    unit = size[-1].lower()
    return int(size[:-1]) * _UNITS[unit] if unit in _UNITS else int(size)


def fstab_line(tmpfs: Path, size: str) -> str:
    """The line that mounts the ramdisk: mode=0755, or every boot brings it back 1777 (tmpfs's default)."""
    return f"tmpfs {tmpfs} tmpfs nodev,nosuid,nodiratime,size={size},mode=0755 0 0"


def tmpfs_mode(mount: Mount) -> int:
    """The mode a tmpfs gives its root at each mount, from its options (pure); 1777 when none is given."""
    for option in mount.super_options.split(","):
        if option.startswith("mode="):
            try:
                return int(option[len("mode="):], 8)
            except ValueError:
                break
    return 0o1777


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """``/proc/self/mountinfo`` -> mounts in mount order (pure)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        rest = right.split()
        if not rest:
            continue
        out.append(Mount(_unescape(fields[4]), rest[0], fields[5] if len(fields) > 5 else "",
                         rest[2] if len(rest) > 2 else ""))
    return out


def mount_at(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> Mount | None:
    """The mount whose mount point is ``path`` (the last one mounted there), if any."""
    try:
        mounts = parse_mountinfo(mountinfo.read_text(errors="replace"))
    except OSError:
        return None
    real = os.path.realpath(path)
    found = [m for m in mounts if m.point == real]
    return found[-1] if found else None


def _ensure_dir(path: Path, changes: list[str]) -> None:
    if path.is_symlink() and not path.is_dir():
        raise ActivateError(f"{path} is a dangling link; remove it and run {command(path.parent, 'init')} again")
    if not path.is_dir():
        if path.exists():
            raise ActivateError(f"{path} exists and is not a directory; move it aside and run again")
        path.mkdir(mode=LAYOUT_MODE)
        changes.append(f"created {path}")


def _ensure_owner(path: Path, changes: list[str]) -> None:
    """Root-owned, 0755: only root may create or switch versions."""
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, 0, 0)
        changes.append(f"owner of {path} set to 0:0")
    if st.st_mode & 0o7777 != LAYOUT_MODE:
        os.chmod(path, LAYOUT_MODE)
        changes.append(f"mode of {path} set to {LAYOUT_MODE:o}")


def check_no_takeover_through_link(path: Path) -> None:
    """A link (``sw.tmpfs -> /dev/shm``) is not made root's 0755: chown and chmod follow it, and would
    lock every other user out of a directory shared with them. Already root's 0755, it is left as it is."""
    if not path.is_symlink() or not path.is_dir():
        return  # a dangling link or a file is refused by _ensure_dir
    st = os.stat(path)
    if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, 0, LAYOUT_MODE):
        raise ActivateError(
            f"{path} is a link to {os.path.realpath(path)} (owner {st.st_uid}:{st.st_gid}, mode "
            f"{st.st_mode & 0o7777:o}), which init would give to root with mode {LAYOUT_MODE:o}; it changes "
            f"nothing through a link: make {path} a directory of its own (for sw.tmpfs: the ramdisk's mount point) "
            f"and run again"
        )


def check_sw_linkable(layout: Layout) -> None:
    """``sw`` is the link to ``sw.tmpfs``, or can become it: else one line saying why not and what to do.

    A real ``sw`` directory becomes the link only when empty (what a refused activation of a
    root without ``sw.tmpfs`` leaves). One holding only swstack's live links into ``sw.<version>/``
    is a root served from disk: it gets the steps to the ramdisk. Anything else is the seed's
    hand-made tree."""
    sw = layout.sw
    if sw.is_symlink():
        if os.path.realpath(sw) != os.path.realpath(layout.tmpfs):
            raise ActivateError(f"{sw} points at {os.readlink(sw)}, not sw.tmpfs; "
                                f"fix the link (ln -sfn sw.tmpfs {sw}) and run again")
    elif sw.is_dir():
        entries = list(sw.iterdir())
        if entries and all(e.is_symlink() and os.readlink(e).startswith("../sw.") for e in entries):
            raise ActivateError(
                f"{sw} holds the live links of this root served from disk (it was activated before "
                f"`swstack init`); to serve it from the ramdisk, run `rm -r {sw}` (links only) and "
                f"{layout.command('init')}, then {layout.command('restore')} loads the live versions "
                f"(they are not live in between)"
            )
        if entries:
            raise ActivateError(f"{sw} is a real directory; move its trees into {layout.root}/sw.<version>/ "
                                f"and run {layout.command('init')} again (production links sw -> sw.tmpfs)")
    elif sw.exists():
        raise ActivateError(f"{sw} exists and is not a directory; move it aside and run again")


def link_sw(layout: Layout) -> bool:
    """Make ``sw`` the link to ``sw.tmpfs`` (``check_sw_linkable`` passed); True when it was not."""
    if layout.sw.is_symlink():
        return False
    if layout.sw.is_dir():
        layout.sw.rmdir()  # empty, as checked
    switch.replace_symlink(layout.sw, "sw.tmpfs")
    return True


def init(root: Path, ramdisk_size: str = "32G", mountinfo: Path = Path("/proc/self/mountinfo")) -> InitResult:
    """Create the production layout under ``root``; check the ramdisk; say what changed."""
    check_size(ramdisk_size)
    layout = Layout(root)
    changes: list[str] = []
    if not root.is_dir():
        if root.exists() or root.is_symlink():
            what = "a dangling link" if not root.exists() else "not a directory"
            raise ActivateError(f"--root {root}: {what}; pass --root a directory, or a path to create")
        try:
            root.mkdir(parents=True, mode=LAYOUT_MODE)
        except OSError as exc:
            raise ActivateError(
                f"--root {root}: cannot create it ({exc.strerror or exc}"
                f"{f': {exc.filename}' if exc.filename and str(exc.filename) != str(root) else ''}); "
                f"pass --root a directory, or a path under one you may write to"
            ) from None
        changes.append(f"created {root}")
    check_sw_linkable(layout)  # first: a refusal changes nothing
    if os.geteuid() == 0:
        for path in (root, layout.tmpfs, layout.private):
            check_no_takeover_through_link(path)
    _ensure_dir(layout.tmpfs, changes)
    _ensure_dir(layout.private, changes)
    if link_sw(layout):
        changes.append(f"linked {layout.sw} -> sw.tmpfs")
    if os.geteuid() == 0:
        for path in (root, layout.tmpfs, layout.private):
            _ensure_owner(path, changes)
    else:
        log.warn(f"not root: the layout keeps its current owners (run {layout.command('init')} as root to set them)")
    mount = mount_at(layout.tmpfs, mountinfo)
    mounted = mount is not None and mount.fstype == "tmpfs"
    line = fstab_line(layout.tmpfs, ramdisk_size)
    size: int | None = None
    if mounted:
        assert mount is not None
        mode = tmpfs_mode(mount)
        if mode != LAYOUT_MODE:
            anyone = ", writable by every user" if mode & 0o002 else ""
            log.warn(
                f"{layout.tmpfs} is a tmpfs mounted with mode {mode:o}{anyone}, and each boot mounts it so again "
                f"whatever init sets; add mode=0755 to its options in /etc/fstab: {line}"
            )
        st = os.statvfs(layout.tmpfs)
        size = st.f_blocks * st.f_frsize
        wanted = size_bytes(ramdisk_size)
        if wanted is not None and size < wanted:
            log.warn(
                f"{layout.tmpfs} is a tmpfs of {log.human_bytes(size)}, less than the {ramdisk_size} asked for; "
                f"grow it: mount -o remount,size={ramdisk_size} {layout.tmpfs} (and its /etc/fstab line)"
            )
    else:
        what = f"a {mount.fstype} mount" if mount else "not a mount point"
        log.warn(
            f"{layout.tmpfs} is {what}, not a tmpfs: the stacks would be served from disk. "
            f"Add this line to /etc/fstab, then `mount {layout.tmpfs}`: {line}"
        )
    return InitResult(str(root), tuple(changes), mounted, size, line)
