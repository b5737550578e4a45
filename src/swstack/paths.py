"""Where state lives on disk: the shared cache (outlives clones) and the project's outputs."""

from __future__ import annotations

import os
from pathlib import Path


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
