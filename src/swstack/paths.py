"""Where state lives on disk: the production root, the shared cache (outlives clones), the project.

Standard library only: the host side uses ``ROOT`` too.
"""

from __future__ import annotations

import os
from pathlib import Path

# The seed's root directory, the one definition: a stack is built and lives at
# <ROOT>/sw/<name> (the path baked into its files), the sandbox gives each build a private
# <ROOT>, a site file's ``root`` defaults to it and hosts keep sw, sw.tmpfs, sw.hdd and
# sw.<version> under it (the host CLI's ``--root``).
ROOT = "/data0"


def cache_dir() -> Path:
    """The cache shared by every clone on this machine: wheels, built packages, package cache.

    It lives outside the checkout so a fresh clone (CI) reuses what an earlier one built;
    everything in it is content-addressed, so sharing is safe. ``SWSTACK_CACHE`` overrides.
    """
    env = os.environ.get("SWSTACK_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swstack"


def project_root(start: Path | None = None) -> Path:
    """The checkout holding ``stacks/`` (found upward from ``start`` or the working directory)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "stacks").is_dir() and (candidate / "pyproject.toml").is_file():
            return candidate
    return here
