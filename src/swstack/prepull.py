"""The spawner menu -> its images on the nodes: a Docker host's pulls and removals, a Kubernetes DaemonSet.

Input: a ``hub.Menu`` (its images pinned by digest, default first) and, on a Docker host,
what the engine holds and which images its containers use. Output: ``PrepullPlan``
(pure: what to pull, what to keep, what to remove) carried out through ``engine.py``, or
a DaemonSet manifest (pure) whose init containers make every node pull each image.

A Docker host keeps at most ``keep`` images of the menu's repository: the menu's first
``keep`` images (the default first). Older images of that repository are removed, never
one a container uses, running or stopped: such an image stays (reported as in use)
until its container is gone, even if that makes more than ``keep``. The removals are planned
again after the pulls; a dry run plans them on the images as the pulls would leave them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import log
from .engine import Engine, LocalImage
from .errors import ImageError
from .hub import Menu
from .oci import RegistryClient, parse_reference

PAUSE_IMAGE = "registry.k8s.io/pause:3.9"


@dataclass(frozen=True)
class PrepullPlan:
    repository: str
    pull: tuple[str, ...]  # pinned references missing on the host
    present: tuple[str, ...]  # pinned references already there
    remove: tuple[str, ...]  # references (tags, digests) of images to untag and so delete
    in_use: tuple[str, ...]  # ids of images beyond the menu kept because a container uses them

    @property
    def changes(self) -> bool:
        return bool(self.pull or self.remove)


def _of_repository(image: LocalImage, repository: str) -> tuple[str, ...]:
    """The names ``image`` has in ``repository`` (``repo:tag`` and ``repo@sha256:``)."""
    names = [t for t in image.repo_tags if t.rsplit(":", 1)[0] == repository]
    names += [d for d in image.repo_digests if d.split("@", 1)[0] == repository]
    return tuple(names)


def plan_prepull(menu: Menu, local: Sequence[LocalImage], in_use: set[str], keep: int) -> PrepullPlan:
    """Pull the menu's first ``keep`` images that are missing; remove the repository's others not in use."""
    if keep < 1:
        raise ImageError(f"--keep {keep}: keep at least 1 image (the menu's default)")
    wanted = menu.images()[:keep]
    held = {digest for image in local for digest in image.repo_digests}
    ours = [(image, names) for image in local if (names := _of_repository(image, menu.repository))]
    remove: list[str] = []
    kept_in_use: list[str] = []
    for image, names in ours:
        if any(digest in wanted for digest in image.repo_digests):
            continue
        if image.id in in_use:
            kept_in_use.append(image.id)
            continue
        remove.extend(names)
    return PrepullPlan(
        repository=menu.repository,
        pull=tuple(ref for ref in wanted if ref not in held),
        present=tuple(ref for ref in wanted if ref in held),
        remove=tuple(remove),
        in_use=tuple(kept_in_use),
    )


def remove_old(plan: PrepullPlan, engine: Engine) -> None:
    """The removals of a plan, once its pulls are done: a host never holds fewer menu images than before."""
    for ref in plan.remove:
        log.info(f"removing {ref}")
        engine.remove_image(ref)  # never forced: the engine refuses one a container uses
    for image_id in plan.in_use:
        log.info(f"kept {image_id[:19]}: a container uses it")


def prepull(menu: Menu, engine: Engine, keep: int, *, dry_run: bool = False) -> PrepullPlan:
    """Pull, then remove as planned again after the pulls; a dry run says the same and does nothing."""
    local, in_use = engine.local_images(), engine.images_in_use()
    plan = plan_prepull(menu, local, in_use, keep)
    if dry_run:
        if plan.pull and plan.remove:  # a pull may give an image to remove a menu name
            return _replanned(plan, plan_prepull(menu, as_pulled(local, pulled_ids(plan.pull)), in_use, keep))
        return plan
    for ref in plan.pull:
        engine.pull_image(ref)
    if plan.pull:
        # A pulled image may be one the host held under an old name only (the same image, another
        # manifest digest): a menu image now, and removing its last tag would take the new pin with it.
        plan = _replanned(plan, plan_prepull(menu, engine.local_images(), engine.images_in_use(), keep))
    remove_old(plan, engine)
    return plan


def _replanned(plan: PrepullPlan, after: PrepullPlan) -> PrepullPlan:
    """``plan``'s pulls, ``after``'s removals: what the host holds once the pulls are done decides them."""
    return replace(plan, remove=after.remove, in_use=after.in_use)


def as_pulled(local: Sequence[LocalImage], ids: Mapping[str, Sequence[str]]) -> list[LocalImage]:
    """``local`` as pulling each pinned reference of ``ids`` leaves it (pure): an image the engine
    holds under one of the ids the pull's image may have gets the pin as a name, as the pull gives it."""
    images = list(local)
    for ref, image_ids in ids.items():
        for i, image in enumerate(images):
            if image.id in image_ids:
                images[i] = replace(image, repo_digests=(*image.repo_digests, ref))
    return images


def pulled_ids(refs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each pinned reference -> the ids an engine gives its image once pulled, read from the
    registry without pulling: its config's digest (Docker's image id) and its own (the
    containerd image store's)."""
    ids: dict[str, tuple[str, ...]] = {}
    for ref in refs:
        name = parse_reference(ref, default_tag=None, error=ImageError)
        client = RegistryClient(name.registry, error=ImageError)
        config = client.get_manifest(name.repository, name.reference).json().get("config") or {}
        ids[ref] = tuple(str(digest) for digest in (config.get("digest"), name.digest) if digest)
    return ids


# ----------------------------------------------------------------------------- Kubernetes


def _container_name(index: int, tag: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", tag.lower()).strip("-")
    return f"pull-{index}-{name}"[:63].rstrip("-")


def render_daemonset(
    menu: Menu,
    *,
    name: str | None = None,
    namespace: str | None = None,
    keep: int | None = None,
    pause_image: str = PAUSE_IMAGE,
) -> dict[str, Any]:
    """An ``apps/v1`` DaemonSet whose init containers pull each menu image on every node.

    Each init container runs ``/bin/true`` in one image (our images are Debian-based), so
    the kubelet pulls it; the one container left is ``pause``, so the pod costs nothing
    while it keeps the images from the kubelet's image garbage collection. ``keep`` limits
    it to the menu's first images, as on a Docker host.
    """
    if keep is not None and keep < 1:  # 0 gave every image, -1 all but the last
        raise ImageError(f"--keep {keep}: keep at least 1 image (the menu's default)")
    images = menu.images()[:keep]
    app = name or "swstack-prepull-" + re.sub(r"[^a-z0-9-]+", "-", menu.repository.rsplit("/", 1)[-1].lower())
    app = app[:63].rstrip("-")
    labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "swstack"}
    tags = {entry.image: entry.tag for entry in reversed(menu.entries)}
    init = [
        {
            "name": _container_name(i, tags[image]),
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/true"],
            "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
        }
        for i, image in enumerate(images)
    ]
    metadata: dict[str, Any] = {"name": app, "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": init,
                    "containers": [
                        {
                            "name": "pause",
                            "image": pause_image,
                            "resources": {
                                "requests": {"cpu": "1m", "memory": "8Mi"},
                                "limits": {"cpu": "10m", "memory": "16Mi"},
                            },
                        }
                    ],
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


def daemonset_json(manifest: dict[str, Any]) -> str:
    """The manifest as ``kubectl apply -f`` reads it (JSON is YAML too)."""
    return json.dumps(manifest, indent=2) + "\n"


__all__ = [
    "PrepullPlan",
    "as_pulled",
    "daemonset_json",
    "plan_prepull",
    "prepull",
    "pulled_ids",
    "remove_old",
    "render_daemonset",
]
