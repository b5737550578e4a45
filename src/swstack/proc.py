"""The only place that starts subprocesses: logs ``+ argv``, never a shell, raises with stderr's tail."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import log
from .errors import ExternalCommandError, SwstackError

StrPath = str | os.PathLike[str]

_TAIL_LINES = 25
_STREAM_TAIL_LINES = 40  # a streamed step's output is long; its failure shows more of it


def _tail(text: str | bytes | None) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = text.rstrip().splitlines()[-_TAIL_LINES:]
    return "\n".join("    " + line for line in lines)


def run(
    argv: Sequence[StrPath],
    *,
    cwd: StrPath | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    capture: bool = True,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = None,
    error: type[SwstackError] = ExternalCommandError,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; return the completed process (text mode).

    With ``capture`` stdout and stderr are returned, otherwise they stream to ours.
    On failure raise ``error`` naming ``what`` (or the command) and stderr's tail.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    full_env = dict(os.environ if env is None else env)
    if extra_env:
        full_env.update(extra_env)
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input.decode() if isinstance(input, bytes) else input,
            text=True,
            capture_output=capture,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise error(f"{what or args[0]}: command not found: {args[0]} (is it installed?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what or args[0]}: timed out after {timeout:.0f}s\n{_tail(exc.stderr)}") from exc
    if check and result.returncode != 0:
        detail = _tail(result.stderr) or _tail(result.stdout)
        raise error(
            f"{what or shlex.join(args[:3])} failed (exit {result.returncode})"
            + (f":\n{detail}" if detail else "")
        )
    return result


def output(argv: Sequence[StrPath], **kwargs: object) -> str:
    """Run ``argv`` and return its stripped stdout."""
    return run(argv, **kwargs).stdout.strip()  # type: ignore[arg-type]


def spawn(
    argv: Sequence[StrPath],
    *,
    cwd: StrPath | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.DEVNULL,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process (a daemon, a server) and return its handle."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args) + " &")
    if log_file is not None:
        fh = open(log_file, "ab")  # noqa: SIM115 - handed to the child
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def run_streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    error: type[SwstackError] = ExternalCommandError,
    what: str,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
) -> int:
    """Run ``argv``, passing each output line (stdout and stderr) to ``on_line`` as it comes.

    ``on_line`` defaults to ``log.output``. On a non-zero exit raise ``error`` with the
    output's tail (``check=False``: return the exit code); on Ctrl-C stop the child.
    """
    sink = on_line or log.output
    tail: deque[str] = deque(maxlen=_STREAM_TAIL_LINES)
    try:
        child = spawn(
            argv,
            env=dict(os.environ if env is None else env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError as exc:
        raise error(f"{what}: command not found: {argv[0]} (run scripts/setup)") from exc
    try:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip("\n").rstrip("\r")
            tail.append(line)
            sink(line)
        code = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    if check and code != 0:
        detail = "\n".join("    " + line for line in tail)
        raise error(f"{what} failed (exit {code})" + (f":\n{detail}" if detail else ""))
    return code


def which(name: str) -> str | None:
    from shutil import which as _which

    return _which(name)
