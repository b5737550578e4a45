"""nightly.py's pure parts: which version is the previous nightly, what changed, the summary table."""

from __future__ import annotations

from dataclasses import replace

from swstack.manifest import Manifest, PackageEntry, TarballInfo
from swstack.nightly import Changes, StackReport, changes_between, previous_version, render_markdown, summary_dict


def _manifest(version: str, *packages: PackageEntry) -> Manifest:
    return Manifest(stack="py3", variant="default", version=version, platform="linux-64", prefix="/data0/sw/py3",
                    lockfile_sha256="0" * 64, stackfile_sha256="1" * 64, tools={}, packages=packages, file_count=2,
                    total_size=10, git_commit="", build_time="2026-12-01T00:00:00Z", source_date_epoch=0,
                    tarball=TarballInfo("py3.tar.zst", "a" * 64, 5, "zstd"))


NUMPY = PackageEntry("numpy", "1.26.4", "py311_0", "conda-forge", "3" * 64, 1)
PYTHON = PackageEntry("python", "3.11.7", "h0_0", "conda-forge", "4" * 64, 1)


def test_the_previous_nightly_is_the_last_reported_version_else_the_one_before() -> None:
    versions = ["2026.11.30", "2026.12.1", "2026.12.2", "2026.12.2.1"]
    assert previous_version(versions, "2026.12.2.1", "2026.11.30") == "2026.11.30"
    assert previous_version(versions, "2026.12.2.1", None) == "2026.12.2"
    assert previous_version(versions, "2026.12.2", "2026.12.2") == "2026.12.1"  # reused: compare with the one before
    assert previous_version(versions, "2026.12.2", "2025.01.01") == "2026.12.1"  # pruned since
    assert previous_version(["2026.12.2"], "2026.12.2", None) is None


def test_changes_are_swstack_diffs() -> None:
    old = _manifest("2026.12.1", NUMPY, PYTHON)
    new = _manifest("2026.12.2", replace(NUMPY, version="2.0.0", sha256="5" * 64),
                    PackageEntry("labclient", "1.0", "", "file:///w", "6" * 64, 1, "pip"))
    changes = changes_between(old, new)
    assert changes == Changes("2026.12.1", added=(("labclient", "1.0"),), removed=(("python", "3.11.7=h0_0"),),
                              changed=(("numpy", "1.26.4=py311_0", "2.0.0=py311_0"),))
    assert changes.count == 3 and changes_between(None, new) == Changes(None)


def test_the_summary_is_a_table_and_json_that_reads_back() -> None:
    report = StackReport(stack_id="py3", version="2026.12.2", platform="linux-64", built=True,
                         tarball="py3-2026.12.2-linux-64.tar.zst", tarball_sha256="ab" * 32, tarball_size=3 << 20,
                         tree_size=9 << 20, file_count=12, packages=2,
                         image="127.0.0.1:5000/swstack/py3@sha256:" + "c" * 64,
                         published="127.0.0.1:5000/py3:2026.12.2@sha256:" + "d" * 64, smoke=("kernel python3",),
                         changes=Changes("2026.12.1", changed=(("numpy", "1.26.4", "2.0.0"),)), seconds=1.0)
    table = render_markdown([report])
    header, rule, row = table.splitlines()
    assert header.startswith("| stack | version |") and rule.startswith("|---|")
    assert row.startswith("| py3 | 2026.12.2 | 3.0 MiB |") and "`127.0.0.1:5000/swstack/py3@sha256:cccccccccccc`" in row
    assert "1 since 2026.12.1: numpy 1.26.4 → 2.0.0" in row
    data = summary_dict([report])
    assert StackReport.from_dict(data["stacks"][0]) == report
