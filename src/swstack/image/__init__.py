"""Artifact tarball -> layered OCI image of the stack (assembled here, not by ``docker build``).

Input: an artifact directory as ``pack`` leaves it (tarball + ``manifest.json``), the
stack's ``[image]`` settings and the site (registry, image mirrors). Output: an OCI
image layout in ``<artifact dir>/image/`` (``oci-layout``, ``index.json``,
``blobs/sha256/...`` for the layers we make, the config and the manifest) plus
``image.json`` describing it; ``push_image`` sends it to the registry.

The image is the base image the stack names (pulled from a registry, through the site's
mirror map) plus:

* the environment at its prefix, split by ``layers.plan_layers`` into a bounded number of
  layers, each a deterministic tar (sorted members, the tarball's own metadata, gzip with
  no timestamp): the same files always give the same layer digest, so a one-package
  change re-pushes one small layer, not the environment;
* one small layer adding the non-root user (``/etc/passwd``, ``/etc/group``, its home);
* a config with ``PATH``, ``JUPYTER_PATH``, the user, ``jupyterhub-singleuser`` as the
  command and OCI labels (version, variant, lockfile hash, git commit, source, created).

Why assemble instead of ``docker build`` with one ``COPY`` per layer: the engine's layer
tars carry the build's clock on implicitly created directories and depend on the
engine's version and storage driver, so unchanged layers would not keep their digest
from one build to the next. Writing the tars ourselves makes the digest a function of
the files alone; see docs/image.md.

The modules, data flowing one way: ``plan`` (pure: tags, labels, environment, layers, the
config and manifest rendered), ``tarball`` (the artifact's tarball read as a stream),
``writer`` (the layer blobs and the OCI layout), ``registry`` (the base image read, the
image pushed through ``oci.push_manifest``, tags listed) and ``build`` (``build_image``,
which runs them in order).
"""

from __future__ import annotations

from .build import build_image, project_source
from .plan import (
    BaseImage,
    ImagePlan,
    ImageResult,
    LayerBlob,
    TreeIndex,
    add_user,
    build_day,
    image_env,
    image_labels,
    image_repository,
    load_image_result,
    plan_image,
    release_numbers,
    render_config,
    render_manifest,
    render_tags,
    tag_fields,
)
from .registry import PushResult, list_images, mirror_base, mirrors_base, push_image, registry_answers, resolve_base
from .tarball import index_tarball, open_tarball
from .writer import write_env_layers, write_user_layer

__all__ = [
    "BaseImage",
    "ImagePlan",
    "ImageResult",
    "LayerBlob",
    "PushResult",
    "TreeIndex",
    "add_user",
    "build_day",
    "build_image",
    "image_env",
    "image_labels",
    "image_repository",
    "index_tarball",
    "list_images",
    "load_image_result",
    "mirror_base",
    "mirrors_base",
    "open_tarball",
    "plan_image",
    "project_source",
    "push_image",
    "registry_answers",
    "release_numbers",
    "render_config",
    "render_manifest",
    "render_tags",
    "resolve_base",
    "tag_fields",
    "write_env_layers",
    "write_user_layer",
]
