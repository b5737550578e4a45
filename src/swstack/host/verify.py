"""Artifact -> checked expectations (checksum, size, names, the chunk table's tiling).

The tarball is read once: extraction hashes it as it streams (the whole file, or each
chunk it reads against the chunk table) and the digests are compared before the
extracted tree is renamed anywhere a reader could see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..artifact import parse_checksum, reraise
from ..errors import ActivateError
from ..manifest import Manifest
from . import chunks
from .layout import check_name
from .source import Artifact

# The in-tree copy dates itself at the lock time (SOURCE_DATE_EPOCH) so the tarball is
# reproducible; the manifest beside it records when the build really ran.
_INFORMATIONAL = frozenset({"file_count", "total_size", "build_time"})


@dataclass(frozen=True)
class Expected:
    sha256: str
    size: int | None
    tree_size: int | None = None  # the manifest's total_size: no member may claim more


def read_checksum_file(text: str, tarball_name: str, where: str | Path | None = None) -> str:
    """sha256sum format ('<hex>  <name>'); the line naming our tarball wins, a lone hash is accepted."""
    with reraise(ActivateError):
        return parse_checksum(text, tarball_name, where)


def expectations(artifact: Artifact) -> Expected:
    """Cross-check manifest and .sha256 (pure apart from reading the small checksum file)."""
    m = artifact.manifest
    try:
        check_name("stack", m.stack_id)
        check_name("version", m.version)
    except ActivateError as exc:
        raise ActivateError(f"{artifact.source}: {exc}") from None  # which manifest says so
    if not m.prefix.startswith("/"):
        raise ActivateError(f"{artifact.source}: manifest prefix {m.prefix!r} is not an absolute path")
    from_manifest = m.tarball.sha256.lower() if m.tarball else None
    from_file = None
    if artifact.checksum_file is not None:
        from_file = read_checksum_file(
            artifact.checksum_file.read_text(errors="replace"), artifact.tarball.name, artifact.checksum_file
        )
    if from_manifest and from_file and from_manifest != from_file:
        raise ActivateError(
            f"{artifact.source}: manifest.json and {artifact.checksum_file} disagree on the "
            f"tarball's sha256; the artifact is inconsistent, rebuild or re-download it"
        )
    digest = from_file or from_manifest
    if digest is None:
        raise ActivateError(
            f"{artifact.source}: no sha256 (neither {artifact.tarball.name}.sha256 nor a "
            f"tarball section in manifest.json); refusing an unverifiable tarball"
        )
    size = m.tarball.size if m.tarball else None
    actual = artifact.tarball.stat().st_size
    if size is not None and actual != size:
        raise ActivateError(
            f"{artifact.tarball}: {actual} bytes, the manifest says {size}: truncated or "
            f"replaced; re-download it"
        )
    if m.tarball is not None and m.tarball.chunks:
        chunks.check_table(m.tarball.chunks, actual, str(artifact.tarball))
    return Expected(digest, size, m.total_size)


def check_in_tree_manifest(in_tree_text: str | None, manifest: Manifest, where: str) -> None:
    """The tree's own manifest must equal manifest.json without its tarball section."""
    if in_tree_text is None:
        raise ActivateError(
            f"{where}: the tarball has no conda-meta/swstack-manifest.json; not a swstack artifact"
        )
    try:
        inside = Manifest.from_json(in_tree_text)
    except (ValueError, TypeError, KeyError) as exc:
        raise ActivateError(
            f"{where}: conda-meta/swstack-manifest.json is not a valid manifest ({exc})"
        ) from exc
    expected = manifest.without_tarball()
    fields: list[str] = []
    if inside != expected:
        fields = [f for f in expected.__dataclass_fields__ if getattr(inside, f) != getattr(expected, f)]
        # build_time differs by design (see above); the counts only when packed by an early pack.
        informational = [f for f in fields if f in _INFORMATIONAL and f != "build_time"]
        if informational:
            # Counts only feed the space estimate; the sha256 already binds the tarball to
            # manifest.json. Early pack versions wrote them as 0 inside the tree.
            log.warn(f"{where}: the tree's manifest differs from manifest.json in {', '.join(informational)}")
        fields = [f for f in fields if f not in _INFORMATIONAL]
    if fields:
        raise ActivateError(
            f"{where}: the tree's manifest differs from manifest.json in {', '.join(fields)}; "
            f"the artifact was tampered with or mixed up"
        )


def check_platform(manifest: Manifest, where: str, here: str) -> None:
    """Refuse an artifact built for another platform before anything on the host changes."""
    if manifest.platform != here:
        raise ActivateError(
            f"{where}: {manifest.stack_id} {manifest.version} is built for {manifest.platform}, this host is "
            f"{here}; activate the {here} artifact of this version"
        )
