"""Small filesystem helpers shared by every stage: atomic writes and content hashes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import log

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a ``.partial`` sibling then rename, so a crash never leaves a half file (and a failed
    write, a full disk say, leaves no ``.partial`` either)."""
    with atomic_output(path) as partial, open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a new ``.partial`` sibling to write; on success rename it to ``path``, else remove it.

    The sibling is this writer's own: another writer of ``path`` (two ``doit lock`` runs) writes
    its own, and a failed one removes only its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _new_sibling(path, ".partial", _create_file)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a new temporary sibling directory; on success it replaces ``path`` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(path, ".partial", _create_private_dir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # The old tree moves aside under a name of this writer's own too: an empty directory,
        # which rename replaces.
        old = _new_sibling(path, ".old", _create_private_dir)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _new_sibling(path: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """A hidden sibling ``.<name>.<random><suffix>`` that ``create`` made and nobody else has.

    In ``path``'s own directory, so renaming it onto ``path`` is atomic; ``create`` fails on an
    existing name, so two writers never get the same one.
    """
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


def _create_file(path: Path) -> None:
    # Mode 0o666 less the umask, as open() gives: the final file is readable as any other output
    # (mkstemp's 0o600 would not be).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700)  # as mkdtemp made it before


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def exclusive_lock(path: Path, waiting: str) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (created if missing), saying ``waiting`` first if someone else
    has it; yields whether it waited (what the holder did may have made the caller's work needless).

    The lock file itself is never removed: removing it while another process waits on it would let two in.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(waiting)
            fcntl.flock(fh, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
