"""Unit tests of base and builder image planning: mirrors, cache keys, tags, argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from swstack import baseimage
from swstack.baseimage import BaseSpec, BuilderPlan, mirror_from_sources
from swstack.engine import split_tag
from swstack.errors import ImageError

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# a comment
deb-src http://src.example.org/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example.org/debian/ bookworm main contrib
"""


def test_mirror_from_deb822_sources() -> None:
    assert mirror_from_sources([DEB822], "bookworm") == "http://deb.debian.org/debian"


def test_mirror_from_one_line_sources_skips_deb_src_and_options() -> None:
    assert mirror_from_sources([ONE_LINE], "bookworm") == "http://mirror.example.org/debian"


def test_security_suite_is_not_taken_for_the_main_suite() -> None:
    security_only = DEB822.split("\n\n")[1]
    assert mirror_from_sources([security_only], "bookworm") is None
    assert mirror_from_sources([DEB822], "trixie") is None


def test_site_mirror_wins(tmp_path: Path) -> None:
    settings = tmp_path / "debootstrap.toml"
    settings.write_text('suite = "bookworm"\nvariant = "minbase"\ninclude = ["less"]\n')
    spec = baseimage.load_base_spec(settings, mirror="http://apt.example.org/debian")
    assert spec == BaseSpec("bookworm", "minbase", ("less",), "http://apt.example.org/debian")


def test_unreadable_settings_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "debootstrap.toml"
    bad.write_text("suite = \n")
    with pytest.raises(ImageError, match="debootstrap.toml"):
        baseimage.load_base_spec(bad)


def test_base_key_ignores_mirror_and_package_order() -> None:
    a = BaseSpec(packages=("a", "b"), mirror="http://one")
    b = BaseSpec(packages=("b", "a"), mirror="http://two")
    assert a.key == b.key and a.tag == b.tag
    assert BaseSpec(packages=("a",)).key != a.key
    assert a.tag.startswith("swstack/debian:bookworm-")


def test_debootstrap_argv() -> None:
    spec = BaseSpec(packages=("less", "curl"), mirror="http://m/debian")
    assert baseimage.debootstrap_argv(spec, Path("/x/root")) == [
        "debootstrap",
        "--variant=minbase",
        "--include=curl,less",
        "bookworm",
        "/x/root",
        "http://m/debian",
    ]


def test_tar_argv_is_reproducible_by_construction() -> None:
    argv = baseimage.tar_argv(Path("/r"), Path("/o.tar"), 1700000000)
    for flag in ("--sort=name", "--numeric-owner", "--mtime=@1700000000", "--clamp-mtime"):
        assert flag in argv


def test_builder_tag_follows_its_inputs() -> None:
    plan = BuilderPlan("swstack/debian:bookworm-x", "FROM x\n", ("a==1",), "3.11", "x86_64")
    same = BuilderPlan("swstack/debian:bookworm-x", "FROM x\n", ("a==1",), "3.11", "x86_64")
    assert plan.tag == same.tag and plan.tag.startswith("swstack/builder:")
    assert BuilderPlan(plan.base, "FROM x\nRUN true\n", plan.requirements, "3.11", "x86_64").tag != plan.tag
    assert BuilderPlan(plan.base, plan.dockerfile, ("a==2",), "3.11", "x86_64").tag != plan.tag
    other_base = BuilderPlan("swstack/debian:y", plan.dockerfile, plan.requirements, "3.11", "x86_64")
    assert other_base.tag != plan.tag


def test_builder_requirements_pin_the_host_versions() -> None:
    pins = dict(p.split("==") for p in baseimage.builder_requirements())
    assert pins["py-rattler"] == "0.28.0"
    assert pins["conda-pack"] == "0.9.2"
    assert set(pins) == set(baseimage.BUILDER_PACKAGES)


def test_missing_host_package_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match="not-a-real-package is not installed on the host"):
        baseimage.builder_requirements(("not-a-real-package",))


def test_wheels_are_for_the_image_python_not_the_host() -> None:
    plan = BuilderPlan("b", "d", ("zstandard==0.25.0",), "3.13", "aarch64")
    argv = baseimage.pip_download_argv(plan, Path("/w"))
    assert "--python-version=3.13" in argv and "--only-binary=:all:" in argv
    assert "--platform=manylinux2014_aarch64" in argv and argv[-1] == "zstandard==0.25.0"


def test_unknown_suite_is_refused() -> None:
    with pytest.raises(ImageError, match="SUITE_PYTHON"):
        baseimage.plan_builder(BaseSpec(suite="sid"))


def test_prune_rootfs_keeps_directories_apt_needs(tmp_path: Path) -> None:
    lists = tmp_path / "var/lib/apt/lists/partial"
    lists.mkdir(parents=True)
    (tmp_path / "var/lib/apt/lists/deb.debian.org_Packages").write_text("x")
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "var/log/dpkg.log").write_text("x")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("abc\n")
    baseimage.prune_rootfs(tmp_path)
    assert lists.is_dir() and not (tmp_path / "var/lib/apt/lists/deb.debian.org_Packages").exists()
    assert not (tmp_path / "var/log/dpkg.log").exists()
    assert (tmp_path / "etc/machine-id").read_text() == ""


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("swstack/debian:bookworm", ("swstack/debian", "bookworm")),
        ("swstack/debian", ("swstack/debian", "latest")),
        ("127.0.0.1:5000/jupyter/py3", ("127.0.0.1:5000/jupyter/py3", "latest")),
        ("127.0.0.1:5000/jupyter/py3:2024", ("127.0.0.1:5000/jupyter/py3", "2024")),
    ],
)
def test_split_tag(ref: str, expected: tuple[str, str]) -> None:
    assert split_tag(ref) == expected


def test_tar_of_the_same_tree_is_the_same_bytes(tmp_path: Path) -> None:
    import os

    from swstack import fsutil, proc

    names = ["b/two", "a/one", "c", *(f"d/{i:02d}" for i in range(20))]
    digests = []
    for attempt, mtime in enumerate((1_800_000_000, 1_900_000_000)):
        root = tmp_path / f"root{attempt}"
        for name in names if attempt == 0 else reversed(names):  # created in another order each time
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)
            os.utime(root / name, (mtime + attempt, mtime + attempt))
        out = tmp_path / f"root{attempt}.tar"
        proc.run(baseimage.tar_argv(root, out, 1_704_067_200))
        digests.append(fsutil.sha256_file(out))
    assert digests[0] == digests[1]
    # Members in name order, not the directory's (ext4 lists by name hash, so the same names
    # read back in the same unsorted order whatever order made them).
    import tarfile

    with tarfile.open(tmp_path / "root0.tar") as tar:
        members = [m for m in tar.getnames() if m.startswith("./d/")]
    assert len(members) == 20 and members == sorted(members)
