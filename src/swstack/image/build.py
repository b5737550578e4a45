"""An artifact -> the stack's image as an OCI layout in ``<artifact dir>/image/``: the doing
step, which reads the base, plans, writes the layers and the layout.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import log, proc
from ..artifact import names_registry, open_artifact, reraise
from ..errors import ImageError, SwstackError
from ..fsutil import atomic_dir, atomic_write_text
from ..oci import CREATED, VERSION, RetryPolicy, canonical_json, digest_of
from ..site import Site
from ..spec import Stack
from .plan import (
    IMAGE_DIR,
    IMAGE_JSON,
    BaseImage,
    ImageResult,
    LayerBlob,
    TreeIndex,
    add_user,
    command_lookup,
    plan_image,
    render_config,
    render_manifest,
)
from .registry import base_file, base_has, resolve_base
from .tarball import index_tarball
from .writer import GZIP_LEVEL, write_env_layers, write_layout, write_user_layer

BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"


def project_source(project: Path) -> str:
    """The ``source`` label: the checkout's origin URL when git knows one (credentials removed)."""
    try:
        url = proc.output(
            ["git", "-C", str(project), "remote", "get-url", "origin"], what="git remote"
        ).strip()
    except SwstackError:
        return ""
    return re.sub(r"(://)[^/@]+@", r"\1", url)


def base_reference(stack: Stack, site: Site) -> str:
    """What the site pulls for the stack's base; one that names no registry host (a Docker Hub
    short name the site does not map) is an error pointing at the stack-file line to map."""
    base_ref = site.image_ref(stack.image.base)
    if "/" in base_ref and names_registry(base_ref.removeprefix("oci://").partition("/")[0]):
        return base_ref
    where = f"site file {site.source}" if site.source else "default site (no site file: site=... or SWSTACK_SITE)"
    raise ImageError(
        f"{_line_of_base(stack)}: [image] base {stack.image.base!r} names no registry host and the {where} "
        f"does not map it (there is no Docker Hub default); add it to the site's [images.mirrors], e.g. "
        f'"{stack.image.base}" = "registry.example.org/library/{stack.image.base}"'
    )


def _line_of_base(stack: Stack) -> str:
    """``file:line`` of the ``[image] base`` the stack takes."""
    return stack.where(("image", "base"))


def check_command(
    stack: Stack,
    command: tuple[str, ...],
    index: TreeIndex,
    prefix: str,
    base: BaseImage,
    retry: RetryPolicy | None,
) -> None:
    """The image's command must be a program of the stack's tree or of the base image: a container
    of an image without it exits at once, and every spawn from the hub's menu would fail."""
    where = stack.where(("image", "command"))
    try:
        candidates = command_lookup(command, index, prefix, base)
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}; fix [image] command") from None
    if candidates and not base_has(base, candidates, retry=retry):
        raise ImageError(
            f"{where}: [image] command {command[0]!r} is neither in the stack's tree ({prefix}/bin) nor on "
            f"the base image's PATH, so a container of this image could not start; add the package that "
            f"provides it to the stack's dependencies (then doit lock), or set [image] command"
        )


def build_image(
    stack: Stack,
    site: Site,
    project: Path,
    artifact_dir: Path,
    *,
    retry: RetryPolicy | None = None,
    gzip_level: int = GZIP_LEVEL,
) -> ImageResult:
    """Assemble the stack's image from its artifact into ``<artifact_dir>/image`` (an OCI layout)."""
    with reraise(ImageError, "build the stack (doit build)"):
        artifact = open_artifact(artifact_dir)
    manifest, tarball = artifact.manifest, artifact.tarball
    base_ref = base_reference(stack, site)
    log.step(f"image of {manifest.stack_id} {manifest.version} on {base_ref}")
    base = resolve_base(base_ref, manifest.platform, retry=retry)
    index = index_tarball(tarball, manifest)
    plan = plan_image(stack, site, manifest, index, base, source=project_source(project))
    check_command(stack, plan.command, index, manifest.prefix, base, retry)
    for layer in plan.layers:
        log.debug(f"layer {layer.describe()}: {log.human_bytes(layer.size)}")
    passwd, group = add_user(
        base_file(base, "etc/passwd", retry=retry),
        base_file(base, "etc/group", retry=retry),
        plan.user_name,
        plan.uid,
        plan.home,
    )
    epoch = manifest.source_date_epoch
    out = artifact_dir / IMAGE_DIR
    with atomic_dir(out) as tmp:
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        ours = write_env_layers(tarball, plan.layers, plan.prefix, epoch, blobs, gzip_level)
        ours.append(write_user_layer(passwd, group, plan, epoch, blobs))
        config = canonical_json(render_config(plan, base, ours, manifest.build_time))
        (blobs / digest_of(config).removeprefix("sha256:")).write_bytes(config)
        annotations = {
            VERSION: manifest.version,
            CREATED: manifest.build_time,
            BASE_NAME: stack.image.base,
            BASE_DIGEST: base.digest,
        }
        image_manifest = render_manifest(base, ours, config, annotations)
        digest = digest_of(image_manifest)
        (blobs / digest.removeprefix("sha256:")).write_bytes(image_manifest)
        write_layout(tmp, digest, len(image_manifest), plan.tags)
        inherited = [
            LayerBlob(f"base-{i + 1}", d.digest, diff_id, d.size, base=True)
            for i, (d, diff_id) in enumerate(
                zip(base.layers, (base.config.get("rootfs") or {}).get("diff_ids") or [], strict=False)
            )
        ]
        result = ImageResult(
            layout=out,
            repository=plan.repository,
            tags=plan.tags,
            digest=digest,
            config_digest=digest_of(config),
            base_ref=base_ref,
            base_repository=f"{base.registry}/{base.repository}",
            layers=(*inherited, *ours),
        )
        atomic_write_text(tmp / IMAGE_JSON, result.to_json())
    ours_size = sum(layer.size for layer in ours)
    log.info(
        f"image {plan.repository}@{digest[:19]}: {len(ours)} layers of ours ({log.human_bytes(ours_size)}) "
        f"on {len(base.layers)} of the base; tags {', '.join(plan.tags)}"
    )
    return result
