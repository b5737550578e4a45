"""An artifact sent to the site's registry: the image pushed, the tarball published, each then
attested and signed. The one path for ``doit push``, ``doit publish`` and the nightly (``doit ci``),
so an artifact the nightly sends carries the same referrers and signatures as one sent by hand.

Input: a site, an artifact directory (``artifacts/<stack_id>/<version>/``, its image beside it).
Output: the pushed image or published artifact, its SBOM and provenance attached as OCI
referrers, and, when the site has signing keys, every one of them signed (cosign in the
registry, OpenPGP in the lookaside store) and the artifact's files signed beside them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PushError

if TYPE_CHECKING:
    from .image import PushResult
    from .sign import KeyDir
    from .site import Site


def push_attested(site: Site, artifact: Path) -> PushResult:
    """Push the image of ``artifact`` (its ``image/`` layout), then attest and sign it."""
    from .image import push_image

    result = push_image(artifact / "image")  # which says what it pushed, in one line
    attach_and_sign(site, artifact, result.repository, result.digest)
    return result


def publish_attested(site: Site, artifact: Path, stack_id: str) -> str:
    """Publish ``artifact`` as ``<registry>/<stack_id>:<version>``, then sign its files, attest and
    sign it; return ``reference@digest``. A damaged artifact is refused before anything is sent
    or signed (``publish_artifact`` checks it first)."""
    from .publish import publish_artifact
    from .sign import sign_artifact_files, site_keys

    if not site.registry:
        raise PushError("the site names no registry: set [registry] url in the site file")
    repository = f"{site.registry}/{stack_id}"
    reference = f"{repository}:{artifact.name}"
    digest = publish_artifact(artifact, reference)
    keys = site_keys(site.signing_keys)  # once: it says so when the site has none yet
    if keys is not None:
        sign_artifact_files(artifact, keys)
    _attach_and_sign_with(keys, site, artifact, repository, digest)
    return f"{reference}@{digest}"


def attach_and_sign(site: Site, artifact: Path, repository: str, digest: str) -> None:
    """After a push: the SBOM and provenance as referrers of ``digest``, then signatures of all of them."""
    from .sign import site_keys

    _attach_and_sign_with(site_keys(site.signing_keys), site, artifact, repository, digest)


def _attach_and_sign_with(keys: KeyDir | None, site: Site, artifact: Path, repository: str, digest: str) -> None:
    from .attest import attach_attestations
    from .manifest import Manifest
    from .oci import RegistryClient, parse_reference
    from .sign import sign_image

    target = parse_reference(repository, default_tag=None)
    client = RegistryClient(target.registry)
    referrers = []
    if Manifest.load(artifact / "manifest.json").attestations:
        referrers = attach_attestations(client, target.repository, digest, artifact)
    if keys is None:
        return
    for signed in (digest, *referrers):
        sign_image(keys, site.lookaside, target.registry, target.repository, signed, int(time.time()))
