"""A directory -> the processes using files under it (maps, cwd, exe, open fds), from /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _under(path: str, prefix: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == prefix or path.startswith(prefix + "/")


def _pid_uses(pid_dir: Path, prefix: str) -> bool:
    for link in ("cwd", "exe"):
        try:
            if _under(os.readlink(pid_dir / link), prefix):
                return True
        except OSError:
            pass
    try:
        with open(pid_dir / "maps", errors="replace") as fh:
            maps = fh.read()
    except OSError:
        maps = ""
    if prefix in maps:  # most processes map nothing under it: skip parsing their lines
        for line in maps.splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and _under(fields[5], prefix):
                return True
    try:
        fds = os.listdir(pid_dir / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if _under(os.readlink(pid_dir / "fd" / fd), prefix):
                return True
        except OSError:
            pass
    return False


def users_of(tree: Path, proc: Path = Path("/proc")) -> list[int]:
    """PIDs whose mappings, cwd, exe or descriptors point into ``tree`` (symlinks resolved)."""
    prefix = os.path.realpath(tree)
    me = os.getpid()
    pids = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit() and int(entry.name) != me and _pid_uses(entry, prefix):
            pids.append(int(entry.name))
    return sorted(pids)
