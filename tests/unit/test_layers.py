"""The layer planner: bounded, complete, big stable packages first, fast movers apart, stable buckets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swstack.layers import (
    REST,
    TreeEntry,
    ancestors,
    bucket_of,
    empty_directories,
    layer_of,
    normalise_path,
    plan_layers,
)
from swstack.manifest import Manifest, PackageEntry


def _manifest(packages: list[PackageEntry]) -> Manifest:
    return Manifest(
        stack="py3",
        variant="stable",
        version="2026.11.21",
        platform="linux-64",
        prefix="/data0/sw/py3",
        lockfile_sha256="0" * 64,
        stackfile_sha256="1" * 64,
        tools={},
        packages=tuple(packages),
        file_count=0,
        total_size=0,
        git_commit="a" * 40,
        build_time="2026-11-21T00:00:00Z",
        source_date_epoch=0,
    )


def _env(
    sizes: dict[str, int], pip: tuple[str, ...] = ()
) -> tuple[Manifest, list[TreeEntry], dict[str, list[str]]]:
    packages, tree, files = [], [TreeEntry("lib", "dir"), TreeEntry("share/empty", "dir")], {}
    for name, size in sizes.items():
        manager = "pip" if name in pip else "conda"
        packages.append(PackageEntry(name, "1.0", "", "c", "0" * 64, size, manager))
        paths = [f"lib/{name}/a.so", f"lib/{name}/b.py", f"conda-meta/{name}-1.0-0.json"]
        tree += [
            TreeEntry(paths[0], "file", size),
            TreeEntry(paths[1], "file", 10),
            TreeEntry(paths[2], "file", 5),
        ]
        files[name] = paths
    tree += [TreeEntry("conda-meta/history", "file", 7), TreeEntry("bin/python", "symlink")]
    return _manifest(packages), tree, files


SIZES = {
    "python": 90_000,
    "numpy": 60_000,
    "openblas": 50_000,
    "jupyterlab": 40_000,
    **{f"small{i:02d}": 1000 + i for i in range(30)},
    "labclient": 500,
    "sitepaths": 400,
}


def test_every_path_in_exactly_one_layer_and_bounded() -> None:
    manifest, tree, files = _env(SIZES, pip=("labclient",))
    for max_layers in (2, 3, 5, 12, 40):
        layers = plan_layers(manifest, tree, files, max_layers, volatile=("sitepaths",))
        assert 2 <= len(layers) <= max_layers
        placed = [p for layer in layers for p in layer.paths]
        assert len(placed) == len(set(placed))
        expected = {e.path for e in tree if e.kind != "dir"} | {"share/empty"}
        assert set(placed) == expected
        assert layers[-1].name == REST


def test_big_stable_first_fast_movers_last_and_alone() -> None:
    manifest, tree, files = _env(SIZES, pip=("labclient",))
    layers = plan_layers(manifest, tree, files, 12, volatile=("sitepaths",))
    names = [layer.name for layer in layers]
    assert names[:4] == ["python", "numpy", "openblas", "jupyterlab"]
    assert names[-3:] == ["labclient", "sitepaths", REST]
    assert {layer.kind for layer in layers[-3:-1]} == {"volatile"}
    # The rest holds what no package owns, and only that.
    assert set(layers[-1].paths) == {"conda-meta/history", "bin/python", "share/empty"}


def test_a_version_bump_changes_only_its_own_layer() -> None:
    manifest, tree, files = _env(SIZES, pip=("labclient",))
    before = plan_layers(manifest, tree, files, 12)
    # small07 gets a new version of about the same size: only its bucket changes.
    grown = [replace(e, size=e.size + 3) if e.path == "lib/small07/a.so" else e for e in tree]
    after = plan_layers(manifest, grown, files, 12)
    assert [layer.paths for layer in before] == [layer.paths for layer in after]
    changed = [a.name for a, b in zip(before, after, strict=True) if a.size != b.size]
    assert len(changed) == 1 and "small07" in next(
        layer.packages for layer in after if layer.name == changed[0]
    )


def test_adding_a_small_package_keeps_other_buckets() -> None:
    manifest, tree, files = _env(SIZES)
    before = {layer.name: layer.paths for layer in plan_layers(manifest, tree, files, 12)}
    manifest2, tree2, files2 = _env({**SIZES, "newpkg": 1200})
    after = {layer.name: layer.paths for layer in plan_layers(manifest2, tree2, files2, 12)}
    differing = [name for name in before if before[name] != after.get(name)]
    # newpkg ranks among the own layers and pushes the smallest of them into a bucket: two layers.
    assert len(differing) <= 2


def test_two_layers_is_environment_plus_rest() -> None:
    manifest, tree, files = _env({"python": 10, "labclient": 5}, pip=("labclient",))
    layers = plan_layers(manifest, tree, files, 2)
    assert [layer.name for layer in layers] == ["environment", REST]


def test_shared_paths_go_to_one_owner_and_record_paths_resolve() -> None:
    manifest, tree, files = _env({"a": 10, "b": 10})
    files["b"].append("lib/a/a.so")  # b claims a's file too: first in name order keeps it
    layers = plan_layers(manifest, tree, files, 5)
    assert layer_of(layers)["lib/a/a.so"] == next(i for i, layer in enumerate(layers) if layer.name == "a")
    assert normalise_path("lib/python3.11/site-packages/../../../bin/x") == "bin/x"
    assert normalise_path("./a//b/") == "a/b"


def test_helpers() -> None:
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert ancestors("top") == []
    assert empty_directories([TreeEntry("a", "dir"), TreeEntry("a/b", "dir"), TreeEntry("a/c", "file")]) == [
        "a/b"
    ]
    assert all(bucket_of("numpy", 3) == bucket_of("numpy", 3) for _ in range(3))
    with pytest.raises(ValueError):
        plan_layers(_manifest([]), [], {}, 1)
