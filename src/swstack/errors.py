"""One exception root for every failure a user can act on; each carries an exit code.

The CLI and the doit boundary print ``str(error)``; the CLI exits with ``error.exit_code``, doit
records the task as failed and, once every task it runs has run, exits with the first failure's
code. Anything that is not a ``SwstackError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class SwstackError(Exception):
    """A failure the user can act on. The message says what happened and what to do."""

    exit_code = 1


class SpecError(SwstackError):
    """A stack or site file is invalid: the message names file, line, key and fix."""

    exit_code = 2


class SiteError(SpecError):
    """A site file is invalid."""


class ChannelError(SwstackError):
    """The offline channel could not be built."""

    exit_code = 3


class LockError(SwstackError):
    """Solving failed or a lockfile is stale or unreadable."""

    exit_code = 4


class StaleLockError(LockError):
    """The committed lockfile does not match the stack file (``check=1``)."""

    exit_code = 5


class SandboxError(SwstackError):
    """The build sandbox (container or namespace) could not be set up."""

    exit_code = 6


class StepFailed(SandboxError):
    """A step run inside the sandbox exited non-zero. The message carries its output's tail;
    ``code`` and ``last_line`` let the caller report the step's own error (``error: ...``) alone."""

    def __init__(self, message: str, *, code: int, last_line: str) -> None:
        super().__init__(message)
        self.code = code
        self.last_line = last_line


class BuildError(SwstackError):
    """Installing the locked environment failed, or the audit found foreign prefixes."""

    exit_code = 7


class PackError(SwstackError):
    """Packing the prefix into a tarball failed."""

    exit_code = 8


class ImageError(SwstackError):
    """Building an image failed."""

    exit_code = 9


class PushError(SwstackError):
    """Pushing to or reading from a registry failed."""

    exit_code = 10


class ActivateError(SwstackError):
    """A host-side operation (fetch, verify, extract, switch) failed; nothing live changed."""

    exit_code = 11


class ExternalCommandError(SwstackError):
    """An external command exited non-zero; the message carries its stderr tail."""

    exit_code = 12


class SignError(SwstackError):
    """Making a key or a signature failed (no key, wrong password, registry refused)."""

    exit_code = 13


class UsageError(SwstackError):
    """A command line the CLI cannot act on (as argparse's own usage errors)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An error in one line, for a list of failures (``doit list``, the nightly summary): a
    ``SwstackError`` says what and where in its first line; a bug is named by its type too."""
    lines = str(exc).splitlines()
    line = lines[0] if lines else ""
    if isinstance(exc, SwstackError):
        return line or type(exc).__name__
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping the unit, ``kill``, a CI job cancelled or timed out): unwound like
    a Ctrl-C, so a step begun is undone."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` while the command runs (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)
