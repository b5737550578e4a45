"""The process runner: streamed output, the caller's error with the output's tail, the environment."""

from __future__ import annotations

import os
import sys

import pytest

from swstack import proc
from swstack.errors import ExternalCommandError, SandboxError


def test_run_streaming_raises_with_the_output_tail() -> None:
    lines: list[str] = []
    argv = [sys.executable, "-c", "import sys; print('one'); print('boom', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(SandboxError, match=r"(?s)step failed \(exit 3\).*one.*boom"):
        proc.run_streaming(argv, error=SandboxError, what="step", on_line=lines.append)
    assert lines == ["one", "boom"]


def test_run_streaming_raises_an_external_command_error_by_default() -> None:
    with pytest.raises(ExternalCommandError, match=r"step failed \(exit 4\)"):
        proc.run_streaming([sys.executable, "-c", "raise SystemExit(4)"], what="step", on_line=lambda _: None)


def test_run_streaming_keeps_only_the_last_lines() -> None:
    argv = [sys.executable, "-c", "import sys; [print(i) for i in range(100)]; sys.exit(1)"]
    with pytest.raises(ExternalCommandError) as caught:
        proc.run_streaming(argv, what="step", on_line=lambda _: None)
    shown = [line.strip() for line in str(caught.value).splitlines()[1:]]
    assert shown == [str(i) for i in range(60, 100)]


def test_run_streaming_names_a_missing_command() -> None:
    with pytest.raises(SandboxError, match="probe: command not found: swstack-no-such-tool"):
        proc.run_streaming(["swstack-no-such-tool"], error=SandboxError, what="probe")


def test_run_streaming_passes_the_environment() -> None:
    lines: list[str] = []
    env = {**os.environ, "SWSTACK_PROBE": "42"}
    proc.run_streaming(
        [sys.executable, "-c", "import os; print(os.environ['SWSTACK_PROBE'])"],
        env=env,
        what="probe",
        on_line=lines.append,
    )
    assert lines == ["42"]
