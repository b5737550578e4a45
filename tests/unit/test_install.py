"""install.py against real trees: the byte-compile step (the real compileall) and the pip packages' origin records."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swstack.errors import BuildError
from swstack.install import CondaItem, InstallPlan, _fetch, compile_bytecode, compile_failure


def _tree(tmp_path: Path, files: dict[str, str]) -> InstallPlan:
    prefix = tmp_path / "sw" / "demo"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    for rel, text in files.items():
        path = prefix / "lib" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return InstallPlan(prefix=str(prefix), platform="linux-64", conda=[], pip=[], kernels=[], kernel_spec_dirs=[],
                       owner=None, package_cache=str(tmp_path / "pkgs"), extensions=[])


def test_a_tree_that_compiles_gets_hash_based_pycs(tmp_path: Path) -> None:
    plan = _tree(tmp_path, {"site-packages/good/__init__.py": "x = 1\n"})
    compile_bytecode(plan)
    (pyc,) = (Path(plan.prefix) / "lib/site-packages/good/__pycache__").glob("__init__.*.pyc")
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01  # hash-based, unchecked


def test_a_file_that_does_not_compile_fails_naming_it_and_its_line(tmp_path: Path) -> None:
    plan = _tree(tmp_path, {
        "site-packages/good/__init__.py": "x = 1\n",
        "site-packages/broken/__init__.py": "import os\n\ndef f(:\n    pass\n",
        "site-packages/broken/tabs.py": "if True:\n\tx = 1\n        y = 2\n",
    })
    with pytest.raises(BuildError) as info:
        compile_bytecode(plan)
    message = str(info.value)
    assert "failed for 2 file(s)" in message
    assert f"{plan.prefix}/lib/site-packages/broken/__init__.py:3: SyntaxError: invalid syntax" in message
    assert f"{plan.prefix}/lib/site-packages/broken/tabs.py:3: " in message and "Error" in message
    assert "\n" not in message  # one line


def test_compile_failure_without_compileall_blocks_says_what_it_printed() -> None:
    message = compile_failure("Traceback ...\nMemoryError\n", "/data0/sw/x/lib", 1)
    assert message == "byte-compiling /data0/sw/x/lib failed (exit 1): MemoryError"


def _dist_info(prefix: Path, name: str, version: str, origin: str) -> Path:
    """A dist-info as pip leaves it after installing from a URL: METADATA, RECORD and direct_url.json."""
    dist_info = prefix / "lib/python3.11/site-packages" / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "direct_url.json").write_text(origin)
    rows = [f"{name}/__init__.py,sha256=abc,10", f"{dist_info.name}/direct_url.json,sha256=old,{len(origin)}",
            f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(rows) + "\n")
    return dist_info


def test_pip_records_name_the_locked_origin_not_the_machines_files(tmp_path: Path) -> None:
    import base64
    import hashlib
    import json

    from swstack.install import PipItem, record_origin

    prefix = tmp_path / "prefix"
    sha = "65" * 32
    mirror = _dist_info(prefix, "Lab-Client", "1.0.0", '{"url": "file:///root/.cache/mirror/lab.whl"}')
    git = _dist_info(prefix, "gitdep", "2.0.dev0", '{"url": "file:///tmp/tmpab12cd/gitdep-2.0.dev0.whl"}')
    index = _dist_info(prefix, "plain", "3.0", "untouched")
    items = [
        PipItem("lab-client", "https://pypi.org/simple/lab-client/lab_client-1.0.0-py3-none-any.whl", sha,
                fetch="file:///root/.cache/mirror/lab.whl"),
        PipItem("gitdep", "git+https://git.example.org/g/gitdep.git@" + "1c" * 20, None,
                fetch="git+file:///root/.cache/git/gitdep.git@" + "1c" * 20),
        PipItem("plain", "plain==3.0", sha, version="3.0", index="https://pypi.org/simple"),
    ]
    for item in items:
        record_origin(prefix, item)
    assert json.loads((mirror / "direct_url.json").read_text()) == {
        "url": "https://pypi.org/simple/lab-client/lab_client-1.0.0-py3-none-any.whl",
        "archive_info": {"hash": f"sha256={sha}", "hashes": {"sha256": sha}},
    }
    assert json.loads((git / "direct_url.json").read_text()) == {
        "url": "https://git.example.org/g/gitdep.git", "vcs_info": {"commit_id": "1c" * 20, "vcs": "git"}
    }
    assert (index / "direct_url.json").read_text() == "untouched"  # installed by name: pip's own record
    for dist_info in (mirror, git):
        data = (dist_info / "direct_url.json").read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows = (dist_info / "RECORD").read_text().splitlines()
        assert rows[1] == f"{dist_info.name}/direct_url.json,sha256={digest},{len(data)}"  # in its place
        assert len(rows) == 3 and b"file://" not in data


def test_a_pip_package_without_its_dist_info_is_named(tmp_path: Path) -> None:
    from swstack.install import PipItem, record_origin

    (tmp_path / "lib/python3.11/site-packages").mkdir(parents=True)
    item = PipItem("ghost", "https://example.org/ghost-1.whl", "0" * 64, fetch="file:///m/ghost-1.whl")
    with pytest.raises(BuildError, match="pip reported ghost installed, but no ghost"):
        record_origin(tmp_path, item)


def test_a_kernel_a_package_ships_starts_this_trees_python(tmp_path: Path) -> None:
    """ipykernel's python3 spec says `python`: the first on the user's PATH, maybe another stack's."""
    import json

    from swstack.install import LAUNCHER, KernelItem, install_kernels

    plan = _tree(tmp_path, {})
    kernels = Path(plan.prefix) / "share/jupyter/kernels"
    shipped = {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "Python 3 (ipykernel)", "language": "python"}
    (kernels / "python3").mkdir(parents=True)
    (kernels / "python3" / "kernel.json").write_text(json.dumps(shipped))
    (kernels / "other").mkdir()
    (kernels / "other" / "kernel.json").write_text('{"argv": ["/usr/bin/R", "-f", "{connection_file}"]}')
    own = KernelItem("antares", "ANTARES", "python", ["{prefix}/bin/python", "-m", "ipykernel_launcher", "-f",
                                                      "{connection_file}"], {}, "signal")
    plan = replace(plan, kernels=[own])
    assert install_kernels(plan) == ["antares", "other", "python3"]  # what the tree serves, all of it
    spec = json.loads((kernels / "python3" / "kernel.json").read_text())
    assert spec["argv"] == [f"{plan.prefix}/{LAUNCHER}", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["display_name"] == "Python 3 (ipykernel)"
    assert json.loads((kernels / "other" / "kernel.json").read_text())["argv"][0] == "/usr/bin/R"  # not a python


def test_a_hand_kept_kernel_spec_naming_the_trees_python_starts_through_the_launcher(tmp_path: Path) -> None:
    """kernel_spec_dirs' specs (the seed's antares-legacy) name ``<prefix>/bin/python``, the live link: a
    kernel started so imports the next version's files after a host switches."""
    import json

    from swstack.install import LAUNCHER, install_kernels

    plan = _tree(tmp_path, {})
    specs = tmp_path / "specs"
    argv = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kept = {"legacy": [f"{plan.prefix}/bin/python", *argv], "bare": ["python3", *argv], "r": ["/usr/bin/R", *argv]}
    for name, first in kept.items():
        (specs / name).mkdir(parents=True)
        (specs / name / "kernel.json").write_text(json.dumps({"argv": first, "display_name": name, "x": 1}))
    plan = replace(plan, kernel_spec_dirs=[str(specs)])
    assert install_kernels(plan) == ["bare", "legacy", "r"]
    kernels = Path(plan.prefix) / "share/jupyter/kernels"
    specs_now = {name: json.loads((kernels / name / "kernel.json").read_text()) for name in kept}
    assert specs_now["legacy"] == {"argv": [f"{plan.prefix}/{LAUNCHER}", *argv], "display_name": "legacy", "x": 1}
    assert specs_now["bare"]["argv"] == [f"{plan.prefix}/{LAUNCHER}", *argv]
    assert specs_now["r"]["argv"] == kept["r"]


def test_a_kernel_name_from_two_places_fails_the_build(tmp_path: Path) -> None:
    from swstack.install import KernelItem, install_kernels

    plan = _tree(tmp_path, {})
    specs = tmp_path / "specs"
    (specs / "antares").mkdir(parents=True)
    (specs / "antares" / "kernel.json").write_text('{"argv": ["x"]}')
    own = KernelItem("antares", "ANTARES", "python", ["{prefix}/bin/python", "-f", "{connection_file}"], {}, "signal")
    plan = replace(plan, kernels=[own], kernel_spec_dirs=[str(specs)])
    with pytest.raises(BuildError, match=r"kernel 'antares' comes from \[\[kernels\]\] and from .*specs/antares"):
        install_kernels(plan)


def test_a_kernel_whose_program_the_tree_lacks_fails_the_build(tmp_path: Path) -> None:
    """`language = "R"` with argv {prefix}/bin/R and no R package: found at the build, not when a user opens it."""
    from swstack.install import KernelItem, install_kernels

    plan = _tree(tmp_path, {})
    ir = KernelItem("ir", "R", "R", ["{prefix}/bin/R", "--slave", "-e", "IRkernel::main()", "--args",
                                     "{connection_file}"], {}, "signal")
    with pytest.raises(BuildError) as caught:
        install_kernels(replace(plan, kernels=[ir]))
    assert str(caught.value) == (
        f"kernel 'ir': its argv starts {plan.prefix}/bin/R, which the installed tree does not have (or may not "
        f"run); add the package that provides it to the stack's dependencies, or fix the kernel's argv in [[kernels]]"
    )
    r = Path(plan.prefix) / "bin" / "R"
    r.parent.mkdir(parents=True, exist_ok=True)
    r.write_text("#!/bin/sh\n")
    r.chmod(0o755)
    assert "ir" in install_kernels(replace(plan, kernels=[ir]))


@pytest.mark.parametrize("where", ["logo", "kernel.json", "dir"])
def test_a_symlink_in_a_kernel_spec_dir_fails_the_build(tmp_path: Path, where: str) -> None:
    """A kernel spec directory comes from the stack's repository: a symlink there (to the site's signing
    key, say) must not put a file of the building machine into the tree, which is packed and published."""
    from swstack.install import install_kernels

    plan = _tree(tmp_path, {})
    secret = tmp_path / "cosign.key"
    secret.write_text("PRIVATE KEY")
    specs = tmp_path / "specs"
    real = tmp_path / "elsewhere" / "evil" if where == "dir" else specs / "evil"
    real.mkdir(parents=True)
    if where == "kernel.json":
        (real / "kernel.json").symlink_to(secret)
    else:
        (real / "kernel.json").write_text('{"argv": ["x"], "display_name": "evil"}')
        (real / "logo-64x64.png").symlink_to(secret)
    if where == "dir":
        specs.mkdir()
        (specs / "evil").symlink_to(real)
    with pytest.raises(BuildError, match=r"kernel_spec_dirs: .*evil.* is a symlink"):
        install_kernels(replace(plan, kernel_spec_dirs=[str(specs)]))
    assert not (Path(plan.prefix) / "share/jupyter/kernels/evil").exists()


def _package(tmp_path: Path, data: bytes) -> CondaItem:
    source = tmp_path / "channel" / "linux-64" / "demo-1.0-0.conda"
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    url = "https://conda.anaconda.org/conda-forge/linux-64/demo-1.0-0.conda"
    return CondaItem("demo", url, hashlib.sha256(data).hexdigest(), "", fetch=source.as_uri())


def test_a_fetch_leaves_another_builds_partial_download_alone(tmp_path: Path) -> None:
    item = _package(tmp_path, b"the package")
    cache = tmp_path / "pkgs"
    other = cache / item.sha256[:16] / "demo-1.0-0.conda.partial"  # the fixed name every build used
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another build, half-way")
    assert _fetch(item, cache).read_bytes() == b"the package"
    assert other.read_bytes() == b"another build, half-way"


def test_a_refused_fetch_leaves_nothing_in_the_package_cache(tmp_path: Path) -> None:
    item = replace(_package(tmp_path, b"the package"), sha256="0" * 64)
    cache = tmp_path / "pkgs"
    with pytest.raises(BuildError, match="has sha256 .* the lockfile says 0000"):
        _fetch(item, cache)
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []


def test_a_kept_kernel_spec_whose_program_the_tree_lacks_fails_the_build(tmp_path: Path) -> None:
    """A kernel_spec_dirs spec naming ``<prefix>/bin/R`` with no R package would only fail when a user
    opens it: found at the build, as for a [[kernels]] entry, naming the spec file."""
    import json

    from swstack.install import install_kernels

    plan = _tree(tmp_path, {})
    specs = tmp_path / "specs"
    (specs / "ir").mkdir(parents=True)
    spec = {"argv": [f"{plan.prefix}/bin/R", "--slave", "-f", "{connection_file}"], "display_name": "R"}
    (specs / "ir" / "kernel.json").write_text(json.dumps(spec))
    plan = replace(plan, kernel_spec_dirs=[str(specs)])
    with pytest.raises(BuildError) as caught:
        install_kernels(plan)
    assert str(caught.value) == (
        f"kernel 'ir' ({specs / 'ir' / 'kernel.json'}): its argv starts {plan.prefix}/bin/R, which the installed "
        "tree does not have (or may not run); add the package that provides it to the stack's dependencies, or "
        "fix the argv in that kernel.json"
    )
    r = Path(plan.prefix) / "bin" / "R"
    r.write_text("#!/bin/sh\n")
    r.chmod(0o755)
    assert install_kernels(plan) == ["ir"]
