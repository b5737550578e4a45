"""The project as a user has it, in a temporary copy, and `doit` typed in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def doit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``doit ARGS`` run in ``project`` as a user types it; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "doit", *args], cwd=project, text=True, capture_output=True, timeout=600
    )


def project_with_dodo(dest: Path, inputs: Path, sandbox: str | None = None) -> Path:
    """``inputs`` (a copy of the project's stacks and lockfiles) with ``dodo.py`` and ``sites/``
    beside them, at ``dest``; ``sandbox`` set in the offline site when given."""
    shutil.copytree(inputs, dest)
    shutil.copy(PROJECT / "dodo.py", dest / "dodo.py")
    shutil.copytree(PROJECT / "sites", dest / "sites")
    if sandbox is not None:
        site = dest / "sites/offline.toml"
        site.write_text(site.read_text().replace('sandbox = "auto"', f'sandbox = "{sandbox}"'))
    return dest
