"""nightly.py: which version is the previous nightly, what changed, the summary table; what run_stack calls."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swstack.manifest import Manifest, PackageEntry, TarballInfo
from swstack.nightly import (
    Changes,
    StackFailure,
    StackReport,
    changes_between,
    previous_version,
    render_markdown,
    summary_dict,
)


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
    assert previous_version(versions, "2026.12.2", "2026.12.2") == "2026.12.2"  # reused: none changed since
    assert previous_version(["2026.12.2"], "2026.12.2", "2026.12.2") == "2026.12.2"  # not a first nightly
    assert previous_version(versions, "2026.12.2", "2025.01.01") == "2026.12.1"  # pruned since
    assert previous_version(["2026.12.2"], "2026.12.2", None) is None


def test_a_previous_manifest_that_cannot_be_read_is_passed_over_for_an_older_one(tmp_path: Path) -> None:
    from swstack.nightly import previous_manifest

    for version in ("2026.12.1", "2026.12.2", "2026.12.3"):
        (tmp_path / "py3" / version).mkdir(parents=True)
        (tmp_path / "py3" / version / "manifest.json").write_text(_manifest(version).to_json())
    (tmp_path / "py3" / "2026.12.2" / "manifest.json").write_text("{damaged")
    found = previous_manifest(tmp_path, "py3", "2026.12.3", "2026.12.2")
    assert found is not None and found.version == "2026.12.1"
    (tmp_path / "py3" / "2026.12.1" / "manifest.json").write_text("[]")
    assert previous_manifest(tmp_path, "py3", "2026.12.3", None) is None  # as on a first nightly


def test_a_second_nightly_reusing_the_version_reports_no_change_not_a_first_nightly(tmp_path: Path) -> None:
    """Run twice on one day: the second reuses the version the first reported, so nothing changed since."""
    from swstack.nightly import _changes_cell, previous_manifest

    (tmp_path / "py3" / "2026.12.2").mkdir(parents=True)
    current = _manifest("2026.12.2", NUMPY, PYTHON)
    (tmp_path / "py3" / "2026.12.2" / "manifest.json").write_text(current.to_json())
    previous = previous_manifest(tmp_path, "py3", "2026.12.2", "2026.12.2")
    assert _changes_cell(changes_between(previous, current)) == "none since 2026.12.2"
    assert _changes_cell(changes_between(previous_manifest(tmp_path, "py3", "2026.12.2", None), current)) \
        == "first nightly"


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
    assert StackReport.from_dict(data["stacks"][0]) == report and data["failed"] == []


def test_the_summary_lists_failed_stacks_with_their_reason_after_the_table() -> None:
    failed = [StackFailure("py3-dev", "lockfiles/py3/dev/conda-lock.yml is stale: it does not exist.")]
    assert render_markdown([], failed) == (
        "Failed (1):\n\n- `py3-dev`: lockfiles/py3/dev/conda-lock.yml is stale: it does not exist.\n"
    )
    assert summary_dict([], failed)["failed"] == [
        {"stack_id": "py3-dev", "error": "lockfiles/py3/dev/conda-lock.yml is stale: it does not exist."}
    ]


def _nightly_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reason: str | None) -> dict[str, list[Any]]:
    """run_stack's collaborators replaced by recorders; returns what each was called with."""
    from swstack import build, image, lock, nightly, release
    from swstack.build import BuildResult

    calls: dict[str, list[Any]] = {}

    def record(name: str, result: Any = None) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            calls.setdefault(name, []).append((args, kwargs))
            return result(*args, **kwargs) if callable(result) else result
        return fake

    artifact = tmp_path / "py3" / "9.9"
    manifest = _manifest("9.9")
    monkeypatch.setattr(image, "registry_answers", record("registry_answers", True))
    monkeypatch.setattr(image, "mirror_base", record("mirror_base"))
    monkeypatch.setattr(image, "mirrors_base", record("mirrors_base", False))
    built = SimpleNamespace(repository="r.example.org/swstack/py3")
    monkeypatch.setattr(image, "build_image", record("build_image", built))
    monkeypatch.setattr(lock, "lock", record("lock"))
    monkeypatch.setattr(build, "why_not_current", record("why_not_current", reason))
    monkeypatch.setattr(build, "artifact_manifest", record("artifact_manifest", manifest))
    monkeypatch.setattr(build, "run_build", record("run_build", BuildResult(manifest, artifact, 1.0)))
    monkeypatch.setattr(build, "existing_versions", record("existing_versions", []))
    monkeypatch.setattr(nightly, "smoke_test", record("smoke_test", ("python",)))
    monkeypatch.setattr(release, "push_attested", record("push_attested", SimpleNamespace(digest="sha256:" + "c" * 64)))
    published = "r.example.org/py3:9.9@sha256:" + "d" * 64
    monkeypatch.setattr(release, "publish_attested", record("publish_attested", published))
    return calls


@pytest.mark.parametrize("reason", [None, "no artifact of py3 9.9"], ids=["reused", "built"])
def test_the_nightly_pushes_and_publishes_through_the_attesting_and_signing_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reason: str | None
) -> None:
    """`doit ci` sends an artifact as `doit push` and `doit publish` do: through release.py, which
    attaches the SBOM and provenance and signs (tested with a registry in test_signing)."""
    from swstack.nightly import run_stack

    calls = _nightly_world(monkeypatch, tmp_path, reason)
    site = SimpleNamespace(registry="r.example.org", artifacts=tmp_path)
    report = run_stack(SimpleNamespace(stack_id="py3"), site, tmp_path, version="9.9")  # type: ignore[arg-type]

    artifact = tmp_path / "py3" / "9.9"
    assert calls["push_attested"] == [((site, artifact), {})]
    assert calls["publish_attested"] == [((site, artifact, "py3"), {})]
    assert report.published == "r.example.org/py3:9.9@sha256:" + "d" * 64
    assert report.image == "r.example.org/swstack/py3@sha256:" + "c" * 64
    # version= reaches the up-to-date check and the build
    assert calls["why_not_current"][0][1] == {"version": "9.9"}
    if reason is None:
        assert "run_build" not in calls and calls["artifact_manifest"][0][0][-1] == "9.9"
    else:
        assert calls["run_build"][0][1]["version"] == "9.9"


def test_the_nightly_wants_the_engine_before_it_builds_when_the_site_keeps_the_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image step puts the base into the site's registry through a Docker engine: with none
    answering, the nightly says so first, not after a build and a smoke test."""
    from swstack import engine, image
    from swstack.errors import SandboxError
    from swstack.nightly import run_stack

    calls = _nightly_world(monkeypatch, tmp_path, "no artifact of py3 9.9")
    monkeypatch.setattr(image, "mirrors_base", lambda stack, site: True)

    class NoEngine:
        def __init__(self, hint: str) -> None:
            self.hint = hint

        def ping(self) -> None:
            raise SandboxError(f"no Docker engine answers at unix:///var/run/docker.sock: {self.hint}")

    monkeypatch.setattr(engine, "DockerEngine", NoEngine)
    site = SimpleNamespace(registry="r.example.org", artifacts=tmp_path)
    with pytest.raises(SandboxError, match="no Docker engine answers.*start one"):
        run_stack(SimpleNamespace(stack_id="py3"), site, tmp_path, version="9.9")  # type: ignore[arg-type]
    assert "lock" not in calls and "run_build" not in calls


def test_a_nightly_that_fails_leaves_no_summary_of_an_earlier_run(tmp_path: Path) -> None:
    import socket

    from swstack.errors import PushError
    from swstack.nightly import SUMMARY_JSON, SUMMARY_MD, run_stack

    for name in (SUMMARY_JSON, SUMMARY_MD):
        (tmp_path / name).write_text("last night's\n")
    with socket.socket() as s:  # a loopback port nothing listens on: the run fails at its first step
        s.bind(("127.0.0.1", 0))
        registry = f"127.0.0.1:{s.getsockname()[1]}"
    site = SimpleNamespace(registry=registry, artifacts=tmp_path)
    with pytest.raises(PushError, match="no registry answers"):
        run_stack(SimpleNamespace(stack_id="py3"), site, tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / SUMMARY_JSON).exists() and not (tmp_path / SUMMARY_MD).exists()


def test_a_failed_nightly_is_summarised_with_its_reason_not_as_last_night_s_success(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`doit -c ci` writes the summary after a stack failed: that stack is listed as failed, with its
    error's first line, though an earlier night's report is still there (kept for the next diff)."""
    import json

    from swstack import lock
    from swstack.errors import StaleLockError
    from swstack.nightly import load_report, report_path, run_stack, write_summary

    _nightly_world(monkeypatch, tmp_path, None)
    site = SimpleNamespace(registry="r.example.org", artifacts=tmp_path)
    stack = SimpleNamespace(stack_id="py3")
    run_stack(stack, site, tmp_path, version="9.9")  # type: ignore[arg-type]  # last night's, a success

    def stale(*args: Any, **kwargs: Any) -> None:
        raise StaleLockError("lockfiles/py3/conda-lock.yml is stale: inputs changed.\nRun `doit lock stack=py3`.")

    monkeypatch.setattr(lock, "lock", stale)
    with pytest.raises(StaleLockError):
        run_stack(stack, site, tmp_path, version="9.9")  # type: ignore[arg-type]
    json_path, md_path = write_summary(site, ["py3"])  # type: ignore[arg-type]
    summary = json.loads(json_path.read_text())
    assert summary["stacks"] == []
    assert summary["failed"] == [{"stack_id": "py3", "error": "lockfiles/py3/conda-lock.yml is stale: inputs changed."}]
    assert "- `py3`: lockfiles/py3/conda-lock.yml is stale: inputs changed." in md_path.read_text()
    assert load_report(report_path(site, "py3")) is not None  # type: ignore[arg-type]

    _nightly_world(monkeypatch, tmp_path, None)  # fixed: the next run finishes, and says so
    run_stack(stack, site, tmp_path, version="9.9")  # type: ignore[arg-type]
    summary = json.loads(write_summary(site, ["py3"])[0].read_text())  # type: ignore[arg-type]
    assert [r["stack_id"] for r in summary["stacks"]] == ["py3"] and summary["failed"] == []


def test_a_nightly_stopped_half_way_is_a_failure_for_a_summary_gathered_later(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from swstack import nightly

    _nightly_world(monkeypatch, tmp_path, None)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(nightly, "smoke_test", interrupted)
    site = SimpleNamespace(registry="r.example.org", artifacts=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        nightly.run_stack(SimpleNamespace(stack_id="py3"), site, tmp_path, version="9.9")  # type: ignore[arg-type]
    assert nightly.load_failure(site, "py3") == StackFailure(  # type: ignore[arg-type]
        "py3", "did not finish (stopped or crashed while running)")


# The stack's python as the smoke test starts it: it fails the smoke test if it sees the host's /tmp,
# then writes to its /tmp and its home.
SMOKE_PYTHON = """#!/bin/sh
set -e
for path in "{secret}" "{socket}"; do
    if [ -e "$path" ]; then echo "sees the host's $path" >&2; exit 1; fi
done
echo left behind > "{leave}"
echo history > "$HOME/.python_history"
"""


def test_the_smoke_test_runs_the_tree_with_a_private_tmp(tmp_path: Path) -> None:
    """The smoke test runs the stack's code: it sees nothing of the host's /tmp (another user's file,
    an ssh-agent's socket), and what it writes there, in its home too, is gone afterwards."""
    import socket
    import tarfile
    import tempfile
    import uuid

    from tests.support.artifacts import tar_member, write_tar

    from swstack.nightly import smoke_test

    leave = Path(f"/tmp/swstack-left-behind-{uuid.uuid4().hex}")
    with tempfile.TemporaryDirectory(prefix="ssh-", dir="/tmp") as agent_dir, \
            socket.socket(socket.AF_UNIX) as agent:
        secret, sock = Path(agent_dir) / "id_secret", Path(agent_dir) / "agent.sock"
        secret.write_text("another user's file")
        agent.bind(str(sock))
        python = SMOKE_PYTHON.format(secret=secret, socket=sock, leave=leave).encode()
        tarball = tmp_path / "py3.tar.zst"
        write_tar(tarball, [(tar_member("bin", mode=0o755, kind=tarfile.DIRTYPE), None),
                            (tar_member("bin/python", len(python), 0o755), python)])
        try:
            assert smoke_test(tarball, _manifest("2026.12.1")) == ("python",)
            assert not leave.exists()
        finally:
            leave.unlink(missing_ok=True)
