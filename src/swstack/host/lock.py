"""Lock file under the root -> exclusive right to change the host; the kernel drops it if we die.

``flock`` rather than a pid file: a lock left by a killed process clears itself because
the kernel releases it with the last open descriptor. The pid written inside is only
there to name the holder in the error message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import log
from ..errors import ActivateError

_POLL = 0.2
_PID_WIDTH = 20  # fixed width: overwriting in place never shows a half-written or empty PID


def _holder(fd: int) -> str:
    """The holder's PID; it writes it just after taking the lock, so give it a moment."""
    for _ in range(20):
        try:
            text = os.pread(fd, _PID_WIDTH, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "?"


def seconds(wait: float) -> str:
    """0.5 -> '0.5s', 30.0 -> '30s' (pure): never a wait shown as 0s that was not 0."""
    return f"{wait:g}s"


def _locked_message(path: Path, holder: str, wait: float) -> str:
    busy = f"{path}: locked by PID {holder} (another swstack is changing this host)"
    if wait > 0:
        return f"{busy}; still held after --wait {seconds(wait)}: run again once it has finished, or wait longer"
    return f"{busy}; wait for it to finish or pass --wait SECONDS"


@contextmanager
def host_lock(path: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; wait up to ``wait`` seconds, then fail naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    wait = max(0.0, wait)
    try:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ActivateError(_locked_message(path, _holder(fd), wait)) from None
                if not announced:
                    log.info(f"waiting for the lock held by PID {_holder(fd)} (up to {seconds(wait)})")
                    announced = True
                time.sleep(_POLL)
        os.pwrite(fd, f"{os.getpid()}".ljust(_PID_WIDTH - 1).encode() + b"\n", 0)
        os.ftruncate(fd, _PID_WIDTH)
        yield
    finally:
        os.close(fd)
