"""The committed lockfiles name real sources only: no path of the machine that made them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from swstack import paths
from swstack.lock import PYPI_INDEX
from swstack.site import canonical_channel
from swstack.spec import Stack, load_stack, stack_files

ROOT = Path(__file__).resolve().parents[2]
LOCKFILES = sorted((ROOT / "lockfiles").rglob("conda-lock.yml"))


def machine_paths() -> list[str]:
    return ["file://", "127.0.0.1", "/tmp/", "/home/", "/root/", str(Path.home()), str(paths.cache_dir()), str(ROOT)]


def test_every_stack_variant_has_a_committed_lockfile() -> None:
    assert len(LOCKFILES) >= 3


@pytest.mark.parametrize("lockfile", LOCKFILES, ids=lambda p: str(p.relative_to(ROOT / "lockfiles")))
def test_lockfile_holds_no_path_of_the_build_machine(lockfile: Path) -> None:
    text = lockfile.read_text()
    for path in machine_paths():
        assert path not in text, f"{lockfile.relative_to(ROOT)} names {path!r}"


@pytest.mark.parametrize("lockfile", LOCKFILES, ids=lambda p: str(p.relative_to(ROOT / "lockfiles")))
def test_lockfile_urls_are_the_stacks_channels_pypi_or_git(lockfile: Path) -> None:
    data = yaml.safe_load(lockfile.read_text())
    meta = data["metadata"]["custom_metadata"]
    stacks = {(s.name, s.variant): s for path in stack_files(ROOT / "stacks") for s in _variants(path)}
    stack = stacks[(meta["swstack.stack"], meta["swstack.variant"])]
    channels = tuple(canonical_channel(c) for c in stack.channels)
    assert [c["url"] for c in data["metadata"]["channels"]] == list(channels)
    for package in data["package"]:
        url = package["url"]
        if package["manager"] == "conda":
            assert url.startswith(tuple(c + "/" for c in channels)) and package["hash"]["sha256"], url
        elif url.startswith("git+"):
            assert url.startswith("git+https://") and len(url.rsplit("@", 1)[1]) == 40, url
        else:
            assert url.startswith(PYPI_INDEX + "/") and package["hash"]["sha256"], url


def _variants(path: Path) -> list[Stack]:
    from swstack.spec import load_stack_file

    return [load_stack(path, v) for v in load_stack_file(path).variant_names]


@pytest.mark.parametrize("lockfile", LOCKFILES, ids=lambda p: str(p.relative_to(ROOT / "lockfiles")))
def test_a_lockfile_edited_by_hand_is_found_out(lockfile: Path, tmp_path: Path) -> None:
    from swstack.lock import edited, read_lockfile

    assert edited(read_lockfile(lockfile), lockfile) is None  # as committed: what was locked
    text = lockfile.read_text()
    start = text.index("\n  hash:\n", text.index("\npackage:\n"))
    at = text.index("sha256: ", start) + len("sha256: ")
    copy = tmp_path / "conda-lock.yml"
    copy.write_text(text[:at] + "f" * 64 + text[at + 64 :])
    assert "its packages are not the ones locked" in (edited(read_lockfile(copy), copy) or "")


@pytest.mark.parametrize("lockfile", LOCKFILES[:1], ids=lambda p: str(p.relative_to(ROOT / "lockfiles")))
def test_a_lockfile_whose_digest_line_was_deleted_is_found_out(lockfile: Path, tmp_path: Path) -> None:
    from swstack.lock import PACKAGES_KEY, edited, read_lockfile

    lines = lockfile.read_text().splitlines(keepends=True)
    kept = [line for line in lines if PACKAGES_KEY not in line]
    assert len(kept) == len(lines) - 1
    copy = tmp_path / "conda-lock.yml"
    copy.write_text("".join(kept))
    assert edited(read_lockfile(copy), copy) == (
        f"{copy}: it records no {PACKAGES_KEY} (the digest of its packages); lock again, never edit a lockfile"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty"), ("- a list\n", "not a mapping of conda-lock's version, metadata and package"),
     ("version: 1\n", "package: field required"), ("version: 3\n", "the file has unknown version 3"),
     ("version: 1\nmetadata: {platforms: [linux-64], channels: [], content_hash: {linux-64: a" + "0" * 63 + "}}\n"
      "package: []\n", "metadata.sources: field required"),
     ("version: 1\nmetadata: {platforms: [linux-64], channels: [], sources: [], content_hash: "
      "{linux-64: [" + "1, " * 40 + "]}}\npackage: []\n",
      "metadata.content_hash.linux-64: input should be a valid string, got "
      "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,...")],
    ids=["empty", "list", "partial", "unknown-version", "missing-key-of-a-large-mapping", "large-value"],
)
def test_an_unreadable_lockfile_is_one_line_saying_why(tmp_path: Path, text: str, why: str) -> None:
    from swstack.errors import LockError
    from swstack.lock import read_lockfile

    path = tmp_path / "conda-lock.yml"
    path.write_text(text)
    with pytest.raises(LockError) as caught:
        read_lockfile(path)
    assert str(caught.value) == f"{path}: not a readable conda-lock file ({why}); lock again"
