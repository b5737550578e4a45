"""Stacks -> what a nightly job does for each -> a summary (``nightly.json`` + ``nightly.md``).

For every stack and variant: check that its lockfile is current (``check=1``), build it
unless its newest artifact is whole and from today's inputs, smoke-test the tarball (untar
it at its production prefix in a private root and start each of its kernels), build its
image, push it, publish the tarball, and compare its packages with the previous nightly's
(``swstack diff``'s logic). Each stack's report is written beside its versions as
``<artifacts>/<stack_id>/nightly.json``; a stack whose nightly did not finish has
``<artifacts>/<stack_id>/nightly-failed.json`` instead, with its error in one line.
``write_summary`` gathers the outcomes of the stacks a run covered into
``<artifacts>/nightly.json`` and a short Markdown table ``<artifacts>/nightly.md``, failed
stacks with their reason. ``doit -c ci`` (``tasks.py``) drives it; the GitHub workflow
``.github/workflows/nightly.yml`` runs one stack per matrix job.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import log, proc
from .errors import BuildError, PushError, first_line
from .fsutil import atomic_write_text
from .manifest import Manifest
from .site import Site
from .spec import Stack

REPORT_NAME = "nightly.json"
FAILURE_NAME = "nightly-failed.json"
SUMMARY_JSON = "nightly.json"
SUMMARY_MD = "nightly.md"
SCHEMA = 1

# Run with the stack's own python: starts the kernel named by argv[1] as Jupyter would, runs
# the cell argv[2] and prints, as the last line, JSON with what the cell printed and which
# python ran this driver.
KERNEL_CHECK = textwrap.dedent("""
    import json, sys
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=120)
    try:
        msg_id = kc.execute(sys.argv[2])
        out = []
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("ERROR " + msg["content"]["evalue"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    print(json.dumps({"out": "".join(out), "python": sys.executable}))
""")
PREFIX_CELL = "import sys; print(sys.prefix)"


@dataclass(frozen=True)
class Changes:
    """Packages added, removed and changed since the previous nightly (``swstack diff``)."""

    previous: str | None  # the previous nightly's version; None on the first nightly
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[tuple[str, str, str], ...] = ()

    @property
    def count(self) -> int:
        return len(self.added) + len(self.removed) + len(self.changed)


@dataclass(frozen=True)
class StackReport:
    """What one nightly did for one stack variant."""

    stack_id: str
    version: str
    platform: str
    built: bool  # False: the newest artifact was whole and current, and was reused
    tarball: str
    tarball_sha256: str
    tarball_size: int
    tree_size: int
    file_count: int
    packages: int
    image: str  # repository@digest
    published: str  # reference@digest of the tarball as an OCI artifact
    smoke: tuple[str, ...]  # what the smoke test checked
    changes: Changes
    seconds: float
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackReport:
        data = dict(data)
        ch = data.pop("changes")
        changes = Changes(ch["previous"], tuple(map(tuple, ch["added"])), tuple(map(tuple, ch["removed"])),
                          tuple(map(tuple, ch["changed"])))
        data["smoke"] = tuple(data.get("smoke", ()))
        known = set(cls.__dataclass_fields__)
        return cls(changes=changes, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class StackFailure:
    """A stack variant whose nightly did not finish, and why, in one line."""

    stack_id: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- pure --------------------------------------------------------------------------------------------


def previous_version(versions: Sequence[str], current: str, last_nightly: str | None) -> str | None:
    """The version to compare with: the last nightly's while it is still on disk (``current``
    itself when that nightly reused it: nothing changed since), else the newest version older
    than ``current``."""
    from .host.layout import version_key

    if last_nightly and last_nightly in versions:
        return last_nightly
    older = [v for v in versions if version_key(v) < version_key(current)]
    return max(older, key=version_key) if older else None


def changes_between(previous: Manifest | None, current: Manifest) -> Changes:
    from .host.commands import diff_packages

    if previous is None:
        return Changes(None)
    d = diff_packages(previous, current)
    return Changes(previous.version, d.added, d.removed, d.changed)


def summary_dict(reports: Sequence[StackReport], failed: Sequence[StackFailure] = ()) -> dict[str, Any]:
    return {"schema": SCHEMA, "stacks": [r.to_dict() for r in sorted(reports, key=lambda r: r.stack_id)],
            "failed": [f.to_dict() for f in sorted(failed, key=lambda f: f.stack_id)]}


def _short(digest_ref: str) -> str:
    """``repo@sha256:0123456789ab`` (12 hex digits are enough to tell digests apart in a table)."""
    head, sep, digest = digest_ref.partition("@sha256:")
    return f"{head}{sep}{digest[:12]}" if sep else digest_ref


def _changes_cell(c: Changes) -> str:
    if c.previous is None:
        return "first nightly"
    if not c.count:
        return f"none since {c.previous}"
    parts = [f"+{n} {v}" for n, v in c.added] + [f"-{n}" for n, _ in c.removed]
    parts += [f"{n} {a} → {b}" for n, a, b in c.changed]
    shown = ", ".join(parts[:8]) + (f", … {len(parts) - 8} more" if len(parts) > 8 else "")
    return f"{c.count} since {c.previous}: {shown}"


def render_markdown(reports: Sequence[StackReport], failed: Sequence[StackFailure] = ()) -> str:
    """A short table for a CI job summary: one row per stack variant built; then the failed ones, each
    with its reason."""
    from .log import human_bytes

    lines = []
    if reports:
        lines += ["| stack | version | tarball | tree | image | tarball sha256 | packages changed |",
                  "|---|---|---|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: r.stack_id):
        lines.append(
            f"| {r.stack_id} | {r.version}{'' if r.built else ' (reused)'} | {human_bytes(r.tarball_size)} | "
            f"{human_bytes(r.tree_size)}, {r.file_count} files | `{_short(r.image)}` | "
            f"`{r.tarball_sha256[:12]}` | {_changes_cell(r.changes)} |"
        )
    if failed:
        lines += [""] if reports else []
        lines += [f"Failed ({len(failed)}):", ""]
        lines += [f"- `{f.stack_id}`: {f.error}" for f in sorted(failed, key=lambda f: f.stack_id)]
    return "\n".join(lines) + "\n"


# ---- doing -------------------------------------------------------------------------------------------


@dataclass
class _Clock:
    started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)


def report_path(site: Site, stack_id: str) -> Path:
    return site.artifacts / stack_id / REPORT_NAME


def load_report(path: Path) -> StackReport | None:
    try:
        return StackReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if path.exists():
            log.warn(f"{path}: unreadable nightly report ({exc}); ignored")
        return None


def failure_path(site: Site, stack_id: str) -> Path:
    return site.artifacts / stack_id / FAILURE_NAME


def record_failure(site: Site, stack_id: str, error: str) -> None:
    failure = StackFailure(stack_id, error)
    atomic_write_text(failure_path(site, stack_id), json.dumps(failure.to_dict(), indent=2, ensure_ascii=False) + "\n")


def load_failure(site: Site, stack_id: str) -> StackFailure | None:
    """The failure the last nightly of ``stack_id`` recorded; None when it finished."""
    path = failure_path(site, stack_id)
    try:
        return StackFailure(stack_id, str(json.loads(path.read_text())["error"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # there, so the stack did not finish
        return StackFailure(stack_id, f"failed; its record {path} is unreadable ({exc})")


def run_stack(stack: Stack, site: Site, project: Path, *, version: str | None = None) -> StackReport:
    """One stack variant through the nightly: lock check, build, smoke test, image, push, publish.

    ``version``: the artifact's version (default: today's, ``YYYY.MM.DD[.N]``), reused when
    whole and current, built otherwise. Pushing and publishing go through ``release``, as
    ``doit push`` and ``doit publish`` do: attested, and signed when the site has keys.

    Until it finishes, the stack's outcome on disk is a failure: its error's first line once
    raised, "did not finish" while running, so a run killed half-way does not pass, in a summary
    gathered later, for the last night's success (whose report stays, for the next diff)."""
    drop_summary(site)
    record_failure(site, stack.stack_id, "did not finish (stopped or crashed while running)")
    try:
        report = _run_stack(stack, site, project, version=version)
    except Exception as exc:
        record_failure(site, stack.stack_id, first_line(exc))
        raise
    failure_path(site, stack.stack_id).unlink()
    return report


def _run_stack(stack: Stack, site: Site, project: Path, *, version: str | None) -> StackReport:
    from .build import artifact_manifest, run_build, why_not_current
    from .engine import IMAGE_HINT, DockerEngine
    from .image import build_image, mirror_base, mirrors_base, registry_answers
    from .lock import lock
    from .manifest import host_platform
    from .release import publish_attested, push_attested

    clock = _Clock()
    if not site.registry or not registry_answers(site):
        raise PushError(f"nightly {stack.stack_id}: no registry answers at {site.registry or '(none set)'}; "
                        "the nightly pushes and publishes, so start it or set [registry] url in the site file")
    if mirrors_base(stack, site):  # the image step puts the base there through an engine: say so before the build
        DockerEngine(hint=IMAGE_HINT).ping()
    log.step(f"nightly {stack.stack_id}: lock check")
    lock(stack, site, project, check=True)
    reason = why_not_current(stack, site, project, version=version)
    if reason is None:
        manifest = artifact_manifest(site.artifacts, stack.stack_id, host_platform(), version)
        assert manifest is not None  # current implies an artifact
        log.info(f"nightly {stack.stack_id}: {manifest.version} is whole and current, reused")
        artifact = site.artifacts / stack.stack_id / manifest.version
    else:
        log.step(f"nightly {stack.stack_id}: build ({reason})")
        result = run_build(stack, site, project, version=version, relock=False)
        manifest, artifact = result.manifest, result.artifact_dir
    if manifest.tarball is None:
        raise BuildError(f"{artifact / 'manifest.json'} names no tarball")
    smoke = smoke_test(artifact / manifest.tarball.name, manifest)
    log.step(f"nightly {stack.stack_id}: image, push, publish")
    mirror_base(stack, site)
    image = build_image(stack, site, project, artifact)
    pushed = push_attested(site, artifact)
    published = publish_attested(site, artifact, stack.stack_id)

    last = load_report(report_path(site, stack.stack_id))
    previous = previous_manifest(site.artifacts, stack.stack_id, manifest.version, last.version if last else None)
    report = StackReport(
        stack_id=stack.stack_id, version=manifest.version, platform=manifest.platform, built=reason is not None,
        tarball=manifest.tarball.name, tarball_sha256=manifest.tarball.sha256, tarball_size=manifest.tarball.size,
        tree_size=manifest.total_size, file_count=manifest.file_count, packages=len(manifest.packages),
        image=f"{image.repository}@{pushed.digest}", published=published, smoke=smoke,
        changes=changes_between(previous, manifest), seconds=clock.seconds(),
    )
    atomic_write_text(report_path(site, stack.stack_id), json.dumps(report.to_dict(), indent=2) + "\n")
    log.info(f"nightly {stack.stack_id} {manifest.version}: done in {report.seconds:.0f}s, "
             f"packages changed: {_changes_cell(report.changes)}")
    return report


def previous_manifest(artifacts: Path, stack_id: str, current: str, last_nightly: str | None) -> Manifest | None:
    """The manifest the nightly compares ``current`` with (``previous_version``'s choice).

    One that cannot be read is passed over, with a warning, for the version before it: by
    then the image is pushed and the tarball published, so a damaged old manifest must not
    fail the night, nor leave it without a report.
    """
    from .artifact import ArtifactError, load_manifest
    from .build import existing_versions

    versions = existing_versions(artifacts, stack_id, complete=True)
    while (before := previous_version(versions, current, last_nightly)) is not None:
        try:
            return load_manifest(artifacts / stack_id / before)
        except ArtifactError as exc:
            log.warn(f"{exc}; the nightly compares {stack_id} {current} with an older version")
            versions.remove(before)
    return None


def smoke_test(tarball: Path, manifest: Manifest) -> tuple[str, ...]:
    """Untar at the production prefix in a private root (bubblewrap) and start every kernel.

    Returns what was checked. A stack without kernels runs its python, if it has one.
    """
    from .sandbox import Mount, private_root_argv, sandbox_env

    prefix = Path(manifest.prefix)
    checked = []
    with tempfile.TemporaryDirectory(prefix="swstack-smoke-") as tmp:
        parent = Path(tmp) / "sw"
        (parent / prefix.name).mkdir(parents=True)
        proc.run(["tar", "--zstd" if manifest.tarball and manifest.tarball.compression == "zstd" else "--gzip",
                  "-xf", tarball, "-C", parent / prefix.name], error=BuildError, what=f"untar {tarball.name}")
        # The tree's code runs here: no network, no secret of ours in its environment, and a /tmp of
        # its own for its home (jupyter's runtime files), as the host's directories are read-only
        # inside. On disk, not the tmpfs: a kernel may write caches to its home (Julia's default
        # depot is ~/.julia).
        home = Path(tmp) / "home"
        home.mkdir()
        root = private_root_argv([Mount(parent, str(prefix.parent))], tmp=home, network=False)
        env = {**sandbox_env(os.environ), "HOME": "/tmp", "JUPYTER_RUNTIME_DIR": "/tmp/runtime"}
        python = f"{prefix}/bin/python"
        for kernel in manifest.kernels:
            out = proc.output([*root, python, "-c", KERNEL_CHECK, kernel, PREFIX_CELL], env=env, error=BuildError,
                              what=f"smoke test: kernel {kernel} of {manifest.stack_id}", timeout=600)
            printed = json.loads(out.splitlines()[-1])["out"].strip()
            if printed != str(prefix):
                raise BuildError(f"smoke test: kernel {kernel} of {manifest.stack_id} {manifest.version} runs in "
                                 f"{printed!r}, not {prefix}")
            checked.append(f"kernel {kernel}")
        if not manifest.kernels and (parent / prefix.name / "bin" / "python").exists():
            proc.run([*root, python, "-c", "import sys; print(sys.prefix)"], env=env, error=BuildError,
                     what=f"smoke test: python of {manifest.stack_id}")
            checked.append("python")
    log.info(f"smoke test of {manifest.stack_id} {manifest.version}: {', '.join(checked) or 'nothing to run'}")
    return tuple(checked)


def drop_summary(site: Site) -> None:
    """A run starting removes the last run's summary: a run that fails must not leave one that looks like its own."""
    for name in (SUMMARY_JSON, SUMMARY_MD):
        (site.artifacts / name).unlink(missing_ok=True)


def write_summary(site: Site, stack_ids: Sequence[str]) -> tuple[Path, Path]:
    """Gather the outcomes of ``stack_ids`` into ``<artifacts>/nightly.json`` and ``nightly.md``: the
    report of each stack whose last nightly finished, the recorded error of each whose did not."""
    reports, failed = [], []
    for stack_id in stack_ids:
        failure = load_failure(site, stack_id)  # first: a failed stack keeps an earlier night's report
        if failure is not None:
            failed.append(failure)
            continue
        report = load_report(report_path(site, stack_id))
        if report is None:
            raise BuildError(f"no nightly report for {stack_id} in {report_path(site, stack_id)}; "
                             f"run `doit ci stack=...` for it first")
        reports.append(report)
    json_path, md_path = site.artifacts / SUMMARY_JSON, site.artifacts / SUMMARY_MD
    atomic_write_text(json_path, json.dumps(summary_dict(reports, failed), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, render_markdown(reports, failed))
    outcome = f"{len(reports)} stack(s) done, {len(failed)} failed" if failed else f"{len(reports)} stack(s)"
    log.info(f"nightly summary of {outcome}: {json_path}, {md_path}")
    return json_path, md_path
