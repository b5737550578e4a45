"""Atomic writes: each writer of a path has its own temporary sibling, and removes only its own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from swstack.fsutil import atomic_dir, atomic_output, atomic_write_text


class Interrupted(Exception):
    pass


def test_two_writers_of_one_path_write_separate_partials(tmp_path: Path) -> None:
    """Two `doit lock` runs of one stack: the second one failing leaves the first's write whole."""
    target = tmp_path / "conda-lock.yml"
    with atomic_output(target) as first:
        first.write_text("first")
        with pytest.raises(Interrupted), atomic_output(target) as second:
            assert second != first and second.parent == first.parent  # same directory: the rename is atomic
            second.write_text("second")
            raise Interrupted
        assert first.read_text() == "first"
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["conda-lock.yml"]


def test_atomic_write_text_leaves_another_writers_partial_alone(tmp_path: Path) -> None:
    target = tmp_path / "nightly.json"
    with atomic_output(target) as slow:
        slow.write_text("slow")
        atomic_write_text(target, "quick")
        assert target.read_text() == "quick" and slow.read_text() == "slow"
    assert target.read_text() == "slow"  # the last rename wins, and both were whole
    assert os.listdir(tmp_path) == ["nightly.json"]


def test_a_failed_write_removes_its_partial_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Interrupted), atomic_output(target) as partial:
        partial.write_text("half")
        raise Interrupted
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_the_written_file_has_the_mode_open_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644


def test_two_directory_writers_each_have_their_own_temporary_and_old_names(tmp_path: Path) -> None:
    target = tmp_path / "image"
    target.mkdir()
    (target / "v").write_text("0")
    with atomic_dir(target) as first:
        (first / "v").write_text("1")
        with atomic_dir(target) as second:
            assert second != first
            (second / "v").write_text("2")
        assert (target / "v").read_text() == "2" and (first / "v").read_text() == "1"
    assert (target / "v").read_text() == "1"
    assert os.listdir(tmp_path) == ["image"]
