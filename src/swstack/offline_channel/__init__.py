"""Recipes and a pinned wheel list -> an offline file:// conda channel, bit-reproducible.

Input: ``channel/`` (``recipes/``, ``wheels.txt``; ``recipes/python/cpython.toml`` pins
CPython's source and the Debian packages of its libraries),
``clients/labclient``, and PyPI or a site's wheelhouse for the pinned wheels.
Output: ``<out>/linux-64`` and ``<out>/noarch`` (each with ``repodata.json``),
``<out>/pip/simple/...`` (a PEP 503 wheelhouse holding labclient) and
``<out>/git/labclient.git`` (a bare repository: tag ``v1.0.0``, ``main`` at 1.1.0.dev0).

Flow: ``plan.plan_channel`` (pure: what to build, each package's content-addressed cache
key) -> ``build.build_channel`` (fetch wheels, build missing packages into the shared
cache, assemble and index the channel in a sibling directory, then swap it in).

The package is named ``offline_channel``, not ``channel``: ``channel/`` at the top of the
checkout is its input (recipes, wheel lists), and one name for both would make every
mention ambiguous. Its modules: ``target`` (the platform, interpreter and fixed build
facts), ``wheels``, ``cpython`` (compiling CPython from its pinned source, fetching the
Debian libraries), ``python`` (staging the interpreter), ``plan``, ``packages`` (building
one package), ``conda_repack`` (normalising a built package), ``labclient`` (the pip and
git fixture), ``build`` (the whole build) and ``__main__`` (``python -m swstack.offline_channel``).
"""

from __future__ import annotations

from .build import build_channel, channel_inputs, default_out_dir, index_channel, python_is_current
from .plan import ChannelPlan, ChannelReport, PackageJob, plan_channel, select_packages
from .python import PythonBuild, pinned_python
from .wheels import PinnedWheel, lock_wheels, parse_wheel_list

__all__ = [
    "ChannelPlan",
    "ChannelReport",
    "PackageJob",
    "PinnedWheel",
    "PythonBuild",
    "build_channel",
    "channel_inputs",
    "default_out_dir",
    "index_channel",
    "lock_wheels",
    "parse_wheel_list",
    "pinned_python",
    "python_is_current",
    "plan_channel",
    "select_packages",
]
