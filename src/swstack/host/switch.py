"""Trees on disk -> copies on the ramdisk and live links switched atomically.

A live link is replaced by renaming a new symlink over it (``rename(2)`` is atomic;
``ln -sfn`` unlinks then creates, leaving an instant with no link at all), so a
reader of ``<root>/sw/<stack>`` always sees a complete old or a complete new tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ActivateError
from ..log import human_bytes, progress
from .reuse import RamdiskPrevious


def parse_owner(owner: str | None) -> tuple[int, int] | None:
    if not owner:
        return None
    try:
        uid, gid = owner.split(":")
        return int(uid), int(gid)
    except ValueError:
        raise ActivateError(f"manifest owner {owner!r}: expected 'uid:gid' numbers") from None


def chown_tree(tree: Path, owner: tuple[int, int]) -> None:
    """Give the tree to its owning group (e.g. 899:899 for a kernel another group maintains)."""
    uid, gid = owner
    os.lchown(tree, uid, gid)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, gid)


def tree_size(tree: Path) -> tuple[int, int]:
    """(bytes, entries) of a tree, hardlinked files counted once."""
    seen: set[tuple[int, int]] = set()
    total = count = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            count += 1
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        count += len(dirnames)
    return total, count


def copy_tree(src: Path, dest: Path, previous: RamdiskPrevious | None = None) -> None:
    """Copy ``src`` to the new directory ``dest`` keeping modes, mtimes, owners, symlinks and hardlinks.

    With ``previous``, a file whose inode ``src`` shares with the previous version's
    persistent tree is linked to that version's copy in ``dest``'s filesystem instead, if
    that copy still has the file's size, mode, mtime and owner (``RamdiskPrevious.link``).
    """
    is_root = os.geteuid() == 0
    links: dict[tuple[int, int], str] = {}
    total, _ = tree_size(src)
    with progress(f"copying to the ramdisk ({human_bytes(total)})", total, "B") as bar:
        _copy_dir(src, dest, is_root, links, bar, previous)


def _copy_dir(
    src: Path,
    dest: Path,
    is_root: bool,
    links: dict[tuple[int, int], str],
    bar: object,
    previous: RamdiskPrevious | None,
) -> None:
    st = os.lstat(src)
    os.mkdir(dest, 0o700)
    for entry in os.scandir(src):
        s = Path(entry.path)
        d = dest / entry.name
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(est.st_mode):
            _copy_dir(s, d, is_root, links, bar, previous)
            continue
        if stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(est.st_mode):
            key = (est.st_dev, est.st_ino)
            if est.st_nlink > 1 and key in links:
                os.link(links[key], d)
                continue
            if est.st_nlink > 1 and previous is not None and previous.link(est, d):
                links[key] = str(d)
                bar.advance(est.st_size)  # type: ignore[attr-defined]
                continue  # a shared inode: never chmod-ed, chown-ed or touched
            shutil.copyfile(s, d, follow_symlinks=False)
            os.chmod(d, stat.S_IMODE(est.st_mode))
            if est.st_nlink > 1:
                links[key] = str(d)
            bar.advance(est.st_size)  # type: ignore[attr-defined]
        else:
            raise ActivateError(
                f"{s}: not a file, directory or symlink; the persistent tree was tampered with"
            )
        if is_root:
            os.lchown(d, est.st_uid, est.st_gid)
        os.utime(d, ns=(est.st_atime_ns, est.st_mtime_ns), follow_symlinks=False)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    if is_root:
        os.lchown(dest, st.st_uid, st.st_gid)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace_symlink(link: Path, target: str) -> bool:
    """Point ``link`` at ``target`` atomically; False if it already does."""
    try:
        if os.readlink(link) == target:
            return False
    except FileNotFoundError:
        pass
    except OSError:
        if link.is_dir():
            raise ActivateError(
                f"{link}: is a real directory, not a link swstack manages; move it aside "
                f"(e.g. into {link.parent.parent}/sw.<version>/) and run again"
            ) from None
        raise
    tmp = link.with_name(f".{link.name}.new-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def remove_tree(tree: Path) -> None:
    """Remove a tree we own, even one whose directories were made read-only."""

    def _onerror(func: object, path: str, _exc: object) -> None:
        parent = os.path.dirname(path)
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=_onerror)
        else:
            os.unlink(path)

    if tree.is_symlink() or tree.is_file():
        tree.unlink()
    elif tree.exists():
        shutil.rmtree(tree, onerror=_onerror)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then act as they would have.

    Around the commit (the switches, the state that records them, sw.hdd): a Ctrl-C there
    would leave a new version live with the old one recorded, which the next ``restore``
    (a reboot) would bring back. Only the main thread can set handlers; elsewhere the block
    runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    saved = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
