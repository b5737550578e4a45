"""Tarball (zstd, gzip or tar) -> a tree in a fresh staging directory, streamed, checked member by member.

Our own checks, not tarfile's ``data`` filter alone: no absolute names, no ``..``,
no symlink resolving outside the tree (checked again over the complete set of
links at the end, since a later link can change where an earlier one leads), no
write through a symlink, hardlinks only to regular files already extracted, no
devices, fifos, setuid or setgid bits. Writes never follow symlinks. The archive is
read once, through a hashing reader, with memory flat in its size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from .. import log
from ..errors import ActivateError
from ..manifest import IN_TREE_PATH
from . import faults
from .reuse import Previous, link_if_possible, same_inode_data
from .verify import Expected, HashingReader

_CHUNK = 1 << 20
# Files up to this size are read whole, hashed, then linked to the previous version or
# written; larger ones stream to disk while hashed. Memory stays flat in the tarball's size.
_BUFFER = 8 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LINK_DEPTH = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A member claiming more than the manifest's whole tree (and more than this floor, for
# manifests that under-report) is refused before tarfile skips over its claimed data.
_MIN_MEMBER_LIMIT = 1 << 30


class UnsafeMember(ActivateError):
    """A member would write outside the tree or create something a software tree never needs."""


@dataclass
class _Tree:
    """What has been created so far, keyed by normalised member name."""

    dirs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mode, mtime)
    files: set[str] = field(default_factory=set)
    symlinks: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # regular file -> sha256 of its content
    max_member: int = _MIN_MEMBER_LIMIT
    file_count: int = 0
    total_size: int = 0


@dataclass
class Mirror:
    """A second copy written in the same pass (the ramdisk's ``.partial``), so the tree is read once.

    ``previous`` is the previous version's ramdisk copy: a file linked on disk to the
    previous version is linked to that version's ramdisk file of the same name.
    """

    root: Path
    previous: Path | None = None
    linked: int = 0
    linked_bytes: int = 0


@dataclass(frozen=True)
class Extracted:
    file_count: int
    total_size: int
    in_tree_manifest: str | None
    sha256: str
    hashes: dict[str, str] = field(default_factory=dict)  # regular file -> sha256


def check_text(what: str, name: str) -> None:
    """Refuse control characters (newlines, escapes) and bytes that are not UTF-8 in names (pure).

    A newline in a file name forges lines in every log and listing that prints it; a name
    that is not UTF-8 cannot be shown or typed. Software trees hold neither.
    """
    if "\x00" in name:
        raise UnsafeMember(f"{what} {name!r}: NUL in name")
    if _CONTROL.search(name):
        raise UnsafeMember(f"{what} {name!r}: control character in name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeMember(f"{what} {name!r}: name is not valid UTF-8") from None


def normalize_name(name: str) -> str:
    """Member name -> relative POSIX path inside the tree, or raise (pure)."""
    check_text("member", name)
    if name.startswith("/"):
        raise UnsafeMember(f"member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"member {name!r}: '..' in path")
    return "/".join(parts)


def resolves_inside(start_dir: list[str], target: str, symlinks: dict[str, str]) -> bool:
    """Follow ``target`` from ``start_dir`` through the tree's own links; False if it leaves (pure)."""
    return _walk(start_dir, target, symlinks, 0, [])


def _walk(start: list[str], target: str, symlinks: dict[str, str], depth: int, out: list[str]) -> bool:
    if depth > _MAX_LINK_DEPTH:
        return False
    stack = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        candidate = "/".join([*stack, part])
        if candidate in symlinks:
            inner = symlinks[candidate]
            if inner.startswith("/"):
                return False
            sub: list[str] = []
            if not _walk(stack, inner, symlinks, depth + 1, sub):
                return False
            stack = sub
        else:
            stack.append(part)
    out[:] = stack
    return True


def check_member(member: tarfile.TarInfo, tree: _Tree) -> str:
    """Validate one member against what is already extracted; return its normalised name (pure)."""
    name = normalize_name(member.name)
    what = f"member {member.name!r}"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = {
            tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "fifo",
        }.get(member.type, f"type {member.type!r}")
        raise UnsafeMember(f"{what}: {kind}; a software tree holds only files, directories and links")
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise UnsafeMember(f"{what}: setuid/setgid bit set (mode {member.mode:o})")
    parts = name.split("/") if name else []
    for i in range(1, len(parts)):
        ancestor = "/".join(parts[:i])
        if ancestor in tree.symlinks:
            raise UnsafeMember(f"{what}: would write through the symlink {ancestor!r}")
        if ancestor in tree.files:
            raise UnsafeMember(f"{what}: parent {ancestor!r} is a file")
    if name in tree.symlinks or name in tree.files:
        raise UnsafeMember(f"{what}: appears twice (a second member would replace the first)")
    if name in tree.dirs and not member.isdir():
        raise UnsafeMember(f"{what}: replaces a directory")
    if member.issym() or member.islnk():
        check_text(f"{what}: link target", member.linkname)
    if not name and not member.isdir():
        raise UnsafeMember(f"{what}: would replace the root of the tree")
    if member.size < 0 or member.size > tree.max_member:
        raise UnsafeMember(
            f"{what}: claims {member.size} bytes, more than the whole tree the manifest describes"
        )
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            raise UnsafeMember(f"{what}: symlink to the absolute path {target!r}")
        if not resolves_inside(parts[:-1], target, tree.symlinks):
            raise UnsafeMember(f"{what}: symlink {target!r} points outside the tree")
    if member.islnk():
        try:
            source = normalize_name(member.linkname)
        except UnsafeMember:
            source = ""
        if source not in tree.files:
            raise UnsafeMember(f"{what}: hardlink to {member.linkname!r}, which is not a file of this tree")
    if not name and not member.isdir():
        raise UnsafeMember(f"{what}: empty name")
    return name


def _ensure_parents(dest: Path, name: str, tree: _Tree, mirror: Mirror | None) -> None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        rel = "/".join(parts[:i])
        if rel not in tree.dirs:
            os.mkdir(dest / rel, 0o755)
            if mirror is not None:
                os.mkdir(mirror.root / rel, 0o755)
            tree.dirs[rel] = (0o755, 0)


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _finish_file(path: Path, mode: int, mtime: float) -> None:
    os.chmod(path, mode, follow_symlinks=False)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def _mirror_shared(mirror: Mirror, name: str, linked_to: str, disk: Path, data: bytes | None) -> None:
    """The mirror's copy of a file linked on disk: a link to the previous copy, else a copy with its attributes."""
    dest = mirror.root / name
    if mirror.previous is not None:
        source = mirror.previous / linked_to
        try:
            ok = same_inode_data(os.lstat(source), os.lstat(disk))
        except OSError:
            ok = False
        if ok and link_if_possible(source, dest):
            mirror.linked += 1
            mirror.linked_bytes += os.lstat(disk).st_size
            return
    st = os.lstat(disk)
    if data is None:
        with open(disk, "rb") as fh, os.fdopen(_create(dest), "wb") as out:
            while chunk := fh.read(_CHUNK):
                out.write(chunk)
    else:
        with os.fdopen(_create(dest), "wb") as out:
            out.write(data)
    os.chmod(dest, stat.S_IMODE(st.st_mode), follow_symlinks=False)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _write_file(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    path: Path,
    previous: Previous | None,
    mirror: Mirror | None,
) -> str:
    """Write one regular member (or link it to the previous version's identical file); its sha256."""
    src = tf.extractfile(member)
    assert src is not None
    mode = member.mode & 0o777
    if member.size <= _BUFFER:
        data = src.read()
        if previous is not None:  # the same name with the same bytes: no hashing needed
            same = previous.link_same(name, data, mode, path)
            if same is not None:
                if mirror is not None:
                    _mirror_shared(mirror, name, name, path, data)
                return same
        digest = hashlib.sha256(data).hexdigest()
        linked = previous.link(digest, mode, len(data), path) if previous is not None else None
        if linked is not None:  # a shared inode: never chmod-ed or touched
            if mirror is not None:
                _mirror_shared(mirror, name, linked, path, data)
            return digest
        with os.fdopen(_create(path), "wb") as out:
            out.write(data)
        if mirror is not None:
            with os.fdopen(_create(mirror.root / name), "wb") as out:
                out.write(data)
    else:
        h = hashlib.sha256()
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(os.fdopen(_create(path), "wb"))]
            if mirror is not None:
                outs.append(stack.enter_context(os.fdopen(_create(mirror.root / name), "wb")))
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                for out in outs:
                    out.write(chunk)
        digest = h.hexdigest()
        shared = path.with_name(f".{path.name}.shared")
        linked = previous.link(digest, mode, member.size, shared) if previous is not None else None
        if linked is not None:
            os.replace(shared, path)
            if mirror is not None:
                os.unlink(mirror.root / name)
                _mirror_shared(mirror, name, linked, path, None)
            return digest
    _finish_file(path, mode, member.mtime)
    if mirror is not None:
        _finish_file(mirror.root / name, mode, member.mtime)
    return digest


def _apply(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    dest: Path,
    tree: _Tree,
    previous: Previous | None,
    mirror: Mirror | None,
) -> None:
    path = dest / name if name else dest
    roots = [dest] if mirror is None else [dest, mirror.root]
    if member.isdir():
        if name and name not in tree.dirs:
            _ensure_parents(dest, name, tree, mirror)
            for r in roots:
                os.mkdir(r / name, 0o755)
        tree.dirs[name] = (member.mode & 0o777 | 0o700, int(member.mtime))
        return
    _ensure_parents(dest, name, tree, mirror)
    if member.issym():
        for r in roots:
            os.symlink(member.linkname, r / name)
            os.utime(r / name, (member.mtime, member.mtime), follow_symlinks=False)
        tree.symlinks[name] = member.linkname
    elif member.islnk():
        source = normalize_name(member.linkname)
        for r in roots:
            os.link(r / source, r / name, follow_symlinks=False)
        tree.files.add(name)
        tree.hashes[name] = tree.hashes[source]
    else:
        tree.hashes[name] = _write_file(tf, member, name, path, previous, mirror)
        tree.files.add(name)
        tree.total_size += member.size
    tree.file_count += 1


def _final_link_check(tree: _Tree) -> None:
    for name, target in tree.symlinks.items():
        if not resolves_inside(name.split("/")[:-1], target, tree.symlinks):
            raise UnsafeMember(
                f"member {name!r}: symlink {target!r} points outside the tree "
                f"(through other links of the archive)"
            )


def _finish_dirs(dest: Path, tree: _Tree) -> None:
    # Deepest first so setting a parent's mtime is not undone by touching a child.
    for name in sorted(tree.dirs, key=lambda n: n.count("/"), reverse=True):
        mode, mtime = tree.dirs[name]
        path = dest / name if name else dest
        os.chmod(path, mode)
        if mtime:
            os.utime(path, (mtime, mtime))


def _open_tar(reader: HashingReader, head: bytes) -> tarfile.TarFile:
    """A stream-mode TarFile over ``reader``: it reads forward only and never seeks or slurps."""
    raw = cast(IO[bytes], reader)
    if head.startswith(_ZSTD_MAGIC):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK, read_across_frames=True)
        return tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|")
    if head.startswith(_GZIP_MAGIC):
        return tarfile.open(fileobj=raw, mode="r|gz")
    return tarfile.open(fileobj=raw, mode="r|")


def _nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _BUFFER or st.f_favail == 0


def _peek(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def extract(
    tarball: Path,
    dest: Path,
    expected: Expected,
    previous: Previous | None = None,
    mirror: Mirror | None = None,
) -> Extracted:
    """Stream ``tarball`` into the empty directory ``dest``; verify its sha256 before returning.

    With ``previous``, a file whose content and mode the previous kept tree already has
    is hardlinked to it instead of written. With ``mirror``, the same tree is written
    into ``mirror.root`` too (the ramdisk), in the same pass.
    """
    tree = _Tree(max_member=max(expected.tree_size or 0, _MIN_MEMBER_LIMIT))
    size = tarball.stat().st_size
    with open(tarball, "rb") as raw:
        reader = HashingReader(raw)
        failure: BaseException | None = None
        try:
            tf = _open_tar(reader, _peek(tarball))
            with tf, log.progress(f"extracting {tarball.name}", size, "B") as bar:
                seen = 0
                while (member := tf.next()) is not None:
                    name = check_member(member, tree)
                    _apply(tf, member, name, dest, tree, previous, mirror)
                    tf.members.clear()  # type: ignore[attr-defined]  # stream mode keeps every TarInfo
                    bar.advance(reader.count - seen)
                    seen = reader.count
                    if tree.file_count == 3:  # mid-way: some files written, most not
                        faults.hit("extracting")
            _final_link_check(tree)
        except UnsafeMember as exc:
            failure = exc
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            failure = exc
        except Exception as exc:  # zstandard.ZstdError and friends
            if type(exc).__module__.startswith("zstandard") or "zstd" in type(exc).__name__.lower():
                failure = exc
            else:
                raise
        with contextlib.suppress(OSError):
            reader.drain()
    digest = reader.hexdigest()
    if digest != expected.sha256:
        raise ActivateError(
            f"{tarball}: sha256 mismatch (expected {expected.sha256}, got {digest}); "
            f"the tarball is corrupt or truncated: re-download or rebuild it"
        )
    if isinstance(failure, ActivateError):
        raise failure
    if isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT):
        if mirror is not None and _nearly_full(mirror.root):
            raise ActivateError(
                f"loading {tarball.name} onto the ramdisk {mirror.root.parent} failed: {failure.strerror}; "
                f"nothing live changed; free ramdisk space or grow it"
            ) from failure
        raise ActivateError(
            f"extracting {tarball.name} into {dest.parent} failed: {failure.strerror}; "
            f"nothing live changed; free disk space (`swstack prune --keep N`)"
        ) from failure
    if failure is not None:
        raise ActivateError(
            f"{tarball}: cannot be unpacked ({type(failure).__name__}: {failure}); "
            f"its sha256 matches, so it was packed broken: rebuild it"
        ) from failure
    _finish_dirs(dest, tree)
    if mirror is not None:
        _finish_dirs(mirror.root, tree)
    manifest_text = None
    if IN_TREE_PATH in tree.files:
        manifest_text = (dest / IN_TREE_PATH).read_text()
    return Extracted(tree.file_count, tree.total_size, manifest_text, digest, tree.hashes)
