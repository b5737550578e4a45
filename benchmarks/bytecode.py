"""Run swstack as a host or a build sandbox installs it: with its modules byte-compiled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def with_bytecode(cache: Path) -> None:
    """Byte-compile swstack for the processes this benchmark starts (pip compiles an installed
    package; a checkout where PYTHONDONTWRITEBYTECODE is set would compile some 30 modules on
    every start instead). The bytecode goes to a scratch cache, not the checkout."""
    import swstack

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    package = Path(swstack.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
