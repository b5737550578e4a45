"""Bytes a step will write + the filesystem it writes to -> go, or "need X, have Y"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import log
from ..errors import ActivateError
from ..log import human_bytes

if TYPE_CHECKING:
    from .layout import Layout

# Files occupy whole blocks; half a block per file on average is what trees of
# conda packages show, plus one block per directory entry for metadata.
_BLOCK = 4096


def estimate(total_size: int, file_count: int) -> int:
    """Space a tree of ``file_count`` files holding ``total_size`` bytes takes on disk or tmpfs."""
    return total_size + file_count * _BLOCK


@dataclass(frozen=True)
class SpaceNeed:
    what: str  # "disk" | "ramdisk"
    path: Path
    need: int
    shareable: int = 0  # of ``need``, at most this much may be hardlinks to a kept version


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def check(needs: list[SpaceNeed], layout: Layout) -> None:
    """Raise before anything is written if any filesystem lacks room (needs on one fs add up)."""
    by_fs: dict[int, list[SpaceNeed]] = {}
    for n in needs:
        probe = n.path
        while not probe.exists():
            probe = probe.parent
        by_fs.setdefault(os.stat(probe).st_dev, []).append(n)
    for group in by_fs.values():
        total = sum(n.need for n in group)
        least = sum(max(0, n.need - n.shareable) for n in group)
        have = free_bytes(group[0].path)
        names = " + ".join(sorted({n.what for n in group}))
        if least > have:
            raise ActivateError(
                f"not enough space on the {names} ({group[0].path}): need {human_bytes(least)}, "
                f"have {human_bytes(have)}; {_remedy({n.what for n in group}, layout)}"
            )
        if total > have:
            # Files shared with the live version take no space; how many are is known only
            # once they are read. A filesystem that fills up stops the activation cleanly.
            log.warn(
                f"the {names} ({group[0].path}) has {human_bytes(have)} free, less than a full copy "
                f"({human_bytes(total)}); going on, since files shared with the live version need no room"
            )


def _remedy(what: set[str], layout: Layout) -> str:
    """What frees room: prune removes old versions from the disk, but on the ramdisk only copies
    that are neither live nor in use, so a ramdisk holding the live versions must grow."""
    if what == {"ramdisk"}:
        return (f"grow the ramdisk (`mount -o remount,size=...`, and size= in its fstab line); "
                f"{layout.command('prune')} frees only copies that are neither live nor in use")
    return f"free space ({layout.command('prune --keep N')}) or grow it"
