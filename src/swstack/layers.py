"""Split an environment into image layers: the pure planner behind ``image``.

Input: the artifact ``Manifest`` (packages, sizes, managers), the tree of the tarball
(every member, relative to the prefix) and each package's file list (conda's
``conda-meta/*.json`` ``files``, pip's ``RECORD``). Output: a bounded tuple of ``Layer``
(which tree paths go in which layer), in the order they are stacked.

The model is Nix's layered images: rank, give the top of the ranking a layer each, and
let one last layer take whatever is left. Here the ranking is size, since the big
packages (python, numpy, openblas, jupyterlab...) are also the ones that rarely change,
and the layers that follow keep the fast movers apart:

1. the largest conda packages, one layer each;
2. the smaller conda packages, spread over a few buckets by a hash of the package
   *name*, so a version bump moves no package to another bucket (only its own
   bucket changes);
3. the fast-moving packages (pip packages, the site's own), one layer each or
   name-hashed buckets when there are more than their share of layers;
4. the rest: files no package owns (the in-tree manifest, conda's history, kernel specs,
   files made at install time) and empty directories.

A change of one fast-moving package therefore changes one small layer and the rest layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .manifest import Manifest, PackageEntry

EntryKind = Literal["file", "dir", "symlink"]
LayerKind = Literal["stable", "volatile", "rest"]

REST = "rest"


@dataclass(frozen=True)
class TreeEntry:
    """One member of the artifact tarball."""

    path: str  # relative to the prefix, no leading "./"
    kind: EntryKind
    size: int = 0


@dataclass(frozen=True)
class Layer:
    """One planned layer: a name for messages, the packages in it and its tree paths."""

    name: str
    kind: LayerKind
    packages: tuple[str, ...]
    paths: tuple[str, ...]  # sorted; files, symlinks and (rest only) empty directories
    size: int  # bytes of regular files

    def describe(self) -> str:
        what = ", ".join(self.packages[:4]) + (" ..." if len(self.packages) > 4 else "")
        return f"{self.name} ({len(self.paths)} paths{': ' + what if what and what != self.name else ''})"


@dataclass(frozen=True)
class _Group:
    name: str
    kind: LayerKind
    packages: tuple[PackageEntry, ...]


def plan_layers(
    manifest: Manifest,
    tree: Sequence[TreeEntry],
    files: Mapping[str, Sequence[str]],
    max_layers: int,
    *,
    volatile: Collection[str] = (),
) -> tuple[Layer, ...]:
    """The layers of the environment, at most ``max_layers`` (at least 2), every tree path in one.

    ``files`` maps package names to the paths they own; a path claimed by two packages
    goes to the first in name order, paths of no package and empty directories to the
    rest layer. ``volatile`` names the fast-moving packages besides pip's.
    """
    if max_layers < 2:
        raise ValueError(f"max_layers must be at least 2, got {max_layers}")
    owners = assign_owners(tree, files)
    sizes = {e.path: e.size for e in tree}
    owned_size: dict[str, int] = {}
    for path, owner in owners.items():
        owned_size[owner] = owned_size.get(owner, 0) + sizes.get(path, 0)
    packages = [p for p in sorted(manifest.packages, key=lambda p: p.name) if p.name in owned_size]
    fast = set(volatile) | {p.name for p in manifest.packages if p.manager == "pip"}
    stable = [p for p in packages if p.name not in fast]
    moving = [p for p in packages if p.name in fast]
    groups = group_packages(stable, moving, owned_size, max_layers)
    return _materialise(groups, tree, owners)


def assign_owners(tree: Sequence[TreeEntry], files: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Tree path (not directories) -> the package that owns it."""
    present = {e.path for e in tree if e.kind != "dir"}
    owners: dict[str, str] = {}
    for name in sorted(files):
        for path in files[name]:
            path = normalise_path(path)
            if path in present and path not in owners:
                owners[path] = name
    return owners


def group_packages(
    stable: Sequence[PackageEntry],
    moving: Sequence[PackageEntry],
    owned_size: Mapping[str, int],
    max_layers: int,
) -> list[_Group]:
    """Packages -> groups, one per layer before the rest layer: at most ``max_layers - 1``."""
    budget = max_layers - 1  # the rest layer always exists
    if budget == 1 or (not stable and not moving):
        everything = (*stable, *moving)
        return [_Group("environment", "stable", tuple(everything))] if everything else []
    moving_layers = min(len(moving), max(1, max_layers // 4)) if moving else 0
    stable_layers = budget - moving_layers
    groups = _rank_and_bucket(stable, owned_size, stable_layers, "stable")
    groups += _rank_and_bucket(moving, owned_size, moving_layers, "volatile")
    return groups


def _rank_and_bucket(
    packages: Sequence[PackageEntry], owned_size: Mapping[str, int], layers: int, kind: LayerKind
) -> list[_Group]:
    """The largest packages get a layer each; the others share name-hashed buckets."""
    if not packages or layers <= 0:
        return []
    ranked = sorted(packages, key=lambda p: (-owned_size.get(p.name, 0), p.name))
    if len(ranked) <= layers:
        return [_Group(p.name, kind, (p,)) for p in ranked]
    # Volatile packages are all alike: buckets only. Stable: a third of the layers as buckets.
    buckets = layers if kind == "volatile" else max(1, layers // 3)
    own = layers - buckets
    groups = [_Group(p.name, kind, (p,)) for p in ranked[:own]]
    shared: list[list[PackageEntry]] = [[] for _ in range(buckets)]
    for p in ranked[own:]:
        shared[bucket_of(p.name, buckets)].append(p)
    groups += [
        _Group(f"{kind}-{i + 1}", kind, tuple(sorted(members, key=lambda p: p.name)))
        for i, members in enumerate(shared)
        if members
    ]
    return groups


def bucket_of(name: str, buckets: int) -> int:
    """A bucket that depends on the package name only, never on its version or size."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % buckets


def _materialise(
    groups: Sequence[_Group], tree: Sequence[TreeEntry], owners: Mapping[str, str]
) -> tuple[Layer, ...]:
    by_package: dict[str, list[str]] = {}
    for path, owner in owners.items():
        by_package.setdefault(owner, []).append(path)
    sizes = {e.path: e.size for e in tree}
    layers: list[Layer] = []
    for group in groups:
        paths = sorted(p for pkg in group.packages for p in by_package.get(pkg.name, ()))
        if paths:
            layers.append(
                Layer(
                    name=group.name,
                    kind=group.kind,
                    packages=tuple(p.name for p in group.packages),
                    paths=tuple(paths),
                    size=sum(sizes.get(p, 0) for p in paths),
                )
            )
    rest = sorted(e.path for e in tree if e.kind != "dir" and e.path not in owners)
    rest += empty_directories(tree)
    rest.sort()
    layers.append(
        Layer(name=REST, kind="rest", packages=(), paths=tuple(rest), size=sum(sizes.get(p, 0) for p in rest))
    )
    return tuple(layers)


def empty_directories(tree: Sequence[TreeEntry]) -> list[str]:
    """Directories with nothing under them: no layer would create them otherwise."""
    parents: set[str] = set()
    for e in tree:
        parent = e.path.rsplit("/", 1)[0] if "/" in e.path else ""
        while parent and parent not in parents:
            parents.add(parent)
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
    return [e.path for e in tree if e.kind == "dir" and e.path not in parents]


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``: the directories a layer needs to hold ``path``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def normalise_path(path: str) -> str:
    """A file-list path as the tree spells it: no ``./``, no ``..`` (RECORD's ``../../bin/x``)."""
    out: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/".join(out)


def layer_of(layers: Sequence[Layer]) -> dict[str, int]:
    """Tree path -> index of its layer."""
    return {path: i for i, layer in enumerate(layers) for path in layer.paths}


__all__ = [
    "Layer",
    "TreeEntry",
    "ancestors",
    "assign_owners",
    "bucket_of",
    "empty_directories",
    "layer_of",
    "normalise_path",
    "plan_layers",
]
