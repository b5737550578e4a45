"""Build and pack for real: a real kernel from the tarball at /data0/sw/py3 (private root) and
relocated elsewhere, byte-identical rebuilds, both sandbox backends, and the audit."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from swstack import paths, proc
from swstack.build import run_build
from swstack.errors import BuildError, SwstackError
from swstack.fsutil import sha256_file
from swstack.lock import lock
from swstack.manifest import IN_TREE_PATH, Manifest
from swstack.nightly import KERNEL_CHECK
from swstack.sandbox import Mount, NamespaceSandbox, open_sandbox, private_root_argv
from swstack.site import Site
from swstack.spec import load_stack

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[2]

# The interpreter's own extension modules too: each links a library bundled into the python package.
NUMPY_CELL = ("import sys, numpy, ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, uuid, curses, _curses_panel; "
              "print(sys.prefix, int(numpy.arange(5).sum()), numpy.__file__)")


def _untar(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    proc.run(["tar", "--zstd", "-xf", tarball, "-C", dest], what="tar -x")


def _tarball(artifact: Path) -> Path:
    manifest = Manifest.load(artifact / "manifest.json")
    assert manifest.tarball is not None
    return artifact / manifest.tarball.name


def _origin_record(tarball: Path, dist_info: str) -> dict[str, object]:
    """A pip package's ``direct_url.json`` in the tarball (``dist_info``: its directory's name)."""
    member = f"lib/python3.11/site-packages/{dist_info}/direct_url.json"
    out = proc.output(["tar", "--zstd", "-xOf", tarball, member], what="tar -xO")
    return json.loads(out)  # type: ignore[no-any-return]


def _run_kernel(sw_dir: Path, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Start the stack's kernel with jupyter_client inside a private root where ``sw_dir`` is
    mounted at the prefix's parent, and run numpy in it."""
    script = tmp_path / "kernel_check.py"
    script.write_text(KERNEL_CHECK)
    parent = str(Path(prefix).parent)
    # The check's script and home are in tmp_path, below the host's /tmp, which the private root hides.
    argv = private_root_argv([Mount(sw_dir, parent), Mount(tmp_path, str(tmp_path))])
    argv += [f"{prefix}/bin/python", str(script), "python3", NUMPY_CELL]
    out = proc.output(argv, extra_env={"HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
                      what="kernel check", timeout=300)
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def test_artifact_layout_and_manifest(py3_artifact: Path) -> None:
    manifest = Manifest.load(py3_artifact / "manifest.json")
    tarball = _tarball(py3_artifact)
    assert tarball.name == "py3-2026.11.21-linux-64.tar.zst"
    assert (py3_artifact / f"{tarball.name}.sha256").read_text().split() == [sha256_file(tarball), tarball.name]
    assert manifest.prefix == "/data0/sw/py3" and manifest.stack == "py3" and manifest.variant == "stable"
    names = {p.name: p for p in manifest.packages}
    assert {"python", "numpy", "ipykernel", "jupyterlab", "jupyterhub-singleuser", "labclient"} <= set(names)
    assert names["labclient"].manager == "pip" and len(names["numpy"].sha256) == 64
    assert manifest.kernels == ("python3",) and manifest.file_count > 10000
    assert manifest.lockfile_sha256 and manifest.stackfile_sha256 and manifest.tools["swstack"]
    assert manifest.platform == "linux-64"
    # Where packages come from, never where this machine got them: no mirror, cache or checkout path.
    assert {p.channel for p in manifest.packages if p.manager == "conda"} == {"https://conda.anaconda.org/conda-forge"}
    assert names["labclient"].channel == "https://pypi.org/simple/labclient/labclient-1.0.0-py3-none-any.whl"
    text = (py3_artifact / "manifest.json").read_text()
    for machine_path in ("file://", str(Path.home()), str(paths.cache_dir()), str(PROJECT), "/tmp/"):
        assert machine_path not in text
    # pip's record of the package's origin too: the locked URL, not the site's wheelhouse it came from.
    locked = names["labclient"]
    assert _origin_record(_tarball(py3_artifact), "labclient-1.0.0.dist-info") == {
        "url": locked.channel, "archive_info": {"hash": f"sha256={locked.sha256}", "hashes": {"sha256": locked.sha256}}
    }


def test_kernel_runs_from_the_tarball_at_the_production_prefix(py3_artifact: Path, tmp_path: Path) -> None:
    sw = tmp_path / "sw"
    _untar(_tarball(py3_artifact), sw / "py3")
    result = _run_kernel(sw, "/data0/sw/py3", tmp_path)
    prefix, total, numpy_file = result["out"].split()
    assert (prefix, total) == ("/data0/sw/py3", "10")
    assert numpy_file.startswith("/data0/sw/py3/lib/python3.11/site-packages/numpy/")
    # scripts run the stack's own python, whatever is first on PATH
    assert (sw / "py3/bin/jupyter").read_text().startswith("#!/data0/sw/py3/bin/python")
    assert not Path("/data0").exists()


def test_kernel_runs_relocated_after_conda_unpack(py3_artifact: Path, tmp_path: Path) -> None:
    # Relocated to /srv/k/py3 (no longer than /data0/sw/py3: binaries keep their padding).
    host = tmp_path / "k"
    _untar(_tarball(py3_artifact), host / "py3")
    inside = private_root_argv([Mount(host, "/srv/k")])
    proc.run(inside + ["/srv/k/py3/bin/python", "/srv/k/py3/bin/conda-unpack"], what="conda-unpack")
    result = _run_kernel(host, "/srv/k/py3", tmp_path)
    assert result["out"].split()[:2] == ["/srv/k/py3", "10"]
    assert proc.output(inside + ["/srv/k/py3/bin/sitepaths"]).splitlines()[0].endswith("/srv/k/py3")
    spec = json.loads((host / "py3/share/jupyter/kernels/python3/kernel.json").read_text())
    assert spec["argv"][0] == "/srv/k/py3/bin/swstack-launch"
    assert (host / "py3/bin/jupyter").read_text().startswith("#!/srv/k/py3/bin/python")


def test_same_lockfile_builds_byte_identical_tarballs(py3_artifact: Path, project_copy: Path,
                                                      artifacts_site: Site, tmp_path: Path) -> None:
    again = replace(artifacts_site, artifacts=tmp_path / "again")
    stack = load_stack(project_copy / "stacks/py3.toml")
    second = run_build(stack, again, project_copy, version="2026.11.21", sandbox=NamespaceSandbox())
    assert sha256_file(_tarball(second.artifact_dir)) == sha256_file(_tarball(py3_artifact))


@pytest.mark.docker
def test_docker_backend_builds_the_same_tree(py3_artifact: Path, project_copy: Path, artifacts_site: Site,
                                             tmp_path: Path) -> None:
    site = replace(artifacts_site, artifacts=tmp_path / "docker", sandbox="docker")
    stack = load_stack(project_copy / "stacks/py3.toml")
    result = run_build(stack, site, project_copy, version="2026.11.21", sandbox=open_sandbox("docker"))
    # The same lockfile in another sandbox: the same tree, member for member, not only the same
    # package list. The in-tree manifest differs in the Python that ran pack (its tools) alone.
    theirs, ours = _members(_tarball(result.artifact_dir)), _members(_tarball(py3_artifact))
    assert sorted(theirs) == sorted(ours)
    assert [n for n in ours if theirs[n] != ours[n] and n != IN_TREE_PATH] == []
    a, b = (json.loads(str(members[IN_TREE_PATH][-1])) for members in (theirs, ours))
    assert {**a, "tools": {**a["tools"], "python": ""}} == {**b, "tools": {**b["tools"], "python": ""}}
    assert not Path("/data0").exists()


def _members(tarball: Path) -> dict[str, tuple[object, ...]]:
    """name -> (type, mode, mtime, uid, gid, size, link, sha256 of the content or, for the
    in-tree manifest, the content itself)."""
    import tarfile

    import zstandard

    out: dict[str, tuple[object, ...]] = {}
    with (
        tarball.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        for m in tar:
            data = tar.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            body: object = data.decode() if m.name == IN_TREE_PATH else hashlib.sha256(data).hexdigest()
            out[m.name] = (m.type, m.mode, m.mtime, m.uid, m.gid, m.size, m.linkname, body)
    return out


def _small_project(tmp_path: Path, kernel_json: str | None) -> Path:
    project = tmp_path / "proj"
    (project / "stacks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    text = textwrap.dedent("""
        name = "tools"
        channels = ["conda-forge"]
        prefix = "/data0/sw/tools"
        kernel_spec_dirs = ["../kernel-specs"]
        [dependencies]
        sitepaths = "*"
    """)
    (project / "stacks/tools.toml").write_text(text)
    specs = project / "kernel-specs" / "planted"
    specs.mkdir(parents=True)
    if kernel_json is not None:
        (specs / "kernel.json").write_text(kernel_json)
    return project


def test_audit_fails_the_build_naming_the_file(offline_site: Site, tmp_path: Path) -> None:
    home = Path.home()
    planted = json.dumps({"argv": [f"{home}/envs/old/bin/python", "-f", "{connection_file}"],
                          "display_name": "planted", "language": "python"})
    project = _small_project(tmp_path, planted)
    site = replace(offline_site, artifacts=tmp_path / "artifacts")
    stack = load_stack(project / "stacks/tools.toml")
    lock(stack, site, project)
    with pytest.raises(BuildError) as info:
        run_build(stack, site, project, version="1", sandbox=NamespaceSandbox())
    message = str(info.value)
    assert "share/jupyter/kernels/planted/kernel.json" in message and f"{home}/" in message
    assert not (tmp_path / "artifacts" / "tools" / "1" / "manifest.json").exists()


def test_small_stack_without_python_builds_and_relocates(offline_site: Site, tmp_path: Path) -> None:
    project = _small_project(tmp_path, None)
    shutil.rmtree(project / "kernel-specs" / "planted")
    site = replace(offline_site, artifacts=tmp_path / "artifacts")
    stack = load_stack(project / "stacks/tools.toml")
    lock(stack, site, project)
    result = run_build(stack, site, project, version="1", sandbox=NamespaceSandbox())
    host = tmp_path / "sw"
    _untar(_tarball(result.artifact_dir), host / "tools")
    out = proc.output(private_root_argv([Mount(host, "/data0/sw")]) + ["/data0/sw/tools/bin/sitepaths"])
    assert "/data0/sw/tools" in out.splitlines()[0]


def test_dev_variant_installs_the_client_from_git(project_copy: Path, artifacts_site: Site, tmp_path: Path) -> None:
    stack = load_stack(project_copy / "stacks/py3.toml", "dev")
    result = run_build(stack, artifacts_site, project_copy, version="dev1", sandbox=NamespaceSandbox())
    assert result.artifact_dir == artifacts_site.artifacts / "py3-dev" / "dev1"
    client = next(p for p in Manifest.load(result.artifact_dir / "manifest.json").packages if p.name == "labclient")
    assert client.version == "1.1.0.dev0" and client.manager == "pip"
    # The real repository, not the site's git mirror it was cloned from.
    assert client.channel.startswith("git+https://git.example.org/datalab/labclient.git@")
    assert len(client.channel.rsplit("@", 1)[1]) == 40
    # pip's record: the repository and commit, not the wheel built from the mirror in a temporary directory.
    repository, commit = client.channel.removeprefix("git+").rsplit("@", 1)
    assert _origin_record(_tarball(result.artifact_dir), "labclient-1.1.0.dev0.dist-info") == {
        "url": repository, "vcs_info": {"commit_id": commit, "vcs": "git"}
    }
    sw = tmp_path / "sw"
    _untar(_tarball(result.artifact_dir), sw / "py3")
    out = proc.output(private_root_argv([Mount(sw, "/data0/sw")]) + ["/data0/sw/py3/bin/labclient", "--version"])
    assert "1.1.0.dev0" in out


def _wheel(directory: Path, name: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel written by hand (zip + dist-info with a hashed RECORD)."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-1.0.dist-info"
    content = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
               f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for rel, text in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(text.encode())}")
    content[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    path = directory / f"{name}-1.0-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in content.items():
            zf.writestr(rel, text)
    return path


def test_a_package_that_does_not_byte_compile_fails_the_build_naming_the_file(offline_site: Site,
                                                                              tmp_path: Path) -> None:
    from swstack.offline_channel.labclient import write_simple_index

    wheelhouse = tmp_path / "wheels"
    wheel = _wheel(wheelhouse, "brokenpkg", {"brokenpkg/__init__.py": "VERSION = 1\n",
                                             "brokenpkg/oops.py": "def f(:\n    pass\n"})
    write_simple_index(wheelhouse, [wheel])
    project = tmp_path / "proj"
    (project / "stacks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "stacks/broken.toml").write_text(textwrap.dedent("""
        name = "broken"
        channels = ["conda-forge"]
        prefix = "/data0/sw/broken"
        [dependencies]
        python = "3.11.*"
        [pip.dependencies]
        brokenpkg = "*"
    """))
    site = replace(offline_site, artifacts=tmp_path / "artifacts", pip_wheelhouse=wheelhouse)
    stack = load_stack(project / "stacks/broken.toml")
    lock(stack, site, project)
    with pytest.raises(SwstackError) as info:
        run_build(stack, site, project, version="1", sandbox=NamespaceSandbox())
    message = str(info.value)
    assert "/data0/sw/broken/lib/python3.11/site-packages/brokenpkg/oops.py:1: SyntaxError" in message
    assert "failed for 1 file(s)" in message
    assert not (tmp_path / "artifacts" / "broken" / "1" / "manifest.json").exists()


def test_a_build_stopped_while_attesting_leaves_no_artifact_and_the_next_one_builds(
    offline_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after packing, while the SBOM is made: the version directory holds a tarball and a
    manifest.json listing no SBOM or provenance, which `doit image` / `publish version=` would take
    for an artifact. It goes, as when packing is stopped; the same command then builds it."""
    from swstack import attest

    project = _small_project(tmp_path, None)
    shutil.rmtree(project / "kernel-specs" / "planted")
    site = replace(offline_site, artifacts=tmp_path / "artifacts")
    stack = load_stack(project / "stacks/tools.toml")
    lock(stack, site, project)

    def interrupted(tarball: Path) -> dict[tuple[str, str], str]:
        raise KeyboardInterrupt  # the fault: Ctrl-C while the SBOM reads the tarball

    with monkeypatch.context() as patched:
        patched.setattr(attest, "read_licences", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_build(stack, site, project, version="1", sandbox=NamespaceSandbox())
    assert not (site.artifacts / "tools" / "1").exists()
    result = run_build(stack, site, project, version="1", sandbox=NamespaceSandbox())
    assert [a.name for a in result.manifest.attestations] == ["sbom.cdx.json", "provenance.intoto.json"]
