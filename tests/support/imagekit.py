"""What the image tests share: a pack-like environment artifact, a base in a registry, a site.

Input: a directory, a registry, the engine. Output: an artifact directory whose tarball
holds conda packages (``conda-meta/*.json`` with their ``files``), a pip package (a
``*.dist-info/RECORD``), unowned files and the in-tree manifest, as ``pack`` lays them
out; the debootstrapped Debian base pushed to the registry as the offline site mirrors
``debian:bookworm-slim``; the offline site pointed at that registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.artifacts import write_artifact
from tests.support.registry import LocalRegistry

from swstack.baseimage import ensure_base, load_base_spec
from swstack.engine import DockerEngine, Engine
from swstack.manifest import IN_TREE_PATH, Manifest, PackageEntry
from swstack.site import Site, load_site
from swstack.spec import Stack, load_stack

PROJECT = Path(__file__).resolve().parents[2]
PLATFORM = "linux-64"
EPOCH = 1_700_000_000
SITE_PACKAGES = "lib/python3.11/site-packages"
BASE_REPOSITORY = "swstack/debian:bookworm"

# name -> (version, {path: size}); sizes chosen so the planner has big and small packages.
# The image's command (stacks/base.toml's [image] command), which the image build looks for in
# the tree: every environment an image is built from has it, as the real stacks do.
SINGLEUSER: dict[str, tuple[str, dict[str, int]]] = {
    "jupyterhub-singleuser": ("5.2.1", {"bin/jupyterhub-singleuser": 400}),
}
DEFAULT_CONDA: dict[str, tuple[str, dict[str, int]]] = {
    "python": ("3.11.9", {"bin/python3.11": 3_000_000, "lib/libpython3.11.so": 2_500_000}),
    "numpy": (
        "1.26.4",
        {f"{SITE_PACKAGES}/numpy/core.so": 2_000_000, f"{SITE_PACKAGES}/numpy/__init__.py": 900},
    ),
    "libopenblas": ("0.3.27", {"lib/libopenblas.so.0": 1_800_000}),
    "jupyterlab": ("4.2.0", {f"{SITE_PACKAGES}/jupyterlab/static/app.js": 1_200_000}),
    "ipykernel": ("6.29.0", {f"{SITE_PACKAGES}/ipykernel/kernelapp.py": 30_000}),
    **SINGLEUSER,
    **{
        f"small{i:02d}": (
            "1.0",
            {f"lib/small{i:02d}/data.bin": 20_000 + 1000 * i, f"lib/small{i:02d}/README": 100},
        )
        for i in range(16)
    },
    "sitepaths": ("0.1.0", {"bin/sitepaths": 40_000}),
}
DEFAULT_PIP: dict[str, tuple[str, dict[str, int]]] = {
    "labclient": ("1.0.0", {"labclient/__init__.py": 6_000, "labclient/api.py": 25_000}),
}


def _content(path: str, version: str, size: int) -> bytes:
    """Incompressible, deterministic bytes: a version change changes them all."""
    return random.Random(f"{path}@{version}").randbytes(size)


def make_env_artifact(
    root: Path,
    version: str = "2026.11.21",
    *,
    stack: str = "py3",
    conda: dict[str, tuple[str, dict[str, int]]] | None = None,
    pip: dict[str, tuple[str, dict[str, int]]] | None = None,
    scale: int = 1,
) -> Path:
    """``root/<stack>/<version>/`` with a pack-like tarball, ``.sha256`` and ``manifest.json``.

    ``scale`` multiplies every file size (the benchmark's bigger environment).
    """
    conda = DEFAULT_CONDA if conda is None else conda
    pip = DEFAULT_PIP if pip is None else pip
    prefix = f"/data0/sw/{stack}"
    files: dict[str, tuple[bytes, int]] = {}  # path -> (content, mode)
    packages: list[PackageEntry] = []
    for name, (pkg_version, contents) in sorted(conda.items()):
        for path, size in contents.items():
            mode = 0o755 if path.startswith("bin/") else 0o644
            files[path] = (_content(path, pkg_version, size * scale), mode)
        record = {"name": name, "version": pkg_version, "build": "h0_0", "files": sorted(contents)}
        files[f"conda-meta/{name}-{pkg_version}-h0_0.json"] = (json.dumps(record, indent=1).encode(), 0o644)
        packages.append(
            PackageEntry(name, pkg_version, "h0_0", "local", "0" * 64, sum(contents.values()), "conda")
        )
    for name, (pkg_version, contents) in sorted(pip.items()):
        dist_info = f"{SITE_PACKAGES}/{name}-{pkg_version}.dist-info"
        record_lines = []
        for path, size in contents.items():
            data = _content(path, pkg_version, size * scale)
            files[f"{SITE_PACKAGES}/{path}"] = (data, 0o644)
            record_lines.append(f"{path},sha256={hashlib.sha256(data).hexdigest()},{len(data)}")
        files[f"{dist_info}/METADATA"] = (f"Name: {name}\nVersion: {pkg_version}\n".encode(), 0o644)
        files[f"{dist_info}/INSTALLER"] = (b"pip\n", 0o644)
        record_lines += [f"{name}-{pkg_version}.dist-info/{n}" for n in ("METADATA", "INSTALLER", "RECORD")]
        files[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode(), 0o644
        packages.append(PackageEntry(name, pkg_version, "", "pypi", "0" * 64, 0, "pip"))
    # Not owned by any package: made by the build (kernel spec, history).
    kernel = {
        "argv": [f"{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (py3)",
        "language": "python",
    }
    files["share/jupyter/kernels/python3/kernel.json"] = (json.dumps(kernel, indent=1).encode(), 0o644)
    files["conda-meta/history"] = (f"==> {version} <==\n".encode(), 0o644)
    manifest = Manifest(
        stack=stack,
        variant="stable",
        version=version,
        platform=PLATFORM,
        prefix=prefix,
        lockfile_sha256=hashlib.sha256(version.encode()).hexdigest(),
        stackfile_sha256="1" * 64,
        tools={"swstack": "0.1.0"},
        packages=tuple(packages),
        file_count=0,
        total_size=0,
        git_commit="a" * 40,
        build_time=f"{version[:4]}-{version[5:7]}-{version[8:10]}T00:00:00Z",
        source_date_epoch=EPOCH,
        kernels=("python3",),
    )
    files[IN_TREE_PATH] = (manifest.without_tarball().to_json().encode(), 0o644)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(_with_dirs(files) | set(files)):
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = EPOCH, "", ""
            if name in files:
                data, info.mode = files[name]
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        link = tarfile.TarInfo("bin/python")
        link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "python3.11", 0o777, EPOCH
        tar.addfile(link)
    total = replace(manifest, file_count=len(files) + 1, total_size=sum(len(d) for d, _ in files.values()))
    return write_artifact(root, total, raw.getvalue())


def _with_dirs(files: dict[str, tuple[bytes, int]]) -> set[str]:
    dirs: set[str] = set()
    for path in files:
        parent = os.path.dirname(path)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return dirs


def push_base(engine: Engine, registry_host: str) -> str:
    """Push the debootstrapped base to ``registry_host`` where the offline site mirrors the stack's base."""
    local = ensure_base(engine, load_base_spec())
    target = f"{registry_host}/{BASE_REPOSITORY}"
    engine.tag_image(local, target)
    engine.push_image(target)
    return target


def offline_site(registry_host: str) -> Site:
    """The offline site, with its registry (and so its image mirror) at ``registry_host``."""
    return replace(load_site(PROJECT / "sites" / "offline.toml", PROJECT), registry=registry_host)


def py3_stack() -> Stack:
    return load_stack(PROJECT / "stacks" / "py3.toml")


@pytest.fixture(scope="session")
def image_site(registry: LocalRegistry) -> Site:
    """The offline site on the test registry, with the base image already pushed there."""
    push_base(DockerEngine(), registry.host)
    return offline_site(registry.host)


def tree_listing_argv(prefix: str) -> list[str]:
    """A shell command listing a tree as ``kind path sha256-or-target`` lines, sorted."""
    script = (
        f"cd {prefix} && find . -type f -exec sha256sum {{}} + "
        "| sed 's/^\\([0-9a-f]*\\)  \\(.*\\)/f \\2 \\1/'; "
        "find . -type l -printf 'l %p %l\\n'; find . -mindepth 1 -type d -printf 'd %p -\\n'"
    )
    return ["/bin/sh", "-c", script]


def tarball_listing(tarball: Path) -> list[str]:
    """The same listing, from the artifact tarball."""
    from swstack.image import open_tarball
    from swstack.layers import normalise_path

    lines = []
    with open_tarball(tarball) as tar:
        for member in tar:
            rel = normalise_path(member.name)
            if not rel:
                continue
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                lines.append(f"f ./{rel} {hashlib.sha256(handle.read()).hexdigest()}")
            elif member.issym():
                lines.append(f"l ./{rel} {member.linkname}")
            elif member.isdir():
                lines.append(f"d ./{rel} -")
    return sorted(lines)


def relabelled_artifact(artifact_dir: Path, root: Path, version: str, build_time: str) -> Path:
    """A copy of an artifact under another version and build time, its tarball hard-linked.

    The image built from it has the original's layers (the same tree) and its own config
    (labels, ``SWSTACK_VERSION``) and tags: a second image version for the price of a config.
    """
    manifest = Manifest.load(artifact_dir / "manifest.json")
    out = root / manifest.stack / version
    out.mkdir(parents=True)
    for path in artifact_dir.iterdir():
        if path.is_file() and path.name != "manifest.json":
            try:
                os.link(path, out / path.name)
            except OSError:  # another filesystem
                (out / path.name).write_bytes(path.read_bytes())
    (out / "manifest.json").write_text(replace(manifest, version=version, build_time=build_time).to_json())
    return out
