"""What the channel is built for and under: linux-64 and CPython 3.11, a fixed build
directory, clock and virtual packages (the facts that make its packages reproducible).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .conda_repack import DEFAULT_EPOCH

# Bump when the way packages are made changes: every cache key changes with it.
BUILDER_VERSION = "5"

PLATFORM = "linux-64"
PACKAGE_FORMAT = "conda:3"
# Bump when the wheel -> noarch conversion changes (only those packages are rebuilt).
NOARCH_RULES = "tree+rename-2"
PY_MAJOR_MINOR = "3.11"
# The channel's CPython: channel/recipes/python/cpython.toml's source.version (checked).
PY_FULL_VERSION = "3.11.2"
# pip options naming the interpreter wheels are chosen for (the channel's CPython 3.11).
TARGET_INTERPRETER = ("--python-version", PY_MAJOR_MINOR, "--implementation", "cp",
                      "--abi", "cp311", "--abi", "abi3", "--abi", "none")
PYTHON_RUN_DEP = "python >=3.11,<3.12.0a0"
TARGET_TAGS_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)

# Packages are built under this fixed directory, whatever the cache: the build prefix
# (prefix placeholders, compiled-in paths, .pyc file names) and the recipe's paths end
# up inside the packages, so they must be the same on every machine for the packages
# to be bit-for-bit reproducible. One build at a time uses it (a lock file).
BUILD_ROOT = Path("/tmp/swstack-channel-build")
# Every build timestamp (index.json, archive members, .pyc via pip) is set to this.
SOURCE_DATE_EPOCH = DEFAULT_EPOCH
# rattler-build writes the build machine's virtual packages into every package it makes
# (info/recipe/rendered_recipe.yaml): the running kernel's version (__linux), the CPU's
# microarchitecture (__archspec) and glibc's version. Two machines differ in those even
# with the same image, so the builds see these fixed values instead (rattler's
# CONDA_OVERRIDE_* variables): the oldest kernel and glibc the packages are for
# (Debian 12's), the generic CPU level.
BUILD_VIRTUAL_PACKAGES = {
    "CONDA_OVERRIDE_LINUX": "6.1",
    "CONDA_OVERRIDE_GLIBC": "2.36",
    "CONDA_OVERRIDE_ARCHSPEC": "x86_64",
}

# The marker environment of every package in the channel: Linux x86_64, CPython 3.11.
MARKER_ENV: Mapping[str, str] = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": PY_MAJOR_MINOR,
    "python_full_version": PY_FULL_VERSION,
    "implementation_version": PY_FULL_VERSION,
    "platform_release": "",
    "platform_version": "",
    "extra": "",
}


def ensure_dir(path: Path) -> Path:
    """``path``, made if missing (the cache's scratch and lock directories)."""
    path.mkdir(parents=True, exist_ok=True)
    return path
