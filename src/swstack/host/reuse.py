"""A kept version's trees -> what a new version can share with them: files by sha256 on disk, inodes on the ramdisk.

Every extracted version records the sha256 of each of its regular files in
``sw.<version>/.<tree>.files.json`` (written with the tree, read only to share). When the
next version is extracted, a file whose content the previous version already holds is
hardlinked to that file instead of written, if the mode is the same too; when it is
loaded onto the ramdisk, a file that shares its inode with the previous persistent tree
is hardlinked to the previous ramdisk copy of that file when that copy still has the disk
file's size, mode, mtime and owner (a write moves the mtime; one with its mtime set back is
found by ``restore``, which compares sha256s, and a link would carry it into the new version
until then). Links stay inside one
filesystem (disk to disk, ramdisk to ramdisk) and a shared inode is never written,
chmod-ed or touched: relocation first gives a file about to be rewritten its own inode.
A reused file keeps the mtime of the version it first came with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import log
from ..fsutil import sha256_file

INDEX_SCHEMA = 1
# Links fail across filesystems (EXDEV), past the link limit (EMLINK) or where they are
# not allowed (EPERM): then the file is written, as without a previous version.
NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOENT})


def index_path(version_dir: Path, tree: str) -> Path:
    return version_dir / f".{tree}.files.json"


def write_index(path: Path, files: dict[str, str]) -> None:
    """name -> sha256 of every regular file of a tree, renamed into place beside the tree.

    Not fsync-ed (an fsync here waits for the whole extracted tree to reach the disk): the
    index is only a hint, and a lost or torn one reads as empty, so nothing is shared.
    """
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps({"schema": INDEX_SCHEMA, "files": files}, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_index(path: Path) -> dict[str, str]:
    """The index of a kept tree; empty when missing or unreadable (then nothing is shared)."""
    try:
        data = json.loads(path.read_text())
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {str(k): str(v) for k, v in files.items()}


@dataclass
class Previous:
    """The live tree a new one may link to: files by name (bytes compared) and, from its index, by sha256."""

    tree: Path
    by_hash: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256, from its index (may be empty)
    linked: int = 0
    linked_bytes: int = 0
    root: str = field(init=False)  # ``tree`` as a string: joining names costs less than a Path per file

    def __post_init__(self) -> None:
        self.root = str(self.tree)

    @classmethod
    def load(cls, tree: Path, index: Path) -> Previous | None:
        if not tree.is_dir():
            return None
        files = read_index(index)
        by_hash: dict[str, str] = {}
        for name, digest in sorted(files.items()):
            by_hash.setdefault(digest, name)
        return cls(tree, by_hash, files)

    def count(self, size: int) -> None:
        self.linked += 1
        self.linked_bytes += size

    def link_same(self, name: str, data: bytes | memoryview, mode: int, dest: str) -> str | None:
        """Hardlink ``dest`` to the previous tree's file of the same name if its bytes are ``data``.

        Comparing bytes (memcmp) costs far less than hashing them. Returns the previous
        file's sha256 from the index ("" when the index does not have it), or None.
        """
        source = f"{self.root}/{name}"
        try:
            st = os.lstat(source)
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
                return None
            with open(source, "rb", buffering=0) as fh:
                if fh.read(len(data) + 1) != data:
                    return None
        except OSError:
            return None
        if not link_if_possible(source, dest):
            return None
        self.count(len(data))
        return self.files.get(name, "")

    def same_name(self, name: str, mode: int, size: int) -> BinaryIO | None:
        """The previous tree's file of this name, open for a streamed compare, if its mode and size match."""
        source = self.tree / name
        try:
            st = os.lstat(source)
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != size:
                return None
            return open(source, "rb", buffering=0)  # noqa: SIM115  # closed by the caller
        except OSError:
            return None

    def link(self, digest: str, mode: int, size: int, dest: Path) -> str | None:
        """Hardlink ``dest`` to the previous tree's file with this content and mode; its name, or None.

        The index only says which file held ``digest`` when it was written: the file is hashed
        again before it is linked. Only files that moved (same bytes, another name) come here,
        a file of the same name is byte-compared by ``link_same``, so this stays rare.
        """
        name = self.by_hash.get(digest)
        if name is None:
            return None
        source = self.tree / name
        try:
            st = os.lstat(source)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != size:
            return None
        try:
            if sha256_file(source) != digest:
                return None
        except OSError:
            return None
        if not link_if_possible(source, dest):
            return None
        self.count(size)
        return name


def link_if_possible(source: str | Path, dest: str | Path) -> bool:
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in NO_LINK:
            return False
        raise
    return True


def same_inode_data(a: os.stat_result, b: os.stat_result) -> bool:
    """Two regular files a reader could not tell apart by their attributes (content checked elsewhere)."""
    return (
        stat.S_ISREG(a.st_mode)
        and stat.S_ISREG(b.st_mode)
        and (a.st_size, a.st_mode, a.st_mtime_ns, a.st_uid, a.st_gid)
        == (b.st_size, b.st_mode, b.st_mtime_ns, b.st_uid, b.st_gid)
    )


def inode_names(tree: Path) -> dict[tuple[int, int], str]:
    """(dev, inode) -> relative name of each multiply-linked regular file of ``tree``."""
    out: dict[tuple[int, int], str] = {}
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                out.setdefault((st.st_dev, st.st_ino), os.path.relpath(path, tree))
    return out


@dataclass
class RamdiskPrevious:
    """The previous version's persistent tree and its ramdisk copy: shared inodes on disk map to files there."""

    copy: Path
    names: dict[tuple[int, int], str]
    linked: int = 0
    linked_bytes: int = 0

    @classmethod
    def load(cls, persistent: Path, copy: Path) -> RamdiskPrevious | None:
        if not (persistent.is_dir() and copy.is_dir()):
            return None
        return cls(copy, inode_names(persistent))

    def link(self, st: os.stat_result, dest: Path) -> bool:
        """Link ``dest`` to the previous ramdisk copy of the disk file (``st``) it shares its inode with,
        if that copy still has the disk file's attributes (the disk tree is the verified one)."""
        name = self.names.get((st.st_dev, st.st_ino))
        if name is None:
            return False
        source = self.copy / name
        try:
            cst = os.lstat(source)
        except OSError:
            return False
        if not same_inode_data(cst, st):
            log.warn(
                f"{source}: differs from the verified file (size, mode, mtime or owner); not shared, written again"
            )
            return False
        try:
            os.link(source, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in NO_LINK:
                return False
            raise
        self.linked += 1
        self.linked_bytes += st.st_size
        return True


def replace_with_copy(source: Path, dest: Path) -> None:
    """Replace ``dest`` by a fresh copy of ``source`` (content, mode, mtime): never writes ``dest``'s inode."""
    st = os.lstat(source)
    tmp = dest.with_name(f".{dest.name}.copy-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    shutil.copyfile(source, tmp, follow_symlinks=False)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dest)


def unshare(path: Path) -> None:
    """Give a multiply-linked file its own inode (same content, mode, mtime) before it is rewritten in place."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return
    tmp = path.with_name(f".{path.name}.unshare-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    shutil.copyfile(path, tmp, follow_symlinks=False)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def report(what: str, linked: int, linked_bytes: int) -> None:
    if linked:
        log.info(f"{what}: {linked} files ({log.human_bytes(linked_bytes)}) shared with the previous version")
