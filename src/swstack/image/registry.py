"""The image and the registry: the base image read (manifest, config, blobs, files), the
image pushed (through ``oci.push_manifest``), the repository's tags listed for spawner menus.
"""

from __future__ import annotations

import functools
import gzip
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from .. import log, paths
from ..engine import Engine
from ..errors import ImageError, PushError, SwstackError
from ..hub import tag_kind
from ..layers import normalise_path
from ..oci import (
    CREATED,
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    VERSION,
    Blob,
    Descriptor,
    RegistryClient,
    RetryPolicy,
    before_the_manifest,
    is_attachment_tag,
    parse_reference,
    pick_from_index,
    push_manifest,
)
from ..site import Site
from ..spec import Stack
from .plan import (
    LAYER_GZIP,
    LAYER_TYPES_GZIP,
    OCI_CONFIG,
    BaseImage,
    ImageResult,
    build_date,
    build_moment,
    build_week,
    image_repository,
    load_image_result,
)

# The tag that names the build made last: new spawns get it, so a push of an earlier build leaves it.
LATEST = "latest"


def resolve_base(ref: str, platform: str, *, retry: RetryPolicy | None = None) -> BaseImage:
    """The base image's manifest and config from its registry (of a multi-platform index, the
    entry for ``platform``, conda's name of the artifact's platform: ``linux-64`` is linux/amd64)."""
    reference = parse_reference(ref, error=ImageError)
    client = RegistryClient(reference.registry, retry=retry, error=ImageError)
    doc = client.get_manifest(reference.repository, reference.reference)
    if doc.media_type in (OCI_INDEX, DOCKER_LIST):
        entry = pick_from_index(doc.json(), platform, error=ImageError, what=f"base image {ref}")
        doc = client.get_manifest(reference.repository, entry)
    data = doc.json()
    config_desc = Descriptor.from_json(data.get("config"), ImageError)
    layers = tuple(Descriptor.from_json(d, ImageError) for d in data.get("layers") or ())
    for layer in layers:
        if layer.media_type not in LAYER_TYPES_GZIP:
            raise ImageError(
                f"base image {ref}: layer {layer.digest[:19]} is {layer.media_type}; "
                "only gzip layers are supported"
            )
    config_path = base_blob(client, reference.repository, config_desc)
    return BaseImage(
        ref=ref,
        registry=reference.registry,
        repository=reference.repository,
        digest=doc.digest,
        config=json.loads(config_path.read_bytes()),
        layers=layers,
    )


def base_blob(client: RegistryClient, repository: str, desc: Descriptor) -> Path:
    """A blob of the base image, downloaded once into the shared cache (content-addressed)."""
    path = paths.cache_dir() / "image-blobs" / desc.digest.removeprefix("sha256:")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        client.pull_blob(repository, desc.digest, path, desc.size)
    return path


def _base_members(base: BaseImage, retry: RetryPolicy | None) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every member of the base's layers, the top-most layer first, with the tar it is read from."""
    client = RegistryClient(base.registry, retry=retry, error=ImageError)
    for desc in reversed(base.layers):
        path = base_blob(client, base.repository, desc)
        with gzip.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                yield tar, member


def base_file(base: BaseImage, name: str, *, retry: RetryPolicy | None = None) -> str:
    """A text file of the base image's tree (the top-most layer that has it), e.g. ``etc/passwd``."""
    for tar, member in _base_members(base, retry):
        if normalise_path(member.name) == name and member.isfile():
            handle = tar.extractfile(member)
            return handle.read().decode() if handle else ""
    return ""


def base_has(base: BaseImage, names: Sequence[str], *, retry: RetryPolicy | None = None) -> bool:
    """Whether any of ``names`` (paths in the base's tree) is a file or a link there, in one pass
    over its layers (a later layer's whiteout is not followed: a base that deletes its own program
    is not worth the bookkeeping)."""
    wanted = set(names)
    return bool(wanted) and any(
        normalise_path(m.name) in wanted and not m.isdir() for _, m in _base_members(base, retry)
    )


@dataclass(frozen=True)
class PushResult:
    repository: str
    digest: str
    tags: tuple[str, ...]
    uploaded: tuple[str, ...]  # digests of blobs sent
    skipped: tuple[str, ...]  # digests the registry already had
    bytes_uploaded: int
    bytes_total: int  # layers + config: what a push to an empty registry sends

    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


def push_image(
    image: ImageResult | Path,
    *,
    repository: str | None = None,
    tags: Sequence[str] | None = None,
    retry: RetryPolicy | None = None,
    chunk_size: int | None = None,
) -> PushResult:
    """Push the image: missing blobs first (base layers copied from the base's registry), the
    manifest last and once per tag, so a failed push never moves a tag; ``latest``, the weekly and
    the daily tag only when the registry holds no version of their span built after this one."""
    result = image if isinstance(image, ImageResult) else load_image_result(image)
    target = parse_reference(repository or result.repository, default_tag=None, error=PushError)
    client = RegistryClient(target.registry, retry=retry, error=PushError)
    if chunk_size:
        client.chunk_size = chunk_size
    repo = target.repository
    blobs_dir = result.layout / "blobs" / "sha256"
    _check_layout(result)
    base = parse_reference(result.base_repository, default_tag=None, error=PushError)
    base_client = RegistryClient(base.registry, retry=retry, error=PushError)
    config = (blobs_dir / result.config_digest.removeprefix("sha256:")).read_bytes()
    manifest_bytes = (blobs_dir / result.digest.removeprefix("sha256:")).read_bytes()
    config_blob = Blob(Descriptor(OCI_CONFIG, result.config_digest, len(config)), config)
    blobs = [*_layer_blobs(result, base_client, base.repository), config_blob]
    sizes = {blob.descriptor.digest: blob.descriptor.size for blob in blobs}
    chosen = tuple(tags) if tags is not None else result.tags
    log.step(f"pushing {target.registry}/{repo} ({len(result.layers)} layers)")
    # The version tag never moves to other content; latest, the weekly and the daily tag never move
    # back to an earlier build of their span.
    annotations = json.loads(manifest_bytes).get("annotations") or {}
    fixed = tuple(tag for tag in chosen if tag == str(annotations.get(VERSION, "")))
    with before_the_manifest(client, repo):  # the registry asked which versions it holds
        chosen = _tags_to_move(client, repo, chosen, Build.of(annotations))
    outcome = push_manifest(client, repo, blobs, manifest_bytes, tags=chosen, fixed=fixed)
    pushed = PushResult(
        repository=f"{target.registry}/{repo}",
        digest=outcome.digest,
        tags=chosen,
        uploaded=outcome.uploaded,
        skipped=outcome.skipped,
        bytes_uploaded=sum(sizes.get(d, 0) for d in outcome.uploaded) + len(manifest_bytes),
        bytes_total=sum(sizes.values()) + len(manifest_bytes),
    )
    log.info(
        f"pushed {pushed.ref()} as {', '.join(chosen) or '(no tag)'}: "
        f"sent {log.human_bytes(pushed.bytes_uploaded)} of {log.human_bytes(pushed.bytes_total)} "
        f"({len(pushed.uploaded)} blobs; {len(pushed.skipped)} already there)"
    )
    return pushed


# What a moving tag spans: (version, build time) -> a key that two builds under the same tag share.
Span = Callable[[str, str], object]


@dataclass(frozen=True)
class Build:
    """A version and when it was built, as its manifest's annotations say (``build_image`` writes
    ``org.opencontainers.image.version`` and ``.created``, the build time its config's labels carry)."""

    version: str
    created: str  # ISO 8601, as annotated: what the messages show
    at: datetime  # the same, to compare

    @classmethod
    def of(cls, annotations: Mapping[str, Any]) -> Build | None:
        """The build a manifest's annotations name; None without a version or a build time."""
        version, created = str(annotations.get(VERSION, "")), str(annotations.get(CREATED, ""))
        at = build_moment(created)
        return cls(version, created, at) if version and at is not None else None

    def within(self, span: Span, other: Build) -> bool:
        """Whether this build and ``other`` fall in the same ``span`` (one tag names both)."""
        return span(self.version, self.created) == span(other.version, other.created)


def _all_time(version: str, created: str) -> bool:
    return True


def moving_span(tag: str) -> Span | None:
    """What a moving tag spans, as ``tag_fields`` renders it: all time for ``latest``, the build's ISO
    week for the weekly tag, its day for the daily tag; None for a tag that names one version."""
    if tag == LATEST:
        return _all_time
    kind = tag_kind(tag)
    return build_week if kind == "weekly" else build_date if kind == "daily" else None


def _tags_to_move(
    client: RegistryClient, repository: str, tags: tuple[str, ...], pushed: Build | None
) -> tuple[str, ...]:
    """``tags``, less each moving tag whose span holds a version built after ``pushed``, said in one
    line: re-pushing an earlier build (to restore its tag, or to another registry) must not roll
    back what new spawns get. Without a version or build time to go by, every tag moves."""
    spans = {tag: span for tag in tags if (span := moving_span(tag)) is not None}
    if pushed is None or not spans:
        return tags
    later = builds_after(client, repository, pushed, tuple(spans.values()))
    held = {tag: next((b for b in later if b.within(span, pushed)), None) for tag, span in spans.items()}
    for tag, by in held.items():
        if by is not None:
            log.info(f"{client.registry}/{repository}:{tag} not moved: {by.version} (built {by.created}) "
                     f"was built after {pushed.version} (built {pushed.created})")
    return tuple(tag for tag in tags if held.get(tag) is None)


def builds_after(client: RegistryClient, repository: str, pushed: Build, spans: Sequence[Span]) -> list[Build]:
    """The versions ``repository`` holds that were built after ``pushed``, the last built first: one
    request for the tags, one per tag ``candidate_tags`` keeps. A version is a tag naming an image of
    that very version: ``stable`` naming 2026.12.10 is none."""
    later = []
    for tag in candidate_tags(client.list_tags(repository), pushed, spans):
        build = Build.of(client.get_manifest(repository, tag).json().get("annotations") or {})
        if build is not None and build.version == tag and build.at > pushed.at:
            later.append(build)
    return sorted(later, key=lambda build: build.at, reverse=True)


def candidate_tags(tags: Iterable[str], pushed: Build, spans: Sequence[Span]) -> list[str]:
    """The tags that may name a version built after ``pushed`` in one of ``spans`` (pure). ``latest``,
    the menu's forms (``w_2026_47``, ``d_2026_11_21``, ``exp_…``, ``r29_0_0``), signatures and
    referrers name none and are left out, as is ``pushed``'s own: a year of dailies would otherwise
    cost a request each per push."""
    since = _earliest_day(pushed)
    return [
        tag
        for tag in tags
        if tag not in (LATEST, pushed.version) and not is_attachment_tag(tag) and tag_kind(tag) is None
        and _may_be_later(tag, since, pushed, spans)
    ]


def _earliest_day(pushed: Build) -> date:
    """The day of ``pushed``'s build time, or the day its version names when that is earlier (a
    build that ran past midnight)."""
    days = (build_date(pushed.version, pushed.created), build_date("", pushed.created))
    return min(day for day in days if day is not None)


def _may_be_later(tag: str, since: date, pushed: Build, spans: Sequence[Span]) -> bool:
    """Whether ``tag`` may be a version built after ``pushed`` that shares one of ``spans`` with it.
    A release (29.0.0) says nothing of when it was built: only its manifest does. A date version is
    built on the day it names, so one named before ``since`` was built before ``pushed``, and its
    date alone says its week and day. One given an old date by hand (``version=``) and built after
    ``pushed`` is missed, and the tags move to ``pushed``: rare enough not to fetch a year of
    versions at every push for it."""
    named = build_date(tag, "")
    if named is None:
        return True
    return named >= since and any(span(tag, "") == span(pushed.version, pushed.created) for span in spans)


def _check_layout(result: ImageResult) -> None:
    """Refuse a layout whose own blobs (manifest, config, our layers) are gone or cut short, before
    a byte is sent: that is the layout's damage, which no retry or registry check mends."""
    blobs_dir = result.layout / "blobs" / "sha256"
    ours: list[tuple[str, int | None]] = [(result.digest, None), (result.config_digest, None)]
    ours += [(layer.digest, layer.size) for layer in result.layers if not layer.base]
    for digest, size in ours:
        path = blobs_dir / digest.removeprefix("sha256:")
        found = path.stat().st_size if path.is_file() else None
        if found is None or (size is not None and found != size):
            what = "is missing" if found is None else f"has {found} bytes, not {size}"
            raise PushError(f"{path} {what}: the image layout is damaged; make it again with `doit image`")


def _layer_blobs(result: ImageResult, base_client: RegistryClient, base_repo: str) -> list[Blob]:
    """Every layer: ours from the layout, the base's fetched from its registry only if the target lacks it."""
    blobs_dir = result.layout / "blobs" / "sha256"
    blobs = []
    for layer in result.layers:
        desc = Descriptor(LAYER_GZIP, layer.digest, layer.size)
        if layer.base:
            blobs.append(Blob(desc, functools.partial(base_blob, base_client, base_repo, desc)))
        else:
            blobs.append(Blob(desc, blobs_dir / layer.digest.removeprefix("sha256:")))
    return blobs


def list_images(stack: Stack, site: Site, *, retry: RetryPolicy | None = None) -> list[dict[str, Any]]:
    """The registry's images of ``stack``, newest first, as JSON a spawner's image menu can use.

    Each entry: ``image`` (``host/name:tag``), ``tag``, ``digest``, ``display_name``,
    ``version``, ``variant``, ``created``, ``revision``. DockerSpawner's ``allowed_images``
    is ``{e["display_name"]: e["image"] for e in entries}``; KubeSpawner's ``profile_list``
    takes ``{"display_name": ..., "kubespawner_override": {"image": ...}}`` per entry.
    """
    reference = parse_reference(image_repository(stack, site), default_tag=None, error=PushError)
    client = RegistryClient(reference.registry, retry=retry, error=PushError)
    entries = []
    configs: dict[str, Mapping[str, str]] = {}
    for tag in sorted(client.list_tags(reference.repository)):
        if is_attachment_tag(tag):  # the signatures `doit push` adds are no image to offer
            continue
        doc = client.get_manifest(reference.repository, tag)
        if doc.media_type not in (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
            continue
        config_digest = str((doc.json().get("config") or {}).get("digest", ""))
        if config_digest not in configs:
            configs[config_digest] = _labels_of(client, reference.repository, config_digest)
        labels = configs[config_digest]
        version = labels.get("org.opencontainers.image.version", tag)
        entries.append(
            {
                "image": f"{reference.registry}/{reference.repository}:{tag}",
                "tag": tag,
                "digest": doc.digest,
                "display_name": f"{stack.name} {tag}" + (f" ({version})" if version != tag else ""),
                "version": version,
                "variant": labels.get("io.swstack.variant", stack.variant),
                "created": labels.get("org.opencontainers.image.created", ""),
                "revision": labels.get("org.opencontainers.image.revision", ""),
            }
        )
    entries.sort(key=lambda e: (e["created"], e["tag"] == "latest", e["tag"]), reverse=True)
    return entries


def _labels_of(client: RegistryClient, repository: str, digest: str) -> Mapping[str, str]:
    path = paths.cache_dir() / "image-blobs" / digest.removeprefix("sha256:")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        client.pull_blob(repository, digest, path)
    try:
        config = json.loads(path.read_bytes())
    except ValueError:
        return {}
    return dict((config.get("config") or {}).get("Labels") or {})


def mirror_base(stack: Stack, site: Site, engine: Engine | None = None) -> str | None:
    """Put the debootstrapped Debian where the site mirrors the stack's base image.

    A site whose image mirror maps the stack's base into its own registry (the offline
    site) gets our Debian base pushed there, as production sites keep their bases in their
    registry. Returns the pushed reference, or None when the site pulls the base as named.
    """
    from ..baseimage import ensure_base, load_base_spec
    from ..engine import IMAGE_HINT, DockerEngine

    if not mirrors_base(stack, site):
        return None
    target = site.image_ref(stack.image.base)
    if not registry_answers(site):  # else the engine's push ends in a bare "connection refused"
        raise ImageError(
            f"no registry answers at {site.registry}, where the site keeps the base {stack.image.base!r} "
            f"({target}); start it (the demo's: scripts/with-registry) and run again"
        )
    engine = engine or DockerEngine(hint=IMAGE_HINT)
    local = ensure_base(engine, load_base_spec(mirror=site.debian_mirror, suite=site.debian_suite))
    engine.tag_image(local, target)
    engine.push_image(target)
    return target


def mirrors_base(stack: Stack, site: Site) -> bool:
    """Whether the site maps the stack's base into its own registry, where ``mirror_base`` puts
    it through a Docker engine (so the image step needs one)."""
    target = site.image_ref(stack.image.base)
    return target != stack.image.base and site.registry is not None and target.startswith(site.registry + "/")


def registry_answers(site: Site) -> bool:
    """Whether the site's registry answers now (one quick try, no retries)."""
    if not site.registry:
        return False
    try:
        RegistryClient(site.registry, retry=RetryPolicy(attempts=1), timeout=5).ping()
    except SwstackError:
        return False
    return True
