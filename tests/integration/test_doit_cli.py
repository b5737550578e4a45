"""The doit commands as a user types them, in a copy of the project."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.project import PROJECT, doit, project_with_dodo
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - the `registry` fixture
from tests.support.signals import sigint_as_from_a_terminal

from swstack.build import ARTIFACTS
from swstack.site import Site


@pytest.fixture()
def project(tmp_path: Path, project_copy: Path) -> Path:
    return project_with_dodo(tmp_path / "proj", project_copy)


def test_list_shows_every_task_with_help(project: Path) -> None:
    result = doit(project, "list")
    assert result.returncode == 0, result.stderr
    for task in ("channel", "lock", "build", "image", "push", "publish", "images", "demo"):
        line = next(line for line in result.stdout.splitlines() if line.split()[0] == task)
        assert len(line.split()) > 3  # a one-line description follows the name


def test_ctrl_c_while_doit_loads_its_tasks_ends_in_one_line_and_130(tmp_path: Path) -> None:
    """SIGINT while the task creators read the site file: a FIFO that no one writes holds the load
    there, at a known point, until the signal comes."""
    inputs = tmp_path / "inputs"
    shutil.copytree(PROJECT / "stacks", inputs / "stacks")
    project = project_with_dodo(tmp_path / "proj", inputs)
    site = tmp_path / "site.toml"
    os.mkfifo(site)
    loading = subprocess.Popen([sys.executable, "-m", "doit", "list", f"site={site}"], cwd=project,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=sigint_as_from_a_terminal)
    writer = _open_when_read(site, loading)
    try:
        loading.send_signal(signal.SIGINT)
        out, err = loading.communicate(timeout=60)
    finally:
        os.close(writer)
    assert (loading.returncode, err) == (130, "interrupted; run the same command again to finish\n"), err
    assert out == ""


def _open_when_read(fifo: Path, reader: subprocess.Popen[str]) -> int:
    """The write end of ``fifo``, opened once ``reader`` has opened it to read (and so waits in it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and reader.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.05)
    reader.kill()
    raise AssertionError(f"doit never read {fifo}: {reader.communicate()}")


def test_a_bad_stack_file_exits_2_with_a_located_message(project: Path) -> None:
    (project / "stacks/bad.toml").write_text('name = "bad"\nchanels = ["conda-forge"]\n[dependencies]\npython = "*"\n')
    result = doit(project, "lock", "stack=bad", "site=sites/offline.toml")
    assert result.returncode == 2
    assert "stacks/bad.toml:2: chanels: unknown key; did you mean 'channels'?" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # doit plans every task for every command: the broken file must not stop the others.
    listed = doit(project, "list")
    assert listed.returncode == 0, listed.stderr
    build = next(line for line in listed.stdout.splitlines() if line.split()[0] == "build")
    # One line, the misspelt key's (not also "channels: required key is missing").
    assert build.endswith("(cannot be planned: stacks/bad.toml:2: chanels: unknown key; did you mean 'channels'?)")
    assert next(line for line in listed.stdout.splitlines() if line.split()[0] == "keygen").count("cannot") == 0


def test_an_unknown_stack_exits_2(project: Path) -> None:
    result = doit(project, "lock", "stack=py2")
    assert result.returncode == 2 and "did you mean 'py3'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_version_that_cannot_name_a_directory_and_a_tag_is_refused_before_anything_is_written(
    project: Path,
) -> None:
    for version in ("sub/dir", "1.0+local", "../../evil"):
        result = doit(project, "build", "stack=py3", f"version={version}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"error: version {version!r}: use letters, digits and . _ - (at most 128, the first a letter or digit), "
            "e.g. 2026.11.21 or 29.0.0"
        )
    assert not (project / "artifacts").exists() and not (project.parent / "evil").exists()


def test_version_is_refused_where_it_cannot_apply_and_named_where_it_does(project: Path) -> None:
    for task in ("lock", "images"):
        result = doit(project, task, "stack=py3", "version=9.9")
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"error: {task}: version=9.9 does not apply" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    for task in ("push", "publish", "sign"):  # the artifact of that version, which is not there
        result = doit(project, task, "stack=py3", "variant=dev", "version=9.9", "site=sites/offline.toml")
        assert result.returncode in (7, 13), result.stdout + result.stderr  # sign: no key on this site, first
        if task != "sign":
            assert "no artifact of py3-dev 9.9 for " in result.stderr
            assert "run `doit build stack=py3 variant=dev version=9.9`" in result.stderr, result.stderr


@pytest.mark.slow
def test_lock_is_a_noop_then_relocks_on_edit_and_check_catches_staleness(project: Path, offline_site: Site) -> None:
    lockfile = project / "lockfiles/antares-kernel/conda-lock.yml"
    before = lockfile.read_text()
    noop = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml")
    assert noop.returncode == 0 and lockfile.read_text() == before
    assert "locking" not in noop.stderr  # doit's up-to-date check or our own: nothing solved

    check = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml", "check=1")
    assert check.returncode == 0, check.stderr

    at = before.index("sha256: ", before.index("\npackage:\n")) + len("sha256: ")
    lockfile.write_text(before[:at] + "f" * 64 + before[at + 64 :])
    edited = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml", "check=1")
    assert edited.returncode == 5
    [line] = [x for x in edited.stderr.splitlines() if "is stale" in x]
    assert line.count("conda-lock.yml") == 1 and "its packages are not the ones locked" in line, edited.stderr
    lockfile.write_text(before)

    stack = project / "stacks/antares-kernel.toml"
    stack.write_text(stack.read_text().replace('numpy = ">=1.26"', 'numpy = ">=1.25"'))
    stale = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml", "check=1")
    assert stale.returncode == 5
    assert "is stale" in stale.stderr and "doit lock stack=antares-kernel" in stale.stderr
    assert lockfile.read_text() == before  # check writes nothing

    relock = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml")
    assert relock.returncode == 0, relock.stderr
    assert lockfile.read_text() != before


def _failed_lock_after_edit(project: Path, stack_file: str, old: str, new: str) -> subprocess.CompletedProcess[str]:
    """``doit lock stack=antares-kernel`` after replacing ``old`` by ``new`` in ``stack_file``:
    it fails as a lock error (exit 4), with no traceback, and leaves the lockfile as it was."""
    path = project / stack_file
    path.write_text(path.read_text().replace(old, new))
    lockfile = project / "lockfiles/antares-kernel/conda-lock.yml"
    before = lockfile.read_text()
    result = doit(project, "lock", "stack=antares-kernel", "site=sites/offline.toml")
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr
    assert lockfile.read_text() == before and not list(lockfile.parent.glob("*.partial"))
    return result


@pytest.mark.slow
def test_unsatisfiable_spec_names_the_entry_and_writes_nothing(project: Path, offline_site: Site) -> None:
    result = _failed_lock_after_edit(project, "stacks/antares-kernel.toml", 'numpy = ">=1.26"', 'numpy = ">=99"')
    assert "cannot solve antares-kernel" in result.stderr
    assert "stacks/antares-kernel.toml:" in result.stderr and "dependencies.numpy" in result.stderr


@pytest.mark.slow
def test_a_variants_conflicting_entry_is_named_at_its_own_line(project: Path, offline_site: Site) -> None:
    stack = project / "stacks/py3.toml"
    text = stack.read_text().replace(
        'description = "development client from git (the seed\'s -d)"\n',
        'description = "development client from git (the seed\'s -d)"\ndependencies.numpy = ">=99"\n',
    )
    stack.write_text(text)
    line = text.splitlines().index('dependencies.numpy = ">=99"') + 1
    result = doit(project, "lock", "stack=py3", "variant=dev", "site=sites/offline.toml")
    assert result.returncode == 4
    assert f"stacks/py3.toml:{line}: variants.dev.dependencies.numpy = 'numpy >=99' is part of the conflict" in (
        result.stderr
    )


@pytest.mark.slow
def test_a_misspelt_channel_names_the_mirrors_and_writes_nothing(project: Path, offline_site: Site) -> None:
    """No conda channel is reachable here, as in an air-gapped site: the misspelt channel goes
    to the network, fails there, and the message says which channel and what the site mirrors."""
    result = _failed_lock_after_edit(project, "stacks/base.toml", 'channels = ["conda-forge"]',
                                     'channels = ["conda-froge"]')
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: ") and ": channels: cannot fetch the package index of conda-froge (" in error
    assert "/stacks/base.toml:5: channels: " in error  # the file and line that set it, not the stack's own file
    assert "; channel 'conda-froge' has no mirror in site 'offline'" in error
    assert "did you mean 'conda-forge'?; check the stack's channels" in error
    assert "Caused by" not in result.stderr and "Relax or remove" not in result.stderr


def test_a_mirror_directory_that_is_not_there_is_named(project: Path) -> None:
    site = project / "sites/elsewhere.toml"
    text = (project / "sites/offline.toml").read_text()
    site.write_text(text.replace('conda-forge = "{cache}/offline-channel"', 'conda-forge = "{project}/no-channel"'))
    # A check of a committed lockfile blames the missing mirror, not the lockfile.
    checked = doit(project, "lock", "stack=antares-kernel", "site=sites/elsewhere.toml", "check=1")
    assert checked.returncode == 4
    assert f"serves it from file://{project}/no-channel, which does not exist" in checked.stderr
    assert "is stale" not in checked.stderr and "Traceback" not in checked.stderr
    stack = project / "stacks/antares-kernel.toml"
    stack.write_text(stack.read_text().replace('numpy = ">=1.26"', 'numpy = ">=1.25"'))  # stale: a solve is due
    result = doit(project, "lock", "stack=antares-kernel", "site=sites/elsewhere.toml")
    assert result.returncode == 4
    assert f"serves it from file://{project}/no-channel, which does not exist" in result.stderr
    assert "doit channel" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_conda_lock_renders_an_explicit_list_from_the_offline_channel(project: Path, offline_site: Site,
                                                                      tmp_path: Path) -> None:
    """conda-lock's own tools read our lockfile; every URL is conda-forge's own, and the offline
    site's mirror holds each file with the locked sha256."""
    import urllib.parse

    import yaml

    from swstack.fsutil import sha256_file

    lockfile = project / "lockfiles/py3/conda-lock.yml"
    result = subprocess.run([str(Path(sys.executable).with_name("conda-lock")), "render", "--kind", "explicit",
                             "-p", "linux-64", "--filename-template", str(tmp_path / "explicit-{platform}"),
                             str(lockfile)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    urls = [line.split("#")[0] for line in (tmp_path / "explicit-linux-64").read_text().splitlines()
            if line.startswith(("file://", "http"))]
    assert len(urls) > 100 and all(url.startswith("https://conda.anaconda.org/conda-forge/") for url in urls)
    channel = (offline_site.cache / "offline-channel").as_uri()
    locked = {p["url"]: p["hash"]["sha256"] for p in yaml.safe_load(lockfile.read_text())["package"]
              if p["manager"] == "conda"}
    for url in urls:
        mirrored = offline_site.fetch_url(url)
        assert mirrored.startswith(channel + "/")
        assert sha256_file(Path(urllib.parse.unquote(urllib.parse.urlparse(mirrored).path))) == locked[url]


# ---- a built project: the up-to-date check looks at the artifact itself -------------------------------

SMALL = "antares-kernel"  # the smaller stack (no pip package, no ipywidgets): a real build takes a minute or two


@pytest.fixture(scope="module")
def built_project(tmp_path_factory: pytest.TempPathFactory, project_copy: Path) -> Path:
    """A project copy whose smallest stack was built once through `doit build` (namespace sandbox)."""
    root = project_with_dodo(tmp_path_factory.mktemp("built") / "proj", project_copy, sandbox="namespace")
    result = doit(root, "build", f"stack={SMALL}", "site=sites/offline.toml")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _only_artifact(project: Path) -> Path:
    (version_dir,) = (project / "artifacts" / SMALL).iterdir()
    return version_dir


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_every_kernel_the_tree_serves_starts_its_own_python(built_project: Path) -> None:
    """antares-kernel declares its kernels; ipykernel's own python3 spec comes with the package. The
    manifest lists all three, and each starts the tree's python, not the first on a user's PATH."""
    import json

    artifact = _only_artifact(built_project)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["kernels"] == ["antares", "antares-legacy", "python3"]
    tarball = artifact / manifest["tarball"]["name"]
    for kernel in manifest["kernels"]:
        member = f"share/jupyter/kernels/{kernel}/kernel.json"
        spec = json.loads(subprocess.run(["tar", "--zstd", "-xOf", str(tarball), member], check=True,
                                         capture_output=True, text=True).stdout)
        assert spec["argv"][0].startswith("/data0/sw/antares-kernel/"), (kernel, spec["argv"])


@pytest.mark.slow
def test_a_damaged_artifact_is_not_up_to_date_and_is_rebuilt(built_project: Path, tmp_path: Path) -> None:
    import json

    artifact = _only_artifact(built_project)
    manifest = json.loads((artifact / "manifest.json").read_text())
    tarball = artifact / manifest["tarball"]["name"]
    side = tarball.with_name(tarball.name + ".sha256")
    status = ["info", f"build:{SMALL}", "site=sites/offline.toml"]

    whole = doit(built_project, *status)
    assert whole.returncode == 0 and "status     : up-to-date" in whole.stdout, whole.stdout + whole.stderr

    def altered_manifest(path: Path) -> None:
        data = json.loads(path.read_text())
        data["tarball"]["sha256"] = "0" * 64
        path.write_text(json.dumps(data))

    damages = {
        "tarball removed": (tarball, Path.unlink, f"{tarball} is missing"),
        "tarball altered": (tarball, _flip_last_byte, f"{tarball} has sha256 "),
        "tarball grown": (tarball, lambda p: p.write_bytes(p.read_bytes() + b"x"), f"{tarball} has "),
        "side file removed": (side, Path.unlink, f"{side} is missing"),
        "side file altered": (side, _flip_last_byte, f"{side} does not name the tarball"),
        "manifest altered": (artifact / "manifest.json", altered_manifest, f"{side} does not name the tarball"),
        "manifest unreadable": (artifact / "manifest.json", lambda p: p.write_text("{"), "unreadable manifest"),
        "manifest removed": (artifact / "manifest.json", Path.unlink, f"no artifact of {SMALL}"),
    }
    for what, (part, damage, why) in damages.items():
        saved = tmp_path / part.name
        shutil.copy2(part, saved)
        damage(part)
        try:
            result = doit(built_project, *status)
            assert "status     : run" in result.stdout, f"{what}: {result.stdout}"
            assert f"build:{SMALL} is not up to date" in result.stderr, f"{what}: {result.stderr}"
            assert why in result.stderr, f"{what}: {result.stderr}"
        finally:
            shutil.move(saved, part)
    assert "status     : up-to-date" in doit(built_project, *status).stdout

    # As a user would find it: the tarball moved away, then a build. It rebuilds, saying why.
    moved = tmp_path / tarball.name
    shutil.move(tarball, moved)
    try:
        rebuilt = doit(built_project, "build", f"stack={SMALL}", "site=sites/offline.toml")
        assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
        assert f".  build:{SMALL}" in rebuilt.stdout and f"{tarball} is missing" in rebuilt.stderr
        # The build names the artifact's real directory, never the sandbox's mount point.
        assert ARTIFACTS not in rebuilt.stdout + rebuilt.stderr, rebuilt.stderr[-3000:]
        versions = sorted(p for p in (built_project / "artifacts" / SMALL).iterdir() if p != artifact)
        assert len(versions) == 1 and (versions[0] / "manifest.json").is_file()
        again = doit(built_project, "build", f"stack={SMALL}", "site=sites/offline.toml")
        assert again.returncode == 0 and f"-- build:{SMALL}" in again.stdout, again.stdout
        shutil.rmtree(versions[0])  # leave the module's project with its one whole artifact
    finally:
        shutil.move(moved, tarball)


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.registry
def test_the_image_of_a_version_built_from_older_inputs_is_made_as_it_is(
    built_project: Path, registry: LocalRegistry
) -> None:
    """`doit image version=V` after the stack file changed: V's image, no build of today's inputs
    first (which would be refused: V was built from others)."""
    import json

    artifact = _only_artifact(built_project)
    site = built_project / "sites/offline.toml"
    site.write_text(site.read_text().replace('url = "127.0.0.1:5000"', f'url = "{registry.host}"'))
    stack_file = built_project / "stacks" / f"{SMALL}.toml"
    original = stack_file.read_text()
    stack_file.write_text(original.replace('description = "', 'description = "(edited) '))
    try:
        status = doit(built_project, "info", f"build:{SMALL}", "site=sites/offline.toml")
        assert "status     : run" in status.stdout, status.stdout  # the edit makes today's inputs others
        result = doit(built_project, "image", f"stack={SMALL}", f"version={artifact.name}", "site=sites/offline.toml")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"build:{SMALL}" not in result.stdout and f".  image:{SMALL}" in result.stdout, result.stdout
        image = json.loads((artifact / "image" / "index.json").read_text())
        assert image["manifests"], image
        assert [p.name for p in (built_project / "artifacts" / SMALL).iterdir()] == [artifact.name]
    finally:
        stack_file.write_text(original)


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.registry
def test_a_current_artifact_whose_image_is_gone_gets_its_image_and_nothing_else(
    built_project: Path, registry: LocalRegistry
) -> None:
    """`doit build` (so `make demo`) with the artifact current but its image removed, the registry
    answering: the image is made again from the same artifact, no new build; then all is up to date."""
    import shutil

    artifact = _only_artifact(built_project)
    site = built_project / "sites/offline.toml"
    site.write_text(site.read_text().replace('url = "127.0.0.1:5000"', f'url = "{registry.host}"'))
    shutil.rmtree(artifact / "image", ignore_errors=True)
    tarball = next(artifact.glob("*.tar.zst"))
    built_at = tarball.stat().st_mtime_ns
    result = doit(built_project, "build", f"stack={SMALL}", "site=sites/offline.toml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"build:{SMALL} is not up to date: {artifact} has no image; making it" in result.stderr, result.stderr
    assert f"install {SMALL} at" not in result.stderr and tarball.stat().st_mtime_ns == built_at
    assert (artifact / "image" / "image.json").is_file()
    assert [p.name for p in (built_project / "artifacts" / SMALL).iterdir()] == [artifact.name]
    again = doit(built_project, "build", f"stack={SMALL}", "site=sites/offline.toml")
    assert again.returncode == 0 and f"-- build:{SMALL}" in again.stdout, again.stdout + again.stderr


# ---- the nightly job ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.registry
def test_doit_ci_runs_the_nightly_against_a_loopback_registry(built_project: Path, registry: LocalRegistry) -> None:
    """`doit ci` on the smallest stack: lock check, build (reused when current), kernels started from the tarball,
    image pushed, tarball published, summary written; the registry then holds both."""
    import json
    import urllib.request

    site = built_project / "sites/offline.toml"
    site.write_text(site.read_text().replace('url = "127.0.0.1:5000"', f'url = "{registry.host}"'))
    # The shared offline channel may have been rebuilt since the module's build: lock first,
    # as a developer would before committing, so the nightly's lock check passes.
    relock = doit(built_project, "lock", f"stack={SMALL}", "site=sites/offline.toml")
    assert relock.returncode == 0, relock.stderr[-3000:]
    before = {p.name for p in (built_project / "artifacts" / SMALL).iterdir() if p.is_dir()}
    result = doit(built_project, "ci", f"stack={SMALL}", "site=sites/offline.toml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert f".  ci:{SMALL}" in result.stdout and ".  ci:summary" in result.stdout

    artifacts = built_project / "artifacts"
    summary = json.loads((artifacts / "nightly.json").read_text())
    (report,) = summary["stacks"]
    manifest = json.loads((artifacts / SMALL / report["version"] / "manifest.json").read_text())
    assert report["stack_id"] == SMALL
    # Reused when the module's build is still current, else built anew by the nightly.
    assert report["built"] is (report["version"] not in before)
    assert report["tarball_sha256"] == manifest["tarball"]["sha256"]
    assert report["tarball_size"] == manifest["tarball"]["size"] and report["file_count"] == manifest["file_count"]
    assert report["smoke"] == [f"kernel {k}" for k in manifest["kernels"]] and len(report["smoke"]) == 3
    # The first nightly compares with the version built before it, if any (`swstack diff`'s logic).
    assert report["changes"]["previous"] == (max(before) if report["built"] else None)
    markdown = (artifacts / "nightly.md").read_text()
    reused = "" if report["built"] else " (reused)"
    assert markdown.startswith("| stack | version |") and f"| {SMALL} | {report['version']}{reused} |" in markdown

    # What the summary names is in the registry: the image by digest, the tarball as an OCI artifact.
    repository, digest = report["image"].split("@")
    name = repository.split("/", 1)[1]
    accept = "application/vnd.oci.image.manifest.v1+json"
    for path in (f"/v2/{name}/manifests/{digest}",
                 f"/v2/{SMALL}/manifests/{report['published'].rsplit('@', 1)[1]}",
                 f"/v2/{SMALL}/manifests/{report['version']}"):
        request = urllib.request.Request(registry.url + path, headers={"Accept": accept}, method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200, path

    # Attested as `doit push` and `doit publish` attest (release.py): each has its referrers index.
    from swstack.attest import referrers_tag

    index = "application/vnd.oci.image.index.v1+json"
    for repo, subject in ((name, digest), (SMALL, report["published"].rsplit("@", 1)[1])):
        path = f"/v2/{repo}/manifests/{referrers_tag(subject)}"
        request = urllib.request.Request(registry.url + path, headers={"Accept": index}, method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200, path


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.registry
def test_doit_c_ci_goes_on_past_a_failed_stack_and_the_summary_says_why(
    built_project: Path, registry: LocalRegistry
) -> None:
    """`doit -c ci` over two stacks, the first with no lockfile: its lock check fails, the other is still
    built (or reused), smoke-tested, pushed and published; the summary lists both outcomes, the failure
    with its one-line reason, and doit exits with the lock check's code."""
    import json

    from swstack.errors import StaleLockError

    site = built_project / "sites/offline.toml"
    site.write_text(site.read_text().replace('url = "127.0.0.1:5000"', f'url = "{registry.host}"'))
    relock = doit(built_project, "lock", f"stack={SMALL}", "site=sites/offline.toml")
    assert relock.returncode == 0, relock.stderr[-3000:]
    stacks = built_project / "stacks"
    unlocked = stacks / "alpha.toml"  # sorts before SMALL: its nightly fails first, and doit must go on
    unlocked.write_text((stacks / f"{SMALL}.toml").read_text().replace(SMALL, "alpha"))
    py3, away = stacks / "py3.toml", built_project / "py3.toml.away"
    py3.rename(away)  # `doit ci` runs every stack: py3's two variants would each build for minutes
    try:
        result = doit(built_project, "-c", "ci", "site=sites/offline.toml")
    finally:
        away.rename(py3)
        unlocked.unlink()

    assert result.returncode == StaleLockError.exit_code, result.stdout + result.stderr[-4000:]
    started = [line for line in result.stdout.splitlines() if line.startswith(".  ")]
    assert started == [".  ci:alpha", f".  ci:{SMALL}", ".  ci:summary"], result.stdout
    reason = f"{built_project / 'lockfiles/alpha/conda-lock.yml'} is stale: it does not exist."
    assert f"error: {reason}\n" in result.stderr and "Traceback" not in result.stderr, result.stderr[-4000:]

    artifacts = built_project / "artifacts"
    summary = json.loads((artifacts / "nightly.json").read_text())
    (report,) = summary["stacks"]
    assert report["stack_id"] == SMALL
    assert (artifacts / SMALL / report["version"] / report["tarball"]).is_file()
    assert summary["failed"] == [{"stack_id": "alpha", "error": reason}]
    markdown = (artifacts / "nightly.md").read_text()
    assert f"| {SMALL} | {report['version']}" in markdown and f"`alpha`: {reason}" in markdown, markdown
