"""Locking's pure parts: the staleness hash, virtual packages, site mirrors, lockfile paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from swstack.build import local_roots
from swstack.lock import inputs_hash, lockfile_path, plan_lock, staleness, virtual_package_specs
from swstack.site import SiteFile, load_site, resolve_site
from swstack.spec import Stack, load_stack

ROOT = Path(__file__).resolve().parents[2]


def offline(tmp_path: Path) -> object:
    return load_site(ROOT / "sites/offline.toml", ROOT)


def test_lockfile_paths_per_variant() -> None:
    assert lockfile_path(load_stack(ROOT / "stacks/py3.toml"), ROOT) == ROOT / "lockfiles/py3/conda-lock.yml"
    assert lockfile_path(load_stack(ROOT / "stacks/py3.toml", "dev"), ROOT) == ROOT / "lockfiles/py3/dev/conda-lock.yml"


def test_hash_changes_with_stack_variant_and_platform_never_with_the_site(tmp_path: Path) -> None:
    site = load_site(ROOT / "sites/offline.toml", ROOT)
    default_site = resolve_site(SiteFile(), None, ROOT)
    stable = load_stack(ROOT / "stacks/py3.toml")
    dev = load_stack(ROOT / "stacks/py3.toml", "dev")
    base = inputs_hash(stable, "linux-64")
    assert base == inputs_hash(load_stack(ROOT / "stacks/py3.toml"), "linux-64")
    assert base != inputs_hash(dev, "linux-64")
    assert base != inputs_hash(stable, "linux-aarch64")
    # Mirrors are copies of the channels: which site (and cache path) locks changes nothing.
    assert plan_lock(stable, site, ROOT).content_hash == plan_lock(stable, default_site, ROOT).content_hash
    elsewhere = resolve_site(SiteFile(cache=str(tmp_path / "other-cache"),
                                      channels={"mirrors": {"conda-forge": "{cache}/offline-channel"}}), None, ROOT)
    assert plan_lock(stable, elsewhere, ROOT).content_hash == plan_lock(stable, site, ROOT).content_hash
    edited = tmp_path / "py3.toml"
    edited.write_text((ROOT / "stacks/py3.toml").read_text().replace('numpy = ">=1.26"', 'numpy = ">=2"'))
    (tmp_path / "base.toml").write_text((ROOT / "stacks/base.toml").read_text())
    assert base != inputs_hash(load_stack(edited), "linux-64")


def test_comments_do_not_make_a_lock_stale(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text((ROOT / "stacks/base.toml").read_text())
    edited = tmp_path / "py3.toml"
    edited.write_text("# a new comment\n" + (ROOT / "stacks/py3.toml").read_text())
    assert inputs_hash(load_stack(edited), "linux-64") == inputs_hash(load_stack(ROOT / "stacks/py3.toml"), "linux-64")


def test_missing_lockfile_is_stale(tmp_path: Path) -> None:
    site = load_site(ROOT / "sites/offline.toml", ROOT)
    plan = plan_lock(load_stack(ROOT / "stacks/py3.toml"), site, tmp_path)
    assert staleness(plan) is not None and "does not exist" in str(staleness(plan))


def test_mirrors_map_channel_names_and_urls(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(textwrap.dedent("""
        [channels.mirrors]
        conda-forge = "mirror/cf"
        bioconda = "https://mirror.example.org/bioconda"
    """))
    site = load_site(site_file, ROOT)
    assert site.channel_url("conda-forge") == (tmp_path / "mirror/cf").as_uri()
    assert site.channel_url("https://conda.anaconda.org/conda-forge") == (tmp_path / "mirror/cf").as_uri()
    assert site.channel_url("bioconda") == "https://mirror.example.org/bioconda"
    assert site.channel_url("pytorch") == "https://conda.anaconda.org/pytorch"
    # A lockfile names the channel's own URL; the site maps it back to its mirror to fetch.
    mirrored = (tmp_path / "mirror/cf").as_uri() + "/noarch/six-1.16-py_0.conda"
    canonical = "https://conda.anaconda.org/conda-forge/noarch/six-1.16-py_0.conda"
    assert site.canonical_url(mirrored, ("conda-forge",)) == canonical
    assert site.fetch_url(canonical) == mirrored
    assert site.fetch_url("https://conda.anaconda.org/bioconda/linux-64/x-1-0.conda") == (
        "https://mirror.example.org/bioconda/linux-64/x-1-0.conda")
    assert site.fetch_url("https://conda.anaconda.org/pytorch/linux-64/x-1-0.conda") == (
        "https://conda.anaconda.org/pytorch/linux-64/x-1-0.conda")


def test_virtual_packages_per_platform() -> None:
    stack = load_stack(ROOT / "stacks/py3.toml")
    x86 = stack.lock.virtual_packages_for("linux-64")
    arm = stack.lock.virtual_packages_for("linux-aarch64")
    assert x86["__archspec"] == "1=x86_64" and arm["__archspec"] == "1=aarch64"
    assert x86["__glibc"] == arm["__glibc"] == "2.36"
    from swstack.spec import LockSettings

    assert LockSettings().virtual_packages_for("linux-aarch64")["__archspec"] == "1=aarch64"


def test_pip_target_options_name_the_target_platform() -> None:
    from swstack.lock import pip_target_options

    arm = pip_target_options("linux-aarch64", "3.11", {"__glibc": "2.36"})
    platforms = [arm[i + 1] for i, o in enumerate(arm) if o == "--platform"]
    assert "manylinux_2_36_aarch64" in platforms and "manylinux2014_aarch64" in platforms
    assert "manylinux_2_37_aarch64" not in platforms and not any("x86_64" in p for p in platforms)
    assert "--only-binary=:all:" in arm and arm[arm.index("--abi") + 1] == "cp311"


def test_offline_site_solves_from_the_offline_channel_but_names_conda_forge() -> None:
    site = load_site(ROOT / "sites/offline.toml", ROOT)
    plan = plan_lock(load_stack(ROOT / "stacks/py3.toml"), site, ROOT)
    assert all(url.startswith("file://") and url.endswith("/offline-channel") for url in plan.channel_urls)
    assert plan.channels == ("https://conda.anaconda.org/conda-forge",)
    real = "https://git.example.org/datalab/labclient.git"
    assert site.git_url(real).startswith("file://")
    assert site.canonical_git_url(site.git_url(real) + "@abc") == real + "@abc"


def test_bad_site_file_is_located(tmp_path: Path) -> None:
    import pytest

    from swstack.errors import SiteError

    path = tmp_path / "site.toml"
    path.write_text('sandbox = "dockr"\n[registry]\nurl = "https://x"\n')
    with pytest.raises(SiteError) as info:
        load_site(path, ROOT)
    message = str(info.value)
    assert "site.toml:1: sandbox:" in message and "site.toml:3: registry.url" in message


def test_virtual_packages_parse() -> None:
    assert virtual_package_specs({"__archspec": "1=x86_64", "__glibc": "2.36"}) == [
        ("__archspec", "1", "x86_64"), ("__glibc", "2.36", "0")]


def test_local_roots_cover_every_file_url() -> None:
    urls = [
        "file:///c/ch/linux-64/python-3.11.7-h0.conda",
        "file:///c/ch/noarch/six-1.16-py_0.conda",
        "file:///c/ch/pip/simple/labclient/labclient-1.0.0-py3-none-any.whl",
        "git+file:///c/ch/git/labclient.git@0123abcd",
        "https://conda.anaconda.org/conda-forge/noarch/x-1-0.conda",
    ]
    assert local_roots(urls) == [Path("/c/ch")]


def test_install_items_map_canonical_urls_to_the_sites_mirrors() -> None:
    from types import SimpleNamespace

    from swstack.build import conda_item, pip_item

    site = load_site(ROOT / "sites/offline.toml", ROOT)
    channel = (site.cache / "offline-channel").as_uri()

    def locked(name: str, url: str, sha256: str | None = "ab" * 32) -> object:
        return SimpleNamespace(name=name, url=url, version="1.0.0", hash=SimpleNamespace(sha256=sha256, md5="00"))

    numpy = conda_item(locked("numpy", "https://conda.anaconda.org/conda-forge/linux-64/numpy-2-0.conda"), site)
    assert numpy.url.startswith("https://conda.anaconda.org/") and numpy.source == f"{channel}/linux-64/numpy-2-0.conda"
    wheel = pip_item(locked("labclient", "https://pypi.org/simple/labclient/labclient-1.0.0-py3-none-any.whl"), site)
    assert wheel.fetch == f"{channel}/pip/labclient-1.0.0-py3-none-any.whl" and not wheel.index
    real = "https://git.example.org/datalab/labclient.git"
    git = pip_item(locked("labclient", f"git+{real}@{'1' * 40}", None), site)
    assert git.url == f"git+{real}@{'1' * 40}" and git.fetch == f"git+{site.git_url(real)}@{'1' * 40}"
    # With no mirrors, a conda URL is fetched as it is and an index name comes from PyPI by version.
    plain = resolve_site(SiteFile(), None, ROOT)
    assert conda_item(locked("numpy", numpy.url), plain).source == numpy.url
    from_pypi = pip_item(locked("labclient", wheel.url), plain)
    assert from_pypi.index == "https://pypi.org/simple" and not from_pypi.fetch and from_pypi.version == "1.0.0"


def test_an_unknown_platform_in_lock_settings_is_located(tmp_path: Path) -> None:
    import pytest

    from swstack.errors import SpecError

    path = tmp_path / "demo.toml"
    path.write_text('name = "demo"\nchannels = ["conda-forge"]\n[dependencies]\npython = "3.11.*"\n[lock]\n'
                    'platform.linux-aarch46.virtual_packages = { __archspec = "1=aarch64" }\n')
    with pytest.raises(SpecError) as info:
        load_stack(path)
    expected = "demo.toml:6: lock.platform: unknown platform 'linux-aarch46'; did you mean 'linux-aarch64'?"
    assert expected in str(info.value)


def test_a_pip_dependency_pip_finds_no_version_of_is_named_with_its_stack_file_line(tmp_path: Path) -> None:
    from swstack.lock import _explain_pip_unresolvable

    stack_file = tmp_path / "demo.toml"
    stack_file.write_text(textwrap.dedent("""\
        name = "demo"
        channels = ["conda-forge"]
        [dependencies]
        python = "3.11.*"
        [pip.dependencies]
        labclient = ">=1"
        [variants.a]
        [variants.b]
        pip.dependencies.labclient = ">=3"
        """))
    site = resolve_site(SiteFile(), None, ROOT)
    pip_says = ("ERROR: Could not find a version that satisfies the requirement labclient>=3 (from versions: 1.0.0)\n"
                "ERROR: No matching distribution found for labclient>=3")
    assert _explain_pip_unresolvable(load_stack(stack_file, "b"), site, pip_says) == (
        f"{stack_file}:9: variants.b.pip.dependencies.labclient: no version of labclient in the index "
        "https://pypi.org/simple matches 'labclient>=3' (versions there: 1.0.0); fix the name or the version, "
        "or check that the index carries it")
    pip_says = ("ERROR: Could not find a version that satisfies the requirement traitlets>=5 (from labclient) "
                "(from versions: none)\nERROR: No matching distribution found for traitlets>=5 (from labclient)")
    assert _explain_pip_unresolvable(load_stack(stack_file, "a"), site, pip_says) == (
        f"{stack_file}:6: pip.dependencies.labclient: needs traitlets>=5, which neither the conda packages nor "
        "the index https://pypi.org/simple provide (versions there: none); add traitlets to [dependencies] (conda), "
        "or check that the index carries it")
    assert _explain_pip_unresolvable(load_stack(stack_file, "a"), site, "ERROR: ResolutionImpossible") is None


def test_a_git_ref_the_repository_lacks_is_named_with_its_stack_file_line(tmp_path: Path) -> None:
    import subprocess

    from swstack.errors import LockError
    from swstack.lock import _pip_requirements

    repo = tmp_path / "labclient.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    stack_file = tmp_path / "demo.toml"
    stack_file.write_text(textwrap.dedent(f"""\
        name = "demo"
        channels = ["conda-forge"]
        [dependencies]
        python = "3.11.*"
        [pip.dependencies]
        labclient = {{ git = "{repo.as_uri()}", ref = "nosuch" }}
        """))
    site = resolve_site(SiteFile(), None, ROOT)
    with pytest.raises(LockError) as info:
        _pip_requirements(load_stack(stack_file), site)
    assert str(info.value).startswith(f"{stack_file}:6: pip.dependencies.labclient.ref: ")
    assert "no branch or tag named 'nosuch'" in str(info.value)


def test_the_lockfile_header_says_to_re_solve_with_doit_lock_not_conda_lock(tmp_path: Path) -> None:
    from swstack.lock import _write, read_lockfile

    (tmp_path / "stacks").mkdir()
    stack_file = tmp_path / "stacks" / "demo.toml"
    stack_file.write_text(textwrap.dedent("""\
        name = "demo"
        channels = ["conda-forge"]
        [dependencies]
        python = "3.11.*"
        [variants.a]
        [variants.b]
        """))
    stack = load_stack(stack_file, "b")
    plan = plan_lock(stack, resolve_site(SiteFile(), None, ROOT), tmp_path)
    _write(plan, [], stack.channels)
    text = plan.path.read_text()
    header = text[:text.index("\nversion:")]
    assert "conda-lock -f" not in header and "--update PACKAGE" not in header  # cannot read a stack file
    assert header.endswith("#     doit lock stack=demo variant=b")
    assert "generated by swstack" in header
    assert read_lockfile(plan.path).metadata.sources == ["../../../stacks/demo.toml"]


def test_every_committed_lockfile_says_to_re_solve_with_doit_lock() -> None:
    """The lockfiles a user finds in the repository tell the command that re-solves them."""
    lockfiles = sorted((ROOT / "lockfiles").rglob("conda-lock.yml"))
    assert len(lockfiles) >= 3
    for path in lockfiles:
        text = path.read_text()
        header = text[: text.index("\nversion:")]
        assert "conda-lock -f" not in header and "generated by swstack" in header, path
        assert "#     doit lock stack=" in header, path


def test_an_unreachable_channel_without_a_site_file_names_the_offline_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run on a machine that reaches no channel, without site=: the error says to give one."""
    from types import SimpleNamespace

    from swstack.lock import _explain_unreachable

    monkeypatch.delenv("SWSTACK_SITE", raising=False)
    url = "https://conda.anaconda.org/conda-forge"
    exc = Exception(f"failed to fetch {url}/linux-64/repodata.json\nCaused by: Name or service not known")
    stack = SimpleNamespace(channels=("conda-forge",), source=Path("stacks/demo.toml"), sources=(), variant="default")
    stack.locate = lambda key: Stack.locate(stack, key)  # type: ignore[arg-type]
    root = Path(__file__).resolve().parents[2]
    no_site = SimpleNamespace(stack=stack, channel_urls=(url,), site=load_site(None, root))
    message = _explain_unreachable(no_site, exc)  # type: ignore[arg-type]
    assert "(Name or service not known)" in message
    assert message.endswith("give one with site= or SWSTACK_SITE (this repository's: site=sites/offline.toml)")
    offline = SimpleNamespace(stack=stack, channel_urls=(url,), site=load_site(root / "sites/offline.toml", root))
    assert "site=sites/offline.toml" not in _explain_unreachable(offline, exc)  # type: ignore[arg-type]
