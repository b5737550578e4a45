"""The image planned, without side effects: tags, labels, environment, user, layers (from
``layers.plan_layers``), the config and manifest rendered; and the ``ImageResult`` a build leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from .. import log, oci
from ..errors import ImageError, PushError
from ..layers import Layer, TreeEntry, plan_layers
from ..manifest import Manifest
from ..oci import Descriptor, digest_of
from ..site import Site
from ..spec import ImageSettings, Stack

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPES_GZIP = (LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip")
IMAGE_DIR = "image"
IMAGE_JSON = "image.json"


@dataclass(frozen=True)
class TreeIndex:
    """What the planner needs of a tarball: its members and each package's file list."""

    entries: tuple[TreeEntry, ...]
    files: Mapping[str, tuple[str, ...]]  # package name -> owned paths


@dataclass(frozen=True)
class BaseImage:
    """The base image as a registry serves it."""

    ref: str  # what was pulled (after the mirror map), tag or digest
    registry: str
    repository: str
    digest: str  # of its manifest
    config: Mapping[str, Any]
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImagePlan:
    """Everything about the image except the layer bytes."""

    repository: str  # host[:port]/name, where it is pushed
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    env: tuple[str, ...]
    user: str  # "uid:gid"
    user_name: str
    uid: int
    home: str
    command: tuple[str, ...]
    prefix: str
    layers: tuple[Layer, ...]


@dataclass(frozen=True)
class LayerBlob:
    name: str
    digest: str  # of the gzip blob
    diff_id: str  # of the uncompressed tar
    size: int  # of the blob
    base: bool = False  # inherited from the base image (not in our layout)


@dataclass(frozen=True)
class ImageResult:
    layout: Path  # the OCI layout directory
    repository: str
    tags: tuple[str, ...]
    digest: str  # of the image manifest
    config_digest: str
    base_ref: str
    base_repository: str  # host[:port]/name the base layers come from
    layers: tuple[LayerBlob, ...]

    @property
    def size(self) -> int:
        """Bytes of all layers, base included: what a first push or pull moves."""
        return sum(layer.size for layer in self.layers)

    def ref(self, tag: str | None = None) -> str:
        return f"{self.repository}:{tag}" if tag else f"{self.repository}@{self.digest}"

    def to_json(self) -> str:
        data = asdict(self)
        data["layout"] = str(self.layout)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> ImageResult:
        data = json.loads(path.read_text())
        data["layout"] = Path(data["layout"])
        data["tags"] = tuple(data["tags"])
        data["layers"] = tuple(LayerBlob(**layer) for layer in data["layers"])
        return cls(**data)


def image_repository(stack: Stack, site: Site) -> str:
    """``host[:port][/namespace]/<repository>``; another variant than the default gets ``-<variant>``."""
    if not site.registry:
        raise ImageError(
            f"the site {site.name!r} names no registry: set [registry] url in its file "
            '(e.g. url = "registry.example.org:5000")'
        )
    name = stack.image.repository or f"swstack/{stack.name}"
    if not stack.is_default_variant:
        name = f"{name}-{stack.variant}"
    return f"{site.registry}/{name}"


RELEASE_FIELDS = ("major", "minor", "patch")


def release_numbers(version: str) -> tuple[int, int, int] | None:
    """``29.1.0`` or ``v29.1`` -> ``(29, 1, 0)``; None for anything else (dates, builds, pre-releases).

    A date version (``2026.11.21``, ``2026.11.21.2``) is never a release, so a nightly
    build can not make an ``r2026_11_21`` tag that sorts above every real release.
    """
    if _version_date(version) is not None:
        return None
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def build_day(manifest: Manifest) -> date:
    """The date a build stands for: the one in a date version, else the build time's (UTC)."""
    return _dated(manifest.version, manifest.build_time)


def build_date(version: str, created: str) -> date | None:
    """The day ``d_{yyyy}_{mm}_{dd}`` names for an image of ``version`` built at ``created``
    (ISO 8601; its manifest's annotations), as ``build_day`` dates it; None when neither says a
    date. ``build_date(version, "")`` is the day a date version names (None for a release),
    ``build_date("", created)`` the day of the build time (UTC)."""
    try:
        return _dated(version, created)
    except ValueError:
        return None


def build_week(version: str, created: str) -> tuple[int, int] | None:
    """The ISO year and week ``w_{isoyear}_{week}`` names for an image of ``version`` built at
    ``created``, as ``build_date`` dates it; None when neither says a date."""
    day = build_date(version, created)
    if day is None:
        return None
    year, week, _ = day.isocalendar()
    return year, week


def build_moment(created: str) -> datetime | None:
    """A build time (ISO 8601, ``2026-11-21T03:00:00Z``) to compare with another; one naming no
    offset is taken as UTC, the zone ``pack`` writes them in. None when it is no time."""
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _dated(version: str, created: str) -> date:
    """The one dating of a build that its tags, ``build_day`` and ``build_date`` share."""
    return _version_date(version) or _utc_day(created)


def _utc_day(timestamp: str) -> date:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).date()


def tag_fields(manifest: Manifest) -> dict[str, str]:
    """The values of ``[image] tags`` fields for one artifact.

    ``week`` is the ISO week and ``isoyear`` the ISO year it belongs to (2024-12-30 is in
    week 1 of 2025). ``major``/``minor``/``patch`` are present only for a release version.
    """
    day = build_day(manifest)
    iso = day.isocalendar()
    fields = {
        "version": manifest.version,
        "variant": manifest.variant,
        "stack": manifest.stack,
        "yyyy": f"{day.year:04d}",
        "mm": f"{day.month:02d}",
        "dd": f"{day.day:02d}",
        "isoyear": f"{iso[0]:04d}",
        "week": f"{iso[1]:02d}",
        "git": (manifest.git_commit or "unknown")[:12],
    }
    release = release_numbers(manifest.version)
    if release is not None:
        fields.update(zip(RELEASE_FIELDS, (str(n) for n in release), strict=True))
    return fields


def _version_date(version: str) -> date | None:
    match = re.match(r"^(\d{4})[.-](\d{2})[.-](\d{2})", version)
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def render_tags(templates: Sequence[str], manifest: Manifest) -> tuple[str, ...]:
    """``["{version}", "latest", "w_{isoyear}_{week}"]`` -> concrete tags, in order, without repeats.

    A template naming a field this artifact has not (``r{major}_{minor}_{patch}`` for a
    date version) makes no tag.
    """
    fields = tag_fields(manifest)
    tags: list[str] = []
    for template in templates:
        missing = [name for name in re.findall(r"{([a-z]+)}", template) if name not in fields]
        if missing:
            log.debug(f"tag {template!r}: no {{{missing[0]}}} for version {manifest.version}, no such tag")
            continue
        tag = re.sub(r"{([a-z]+)}", lambda m: fields[m.group(1)], template)
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:128]
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def image_labels(manifest: Manifest, settings: ImageSettings, source: str, base: str) -> dict[str, str]:
    """OCI and swstack labels; the stack file's own ``[image] labels`` win."""
    labels = {
        "org.opencontainers.image.title": manifest.stack_id,
        "org.opencontainers.image.version": manifest.version,
        "org.opencontainers.image.created": manifest.build_time,
        "org.opencontainers.image.revision": manifest.git_commit,
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.base.name": base,
        "io.swstack.stack": manifest.stack,
        "io.swstack.variant": manifest.variant,
        "io.swstack.prefix": manifest.prefix,
        "io.swstack.lockfile-sha256": manifest.lockfile_sha256,
        "io.swstack.stackfile-sha256": manifest.stackfile_sha256,
        "io.swstack.kernels": ",".join(manifest.kernels),
    }
    labels.update(settings.labels)
    return labels


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def command_lookup(command: Sequence[str], index: TreeIndex, prefix: str, base: BaseImage) -> tuple[str, ...]:
    """Where the image's command could be, as paths in the base image (pure): () when the stack's own
    tree has it; a path under the prefix that the tree lacks is an ``ImageError`` at once.

    A container whose command is missing exits at once, so every spawn of that image fails.
    """
    if not command:
        return ()
    program, prefix = command[0], prefix.rstrip("/")
    tree = {e.path for e in index.entries if e.kind != "dir"}
    if program.startswith(prefix + "/"):
        if program[len(prefix) + 1 :] in tree:
            return ()
        raise ImageError(f"[image] command {program!r}: the stack's tree has no such file")
    if "/" in program:
        return ()  # the base's own path: not looked up (its directories may be links, /bin -> usr/bin)
    if f"bin/{program}" in tree:
        return ()
    env = dict(item.split("=", 1) for item in _config_of(base.config).get("Env") or () if "=" in item)
    dirs = env.get("PATH", _DEFAULT_PATH).split(":")
    return tuple(f"{d.strip('/')}/{program}" for d in dirs if d.startswith("/"))


def image_env(
    base_env: Sequence[str], prefix: str, user: str, home: str, uid: int, *, stack: str = "", version: str = ""
) -> tuple[str, ...]:
    """The base's environment with the stack's prefix first on PATH and its kernels on JUPYTER_PATH.

    ``SWSTACK_STACK`` and ``SWSTACK_VERSION`` tell a notebook which build it runs in.
    """
    env = dict(item.split("=", 1) for item in base_env if "=" in item)
    base_path = env.get("PATH", _DEFAULT_PATH)
    env.update(
        {
            "PATH": f"{prefix}/bin:{base_path}",
            "JUPYTER_PATH": f"{prefix}/share/jupyter",
            "CONDA_PREFIX": prefix,
            "LANG": env.get("LANG", "C.UTF-8"),
            "HOME": home,
            "SHELL": "/bin/bash",
            "NB_USER": user,
            "NB_UID": str(uid),
        }
    )
    if stack:
        env["SWSTACK_STACK"] = stack
    if version:
        env["SWSTACK_VERSION"] = version
    return tuple(f"{k}={v}" for k, v in env.items())


def plan_image(
    stack: Stack,
    site: Site,
    manifest: Manifest,
    index: TreeIndex,
    base: BaseImage,
    *,
    source: str = "",
) -> ImagePlan:
    settings = stack.image
    home = f"/home/{settings.user}"
    layers = plan_layers(manifest, index.entries, index.files, settings.max_layers)
    return ImagePlan(
        repository=image_repository(stack, site),
        tags=render_tags(settings.tags, manifest),
        labels=image_labels(manifest, settings, source, settings.base),
        env=image_env(
            _config_of(base.config).get("Env") or (),
            manifest.prefix,
            settings.user,
            home,
            settings.uid,
            stack=manifest.stack_id,
            version=manifest.version,
        ),
        user=f"{settings.uid}:{settings.uid}",
        user_name=settings.user,
        uid=settings.uid,
        home=home,
        command=settings.command,
        prefix=manifest.prefix,
        layers=layers,
    )


def _config_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = config.get("config")
    return inner if isinstance(inner, Mapping) else {}


def render_config(
    plan: ImagePlan, base: BaseImage, ours: Sequence[LayerBlob], created: str
) -> dict[str, Any]:
    """The image config: the base's, with our environment, user, command, labels and layers."""
    base_inner = dict(_config_of(base.config))
    inner = {
        **base_inner,
        "Env": list(plan.env),
        "User": plan.user,
        "WorkingDir": plan.home,
        "Cmd": list(plan.command),
        "Entrypoint": None,
        "Labels": dict(sorted(plan.labels.items())),
        "ExposedPorts": {"8888/tcp": {}},
    }
    base_rootfs = base.config.get("rootfs") or {}
    history = list(base.config.get("history") or [])
    history += [
        {"created": created, "created_by": f"swstack: layer {layer.name}", "comment": "swstack"}
        for layer in ours
    ]
    return {
        "architecture": base.config.get("architecture", "amd64"),
        "os": base.config.get("os", "linux"),
        "created": created,
        "config": inner,
        "rootfs": {
            "type": "layers",
            "diff_ids": [*(base_rootfs.get("diff_ids") or []), *(layer.diff_id for layer in ours)],
        },
        "history": history,
    }


def render_manifest(
    base: BaseImage, ours: Sequence[LayerBlob], config: bytes, annotations: Mapping[str, str]
) -> bytes:
    """The image manifest (canonical JSON): the base's layers, then ours, all as gzip layers."""
    layers = [Descriptor(LAYER_GZIP, d.digest, d.size) for d in base.layers]
    layers += [Descriptor(LAYER_GZIP, layer.digest, layer.size) for layer in ours]
    return oci.render_manifest(
        config=Descriptor(OCI_CONFIG, digest_of(config), len(config)), layers=layers, annotations=annotations
    )


def add_user(passwd: str, group: str, user: str, uid: int, home: str) -> tuple[str, str]:
    """``/etc/passwd`` and ``/etc/group`` with the notebook user (and its group) appended."""
    names = {line.split(":", 1)[0] for line in passwd.splitlines() if line}
    uids = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 2}
    if user not in names and str(uid) in uids:
        raise ImageError(
            f"[image] uid {uid} is taken in the base image by another user: choose another uid for {user!r}"
        )
    if user not in names:
        passwd = passwd.rstrip("\n") + f"\n{user}:x:{uid}:{uid}::{home}:/bin/bash\n"
    if user not in {line.split(":", 1)[0] for line in group.splitlines() if line}:
        group = group.rstrip("\n") + f"\n{user}:x:{uid}:\n"
    return passwd, group


def load_image_result(path: Path) -> ImageResult:
    """An earlier ``build_image``'s result, from the artifact dir, its ``image/`` or ``image.json``."""
    for candidate in (path / IMAGE_DIR / IMAGE_JSON, path / IMAGE_JSON, path):
        if candidate.is_file():
            try:
                result = ImageResult.load(candidate)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # damaged, or not ours
                raise PushError(f"{candidate}: not an image description `doit image` wrote ({exc}); "
                                "make the image again with `doit image`") from None
            # The layout may have moved with the artifact directory: trust where we found it.
            return replace(result, layout=candidate.parent)
    raise PushError(f"{path}: no image built there (no {IMAGE_DIR}/{IMAGE_JSON}); run doit image first")
