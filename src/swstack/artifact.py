"""The artifact, one definition for every stage: an artifact directory and its OCI form.

Input: an artifact directory as ``pack`` leaves it (``<stack>-<version>-<platform>.tar.zst``
or ``.tar.gz``, its ``.sha256`` side file in ``sha256sum`` format, ``manifest.json``), or
the OCI manifest of a published artifact. Output: its ``Manifest``, the tarball's path,
the sha256 the side file records, whether the files agree; and, for the registry, the
OCI manifest that carries the artifact (``render_artifact_manifest``) and the layers to
take out of one (``artifact_layout``).

Standard library and swstack's light modules only: the host side reads artifacts with
it. The OCI half needs ``oci.Descriptor`` and imports ``oci`` inside its functions, so
a host activating a local tarball never loads the HTTP client.

Failures raise ``ArtifactError``, which says what is wrong and nothing about what to do:
each stage re-raises it as its own error with its own remedy (``reraise``), so the image
step says "build the stack", publish "pack the stack again", the host exits 11.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SwstackError
from .fsutil import sha256_file
from .manifest import Manifest

if TYPE_CHECKING:
    from .oci import Descriptor

MANIFEST_NAME = "manifest.json"
CHECKSUM_SUFFIX = ".sha256"

# The swstack artifact in a registry: config and one layer are manifest.json, the other layer the tarball.
ARTIFACT_TYPE = "application/vnd.swstack.stack.v1+json"
STACK_MANIFEST_TYPE = "application/vnd.swstack.manifest.v1+json"
TARBALL_TYPES = {
    "zstd": "application/vnd.swstack.stack.tar+zstd",
    "gzip": "application/vnd.swstack.stack.tar+gzip",
}
# Its own annotations (OCI's standard ones, title, version, created, are in ``oci``).
STACK = "io.swstack.stack"
PLATFORM = "io.swstack.platform"

_SUM_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(.+)$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")


class ArtifactError(SwstackError):
    """An artifact is missing a file or its files disagree. Callers re-raise it as their stage's error."""


@contextlib.contextmanager
def reraise(error: type[SwstackError], remedy: str = "") -> Iterator[None]:
    """Turn an ``ArtifactError`` into the caller's ``error`` (its exit code), with ``remedy`` appended."""
    try:
        yield
    except ArtifactError as exc:
        raise error(f"{exc}; {remedy}" if remedy else str(exc)) from None


# ----------------------------------------------------------------------------- the side file


def names_registry(component: str) -> bool:
    """Whether a reference's first component is a registry host: like docker, when it has
    a dot or a port, or is ``localhost`` (registry.example.org/..., localhost:5000/...)."""
    return "." in component or ":" in component or component == "localhost"


def checksum_path(tarball: Path) -> Path:
    """``<tarball>.sha256``, beside the tarball."""
    return tarball.with_name(tarball.name + CHECKSUM_SUFFIX)


def checksum_line(sha256: str, name: str) -> str:
    """The side file's whole text: one ``sha256sum`` line, so ``sha256sum -c`` checks the tarball."""
    return f"{sha256}  {name}\n"


def parse_checksum(text: str, tarball_name: str, where: str | Path | None = None) -> str:
    """``sha256sum`` format (``<hex>  <name>``); the line naming our tarball wins, a lone hash is accepted.
    ``where``: the side file, as the error names it (default: its name)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        m = _SUM_RE.match(line)
        if m and m.group(2).strip() in (tarball_name, f"./{tarball_name}"):
            return m.group(1).lower()
    if len(lines) == 1 and re.fullmatch(r"[0-9a-fA-F]{64}", lines[0].split()[0]):
        return lines[0].split()[0].lower()
    raise ArtifactError(f"{where or tarball_name + CHECKSUM_SUFFIX}: no sha256 for {tarball_name} in it")


def read_checksum(tarball: Path) -> str | None:
    """The sha256 the tarball's side file records, or None when there is no side file."""
    try:
        text = checksum_path(tarball).read_text(errors="replace")
    except FileNotFoundError:
        return None
    return parse_checksum(text, tarball.name, checksum_path(tarball))


# ----------------------------------------------------------------------------- the directory


@dataclass(frozen=True)
class LocalArtifact:
    """An artifact directory whose manifest was read and whose tarball is there."""

    directory: Path
    manifest: Manifest
    tarball: Path

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME


def load_manifest(path: Path) -> Manifest:
    """``manifest.json`` (``path`` is the file or its directory), parsed and checked."""
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ArtifactError(
                f"{path}: no {MANIFEST_NAME}, so no complete artifact (pack writes it last, beside the tarball)"
            )
        path = path / MANIFEST_NAME
    try:
        return Manifest.load(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; an artifact carries {MANIFEST_NAME} beside its tarball") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a swstack manifest ({exc})") from exc


def tarball_path(directory: Path, manifest: Manifest) -> Path:
    """The tarball ``manifest`` names, in ``directory``; it must be a plain file name and be there."""
    manifest_path = directory / MANIFEST_NAME
    if manifest.tarball is None:
        raise ArtifactError(f"{manifest_path}: has no 'tarball' section")
    name = manifest.tarball.name
    if "/" in name or name in ("", ".", "..") or "\x00" in name:
        raise ArtifactError(f"{manifest_path}: tarball.name {name!r} is not a file name beside {MANIFEST_NAME}")
    tarball = directory / name
    if not tarball.is_file():
        raise ArtifactError(f"{tarball}: missing (named by {manifest_path})")
    return tarball


def open_artifact(directory: Path) -> LocalArtifact:
    """Read the artifact in ``directory``: its manifest, and its tarball's path (checked to exist)."""
    manifest = load_manifest(directory)
    return LocalArtifact(directory, manifest, tarball_path(directory, manifest))


def check_side_files(artifact: LocalArtifact) -> None:
    """The tarball has the size manifest.json records and its side file, if any, the same sha256.

    Cheap (no hashing): what to check before trusting the small files to describe the tarball.
    """
    info = artifact.manifest.tarball
    assert info is not None  # tarball_path checked it
    size = artifact.tarball.stat().st_size
    if size != info.size:
        raise ArtifactError(f"{artifact.tarball}: {size} bytes but {MANIFEST_NAME} says {info.size}")
    side = read_checksum(artifact.tarball)
    if side is not None and side != info.sha256.lower():
        raise ArtifactError(f"{checksum_path(artifact.tarball)} disagrees with {MANIFEST_NAME} on the sha256")


def damage(directory: Path, manifest: Manifest) -> str | None:
    """Why the artifact in ``directory`` is not whole, or None when it is.

    Whole means: the tarball the manifest names is there, with the manifest's size and
    sha256, its side file is the ``sha256sum`` line of that name and sha256, and the
    documents it lists (SBOM, provenance) have the sha256 it records. The tarball is hashed
    (about a second per 500 MiB): right size, other bytes is damage too.
    """
    if manifest.tarball is None:
        return f"{directory / MANIFEST_NAME} names no tarball"
    tarball = directory / manifest.tarball.name
    side = checksum_path(tarball)
    if not tarball.is_file():
        return f"{tarball} is missing"
    if not side.is_file():
        return f"{side} is missing"
    if side.read_text(errors="replace") != checksum_line(manifest.tarball.sha256, tarball.name):
        return f"{side} does not name the tarball with the sha256 manifest.json records ({manifest.tarball.sha256})"
    return content_damage(tarball, manifest) or attestation_damage(directory, manifest)


def attestation_damage(directory: Path, manifest: Manifest) -> str | None:
    """Why a document ``manifest`` lists beside the tarball (SBOM, provenance) is not the one it
    records, or None. They are part of the artifact: push and publish refuse one missing or changed."""
    for info in manifest.attestations:
        path = directory / info.name
        if not path.is_file():
            return f"{path} is missing"
        actual = sha256_file(path)
        if actual != info.sha256:
            return f"{path} has sha256 {actual}, {MANIFEST_NAME} records {info.sha256}"
    return None


def content_damage(tarball: Path, manifest: Manifest) -> str | None:
    """Why ``tarball``'s bytes are not those ``manifest`` records (its size, then its sha256), or None."""
    assert manifest.tarball is not None  # the callers checked it
    recorded = manifest.tarball
    size = tarball.stat().st_size
    if size != recorded.size:
        return f"{tarball} has {size} bytes, {MANIFEST_NAME} records {recorded.size}"
    actual = sha256_file(tarball)
    if actual != recorded.sha256:
        return f"{tarball} has sha256 {actual}, {MANIFEST_NAME} records {recorded.sha256}"
    return None


def check_whole(artifact: LocalArtifact) -> None:
    """The tarball is the one manifest.json records (size and sha256, so it is hashed) and its side
    file, if any, agrees: what to check before sending the tarball anywhere."""
    check_side_files(artifact)
    damaged = content_damage(artifact.tarball, artifact.manifest)
    if damaged is not None:
        raise ArtifactError(damaged)


# ----------------------------------------------------------------------------- the OCI artifact


@dataclass(frozen=True)
class ArtifactLayout:
    """Where a published artifact keeps its files: the tarball layer and the manifest.json layer."""

    tarball: Descriptor
    manifest: Descriptor


def tarball_media_type(manifest: Manifest) -> str:
    """The tarball layer's media type, from the manifest's compression."""
    info = manifest.tarball
    media_type = TARBALL_TYPES.get(info.compression) if info else None
    if info is None or media_type is None:
        compression = info.compression if info else None
        raise ArtifactError(f"{MANIFEST_NAME}: unknown tarball compression {compression!r} (zstd or gzip)")
    return media_type


def artifact_annotations(manifest: Manifest) -> dict[str, str]:
    """The OCI manifest's annotations: what the artifact is, readable without pulling a blob."""
    from .oci import CREATED, VERSION

    return {
        STACK: manifest.stack_id,
        VERSION: manifest.version,
        PLATFORM: manifest.platform,
        CREATED: manifest.build_time,
    }


def render_artifact_manifest(
    manifest: Manifest, manifest_bytes: bytes, tarball: Descriptor
) -> tuple[Descriptor, bytes]:
    """The OCI 1.1 manifest carrying the artifact: ``artifactType`` set, config = manifest.json,
    layers = the tarball and manifest.json. Returns manifest.json's layer descriptor and the bytes."""
    from .oci import TITLE, Descriptor, digest_of, render_manifest

    config = Descriptor(STACK_MANIFEST_TYPE, digest_of(manifest_bytes), len(manifest_bytes))
    layer = Descriptor(config.media_type, config.digest, config.size, {TITLE: MANIFEST_NAME})
    rendered = render_manifest(
        config=config,
        layers=(tarball, layer),
        annotations=artifact_annotations(manifest),
        artifact_type=ARTIFACT_TYPE,
    )
    return layer, rendered


def artifact_layout(manifest: Mapping[str, Any], *, error: type[SwstackError]) -> ArtifactLayout:
    """Find the tarball and manifest.json layers of an artifact's OCI manifest; refuse anything else."""
    from .oci import TITLE, Descriptor

    # The registry's JSON is anyone's: a field of the wrong type is a refusal, not a traceback.
    config = manifest.get("config") or {}
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    kind = manifest.get("artifactType") or config_type
    if kind not in (ARTIFACT_TYPE, STACK_MANIFEST_TYPE):
        what = (
            "a container image"
            if config_type
            in ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
            else f"an artifact of type {kind!r}"
        )
        hint = (
            "; a stack's artifact is published beside its image, as <registry>/<stack>:<version> "
            "(`doit publish`), and that is the reference to give"
            if what == "a container image"
            else ""
        )
        raise error(f"this reference is {what}, not a swstack stack artifact (artifactType {ARTIFACT_TYPE}){hint}")
    raw_layers = manifest.get("layers") or []
    if not isinstance(raw_layers, list):
        raise error(f"malformed swstack artifact: layers is {type(raw_layers).__name__}, not a list")
    layers = [Descriptor.from_json(d, error) for d in raw_layers]
    tarballs = [d for d in layers if d.media_type in TARBALL_TYPES.values()]
    manifests = [d for d in layers if d.media_type == STACK_MANIFEST_TYPE]
    if len(tarballs) != 1 or len(manifests) != 1:
        raise error(
            f"malformed swstack artifact: expected one tarball and one manifest.json layer, "
            f"found {len(tarballs)} and {len(manifests)}"
        )
    tarball = tarballs[0]
    title = tarball.annotations.get(TITLE, "")
    if not _SAFE_NAME_RE.match(title) or "/" in title:
        raise error(
            f"malformed swstack artifact: the tarball layer's title {title!r} is not a plain file name"
        )
    return ArtifactLayout(tarball=tarball, manifest=manifests[0])
