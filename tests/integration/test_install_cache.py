"""The shared package cache: what a build links is what the lockfile names, whatever the cache holds."""

from __future__ import annotations

from pathlib import Path

from swstack.build import conda_item
from swstack.install import InstallPlan, install_conda
from swstack.lock import read_lockfile
from swstack.site import Site

PROJECT = Path(__file__).resolve().parents[2]
SITE_TXT = "share/sitepaths/site.txt"


def _plan(site: Site, prefix: Path, cache: Path) -> InstallPlan:
    lockfile = read_lockfile(PROJECT / "lockfiles/antares-kernel/conda-lock.yml")
    package = next(p for p in lockfile.package if p.name == "sitepaths")
    return InstallPlan(prefix=str(prefix), platform=package.platform, conda=[conda_item(package, site)], pip=[],
                       kernels=[], kernel_spec_dirs=[], owner=None, package_cache=str(cache), extensions=[])


def test_a_file_edited_in_the_extracted_package_cache_is_not_linked(tmp_path: Path, offline_site: Site) -> None:
    cache = tmp_path / "pkgs"
    install_conda(_plan(offline_site, tmp_path / "first", cache))
    original = (tmp_path / "first" / SITE_TXT).read_bytes()
    (extracted,) = (cache / "pkgs").glob("sitepaths-*/" + SITE_TXT)
    extracted.write_bytes(original.replace(b"s", b"S"))  # same size: only its content says it changed

    install_conda(_plan(offline_site, tmp_path / "second", cache))

    assert (tmp_path / "second" / SITE_TXT).read_bytes() == original
