"""The one logging layer: messages and progress for terminals and CI logs.

Library code never prints; it calls ``info``/``warn``/``step``/``progress``. On a
terminal progress redraws one line; elsewhere (CI) it prints plain lines, at most one
every few seconds, so logs stay short.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_logger = logging.getLogger("swstack")


def setup(verbose: bool = False) -> None:
    """Configure the swstack logger once, at the CLI or doit edge."""
    if _logger.handlers:
        _logger.setLevel(logging.DEBUG if verbose or os.environ.get("SWSTACK_DEBUG") else logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(logging.DEBUG if verbose or os.environ.get("SWSTACK_DEBUG") else logging.INFO)
    _logger.propagate = False


def debug(msg: str) -> None:
    _logger.debug(msg)


def info(msg: str) -> None:
    _logger.info(msg)


def warn(msg: str) -> None:
    _logger.warning(f"warning: {msg}")


def output(line: str) -> None:
    """One line of a command's output, indented under the step that runs it."""
    _logger.info(f"  | {line}")


def step(msg: str) -> None:
    """Announce the start of a pipeline step."""
    _logger.info(f"==> {msg}")


def _is_tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """Counts units of work (packages, bytes) and reports them without flooding logs."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", interval: float = 5.0):
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._tty = _is_tty()
        self._interval = 0.2 if self._tty else interval
        self._last = 0.0

    def _render(self) -> str:
        done = _human(self.done) if self.unit == "B" else str(self.done)
        unit = "" if self.unit == "B" else self.unit  # human sizes carry their own unit
        if self.total:
            total = _human(self.total) if self.unit == "B" else str(self.total)
            pct = 100.0 * self.done / self.total
            return f"{self.label}: {done}/{total} {unit} ({pct:.0f}%)".replace("  ", " ")
        return f"{self.label}: {done} {unit}".rstrip()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._emit()

    def _emit(self) -> None:
        if not _logger.isEnabledFor(logging.INFO):
            return
        if self._tty:
            sys.stderr.write("\r\x1b[K" + self._render())
            sys.stderr.flush()
        else:
            _logger.info(self._render())

    def finish(self) -> None:
        if self._tty and _logger.isEnabledFor(logging.INFO):
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        _logger.info(self._render())


@contextmanager
def progress(label: str, total: int | None = None, unit: str = "") -> Iterator[Progress]:
    bar = Progress(label, total, unit)
    try:
        yield bar
    finally:
        bar.finish()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    return _human(n)
