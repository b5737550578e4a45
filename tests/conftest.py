"""Session fixtures shared by the integration tests: the offline channel, a locked project
copy, and a real py3 artifact built from it.

Everything is built for real (channel packages, a solve, a sandboxed install, a pack); the
shared cache makes later sessions fast. The project copy keeps tests from rewriting the
repository's committed lockfiles.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from swstack import paths
from swstack.site import Site, load_site

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def offline_site() -> Site:
    """The shipped offline site, its channel built (a no-op when it is current)."""
    from swstack.offline_channel import build_channel

    site = load_site(PROJECT / "sites/offline.toml", PROJECT)
    build_channel(site.cache / "offline-channel", recipes_dir=PROJECT / "channel" / "recipes",
                  cache_dir=paths.cache_dir())
    return site


@pytest.fixture(scope="session")
def project_copy(tmp_path_factory: pytest.TempPathFactory, offline_site: Site) -> Path:
    """A copy of the project's inputs (stacks, lockfiles, kernel specs) with current lockfiles."""
    from swstack.lock import lock
    from swstack.spec import load_stack, stack_files

    root = tmp_path_factory.mktemp("project")
    for name in ("stacks", "lockfiles", "kernel-specs"):
        if (PROJECT / name).is_dir():
            shutil.copytree(PROJECT / name, root / name)
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    for path in stack_files(root / "stacks"):
        lock(load_stack(path), offline_site, root)
    return root


@pytest.fixture(scope="session")
def artifacts_site(tmp_path_factory: pytest.TempPathFactory, offline_site: Site) -> Site:
    return replace(offline_site, artifacts=tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def py3_artifact(project_copy: Path, artifacts_site: Site) -> Path:
    """The directory of a real py3 artifact (tarball, .sha256, manifest.json)."""
    from swstack.build import run_build
    from swstack.sandbox import NamespaceSandbox
    from swstack.spec import load_stack

    stack = load_stack(project_copy / "stacks/py3.toml")
    result = run_build(stack, artifacts_site, project_copy, version="2026.11.21", sandbox=NamespaceSandbox())
    return result.artifact_dir
