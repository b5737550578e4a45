"""Registry tags -> the spawner menu: DockerSpawner ``allowed_images``, KubeSpawner ``profile_list``.

Input: the images of one repository as the registry lists them (tag, manifest digest,
version, build time). Output: a ``Menu`` (which tags, in which order, which one is the
default, how each is labelled, every image pinned by digest) and its renderings as
JupyterHub configuration files that JupyterHub loads as they are, or as JSON for
``swstack prepull`` and other tools.

``plan_menu`` and the ``render_*`` functions are pure; ``read_registry`` is the only part
with I/O (the registry, through ``oci.RegistryClient``). Standard library only, so a hub
or notebook host needs no build-side package.

The tag forms are the ones ``[image] tags`` renders (see docs/stack-file.md):
``r29_0_0`` release, ``w_2026_47`` weekly, ``d_2026_11_21`` daily, ``exp_<anything>``
experimental. Other tags (``latest``, the bare version) name the same images and are not
listed, so each build appears under the names users know.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import log
from .errors import ImageError, SwstackError
from .oci import (
    CREATED,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    VERSION,
    RegistryClient,
    RetryPolicy,
    is_attachment_tag,
    parse_reference,
)

Kind = Literal["release", "weekly", "daily", "experimental"]
KINDS: tuple[Kind, ...] = ("release", "weekly", "daily", "experimental")
KIND_LABELS: Mapping[Kind, str] = {
    "release": "Release",
    "weekly": "Weekly",
    "daily": "Daily",
    "experimental": "Experimental",
}
_KIND_PATTERNS: Mapping[Kind, re.Pattern[str]] = {
    "release": re.compile(r"r(\d+)(?:_(\d+))?(?:_(\d+))?"),
    "weekly": re.compile(r"w_(\d{4})_(\d{2})"),
    "daily": re.compile(r"d_(\d{4})_(\d{2})_(\d{2})"),
    "experimental": re.compile(r"exp_[A-Za-z0-9_.-]+"),
}
MENU_FORMAT = "swstack-menu/1"
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)


class MenuError(ImageError):
    """The registry holds nothing a menu can offer, or a menu file is unreadable (exit 9)."""


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TaggedImage:
    """One tag of the repository: what the registry says of it."""

    repository: str  # host[:port]/name
    tag: str
    digest: str  # of the image manifest the tag points to
    version: str  # org.opencontainers.image.version ("" when the image does not say)
    created: str  # org.opencontainers.image.created, ISO 8601 ("" when unknown)

    @property
    def pinned(self) -> str:
        """``host/name@sha256:...``: the image itself, whatever the tag points to later."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class MenuPolicy:
    """How many of each kind the menu offers, newest first."""

    releases: int = 1
    weeklies: int = 3
    dailies: int = 3
    experimentals: int = 3

    def limit(self, kind: Kind) -> int:
        return {
            "release": self.releases,
            "weekly": self.weeklies,
            "daily": self.dailies,
            "experimental": self.experimentals,
        }[kind]


@dataclass(frozen=True)
class MenuEntry:
    kind: Kind
    tag: str
    version: str
    day: str  # YYYY-MM-DD of the build, "" when unknown
    image: str  # pinned by digest
    display_name: str
    slug: str  # DNS-label-safe, unique in the menu (KubeSpawner's profile slug)
    default: bool = False


@dataclass(frozen=True)
class Menu:
    repository: str
    entries: tuple[MenuEntry, ...] = field(default_factory=tuple)

    @property
    def default(self) -> MenuEntry:
        return next(e for e in self.entries if e.default)

    def images(self) -> tuple[str, ...]:
        """The pinned images, default first, each once (two tags may name one image)."""
        return tuple(dict.fromkeys(e.image for e in self.entries))

    def to_json(self) -> str:
        data = {"format": MENU_FORMAT, "repository": self.repository, "entries": [asdict(e) for e in self.entries]}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> Menu:
        """The menu ``to_json`` wrote; anything else (not JSON, not UTF-8, another shape) is a ``MenuError``."""
        try:
            data = json.loads(text)
            if data.get("format") != MENU_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {MENU_FORMAT!r}")
            entries = tuple(MenuEntry(**entry) for entry in data["entries"])
            menu = cls(str(data["repository"]), entries)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MenuError(
                f"{source}: not a menu file ({exc}); render one with `swstack hub-config REPOSITORY --format json`"
            ) from None
        if sum(e.default for e in menu.entries) != 1:
            raise MenuError(f"{source}: a menu has exactly one default entry; render it again")
        return menu


# ----------------------------------------------------------------------------- planning (pure)


def tag_kind(tag: str) -> Kind | None:
    """``r29_0_0`` release, ``w_2026_47`` weekly, ``d_2026_11_21`` daily, ``exp_x`` experimental."""
    for kind in KINDS:
        if match := _KIND_PATTERNS[kind].fullmatch(tag):
            return kind if kind not in ("weekly", "daily") or _is_date(kind, match.groups()) else None
    return None


def _is_date(kind: Kind, numbers: Sequence[str]) -> bool:
    """``w_2026_99`` or ``d_2026_13_45`` names no week or day: as text it would sort newest and lead its kind."""
    year, second, *rest = (int(n) for n in numbers)
    try:
        if kind == "weekly":
            datetime.date.fromisocalendar(year, second, 1)
        else:
            datetime.date(year, second, rest[0])
    except ValueError:
        return False
    return True


def _newest_first_key(kind: Kind, image: TaggedImage) -> tuple[Any, ...]:
    if kind == "release":
        match = _KIND_PATTERNS["release"].fullmatch(image.tag)
        assert match is not None
        return tuple(int(n or 0) for n in match.groups())
    if kind == "experimental":
        return (image.created, image.tag)
    return (image.tag,)  # zero-padded dates and weeks sort as text


def entry_label(kind: Kind, image: TaggedImage) -> str:
    """``Weekly w_2026_47 (2026.11.21, built 2026-11-21)``: the tag users know, then what it is."""
    details = [image.version or "version unknown"]
    if image.created:
        details.append(f"built {image.created[:10]}")
    return f"{KIND_LABELS[kind]} {image.tag} ({', '.join(details)})"


def _slug(tag: str, taken: set[str] | None = None) -> str:
    """A DNS label from ``tag``; one already ``taken`` (``exp_A`` and ``exp_a``, ``exp_a.b`` and
    ``exp_a_b``, two long tags cut at 63) gets a suffix from the tag's hash, so it stays unique:
    KubeSpawner starts the first profile whose slug matches, whichever the user picked."""
    slug = re.sub(r"[^a-z0-9-]+", "-", tag.lower()).strip("-")[:63].strip("-") or "image"
    if taken is not None and slug in taken:
        slug = f"{slug[:54].rstrip('-')}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}"
    return slug


def plan_menu(
    images: Sequence[TaggedImage], policy: MenuPolicy | None = None, *, repository: str | None = None
) -> Menu:
    """The menu: newest release first (the default), then the newest weeklies, dailies, experimentals.

    Without a release the newest weekly is the default, then the newest daily, then the
    newest experimental image. Raises ``MenuError`` when no tag has a menu form, naming
    ``repository`` (the one read) when ``images`` is empty.
    """
    policy = policy or MenuPolicy()
    repositories = {image.repository for image in images}
    if len(repositories) > 1:
        raise MenuError(f"one menu is one repository; got {', '.join(sorted(repositories))}")
    by_kind: dict[Kind, list[TaggedImage]] = {kind: [] for kind in KINDS}
    for image in images:
        kind = tag_kind(image.tag)
        if kind is not None:
            by_kind[kind].append(image)
    entries: list[MenuEntry] = []
    slugs: set[str] = set()
    for kind in KINDS:
        chosen = sorted(by_kind[kind], key=functools.partial(_newest_first_key, kind), reverse=True)
        for image in chosen[: max(0, policy.limit(kind))]:
            slugs.add(slug := _slug(image.tag, slugs))
            entries.append(
                MenuEntry(
                    kind=kind,
                    tag=image.tag,
                    version=image.version,
                    day=image.created[:10],
                    image=image.pinned,
                    display_name=entry_label(kind, image),
                    slug=slug,
                )
            )
    if not entries:
        where = next(iter(repositories), repository or "the repository")
        raise MenuError(
            f"{where}: no release (r29_0_0), weekly (w_2026_47), daily (d_2026_11_21) or experimental "
            "(exp_...) tag; push images with those [image] tags (docs/stack-file.md) or widen the policy"
        )
    # The first entry is the default: a release when there is one (KINDS is in that order).
    entries[0] = MenuEntry(**{**asdict(entries[0]), "default": True})
    return Menu(repository=next(iter(repositories)), entries=tuple(entries))


# ----------------------------------------------------------------------------- rendering (pure)


def _py(value: Any, depth: int = 0) -> str:
    """A Python literal of JSON-like data, one item a line, keys in order (readable in a diff)."""
    pad, inner = "    " * depth, "    " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_py(v, depth + 1)},\n" for k, v in value.items()]
        return "{\n" + "".join(items) + pad + "}" if items else "{}"
    if isinstance(value, list | tuple):
        items = [f"{inner}{_py(v, depth + 1)},\n" for v in value]
        return "[\n" + "".join(items) + pad + "]" if items else "[]"
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a Python string literal


def _header(menu: Menu, spawner: str) -> str:
    return (
        f"# {spawner} menu of {menu.repository}, rendered by `swstack hub-config`: do not edit,\n"
        "# render it again when the registry's tags move. Each image is pinned by digest.\n"
        "# Load it from jupyterhub_config.py with load_subconfig(<this file>), or pass it with -f.\n"
        "c = get_config()  # noqa: F821\n"
    )


def render_dockerspawner(menu: Menu) -> str:
    """``c.DockerSpawner.allowed_images``: label -> pinned image, default first (the form's first option).

    DockerSpawner 14 pulls by splitting the reference at its last ':', which breaks a
    reference pinned by digest: the images must be on the host already (``swstack prepull``),
    so a missing one fails the spawn with the image named instead of starting another image.
    """
    allowed = {entry.display_name: entry.image for entry in menu.entries}
    return (
        _header(menu, "DockerSpawner")
        + "# The images are put on the host by `swstack prepull` (DockerSpawner can not pull by digest).\n"
        + f"c.DockerSpawner.allowed_images = {_py(allowed)}\n"
        + f"c.DockerSpawner.image = {json.dumps(menu.default.image)}\n"
        + 'c.DockerSpawner.pull_policy = "never"\n'
    )


def kube_profiles(menu: Menu) -> list[dict[str, Any]]:
    """KubeSpawner ``profile_list`` entries: one per menu entry, the default marked."""
    profiles: list[dict[str, Any]] = []
    for entry in menu.entries:
        profile: dict[str, Any] = {
            "display_name": entry.display_name,
            "slug": entry.slug,
            "description": f"{entry.image}",
            "kubespawner_override": {"image": entry.image, "image_pull_policy": "IfNotPresent"},
        }
        if entry.default:
            profile["default"] = True
        profiles.append(profile)
    return profiles


def render_kubespawner(menu: Menu) -> str:
    """``c.KubeSpawner.profile_list``; Kubernetes pulls by digest itself."""
    return _header(menu, "KubeSpawner") + f"c.KubeSpawner.profile_list = {_py(kube_profiles(menu))}\n"


# ----------------------------------------------------------------------------- the registry (I/O)


def read_registry(
    repository: str, *, retry: RetryPolicy | None = None, error: type[SwstackError] | None = None
) -> list[TaggedImage]:
    """Every tag of ``repository`` that has a menu form, with its digest, version and build time.

    Tags of other forms are not fetched. Version and time come from the manifest's
    annotations (``build_image`` writes them), else from the image config's labels.
    Manifests that are no single image (an index, a stack artifact) are left out.
    """
    error = error or MenuError
    ref = parse_reference(repository, default_tag=None, error=error)
    if ref.tag or ref.digest:
        raise error(f"{repository!r}: name a repository (host/name), not one tag or digest")
    client = RegistryClient(ref.registry, retry=retry, error=error)
    name = f"{ref.registry}/{ref.repository}"
    found: list[TaggedImage] = []
    configs: dict[str, Mapping[str, str]] = {}
    tags = client.list_tags(ref.repository)
    if not tags:  # the registry answers 404 for a repository it does not know: no tags either way
        raise error(
            f"{name}: the registry has no tags in this repository; check its name (docs/image.md), "
            "or push the stack's images first (doit push)"
        )
    for tag in sorted(tags):
        if tag_kind(tag) is None:
            continue
        doc = client.get_manifest(ref.repository, tag)
        manifest = doc.json()
        if doc.media_type not in IMAGE_MANIFESTS or manifest.get("artifactType"):
            log.debug(f"{name}:{tag}: {doc.media_type} is no single image, left out of the menu")
            continue
        annotations = manifest.get("annotations") or {}
        version, created = str(annotations.get(VERSION, "")), str(annotations.get(CREATED, ""))
        if not version or not created:
            descriptor = manifest.get("config") or {}
            config = str(descriptor.get("digest", ""))
            if config not in configs:
                size = descriptor.get("size")
                size = size if isinstance(size, int) and not isinstance(size, bool) else None
                configs[config] = _config_labels(client, ref.repository, config, size)
            version = version or configs[config].get(VERSION, "")
            created = created or configs[config].get(CREATED, "")
        found.append(TaggedImage(name, tag, doc.digest, version, created))
    own = [tag for tag in tags if not is_attachment_tag(tag)]  # signatures and referrers are no artifact
    if not found and own:
        _refuse_an_artifact_repository(client, ref.repository, name, max(own), error)
    return found


def _refuse_an_artifact_repository(
    client: RegistryClient, repository: str, name: str, tag: str, error: type[SwstackError]
) -> None:
    """A repository of published stack artifacts (``doit publish``: ``<registry>/<stack>``) has no
    image to offer; say where the images are rather than that its tags have no menu form."""
    from .artifact import ARTIFACT_TYPE

    if client.get_manifest(repository, tag).json().get("artifactType") == ARTIFACT_TYPE:
        raise error(
            f"{name}: holds the stack's published artifacts (doit publish, for swstack activate), not its "
            f"images; give the repository the images are pushed to, the stack's [image] repository "
            f"(<registry>/swstack/<stack> by default, docs/image.md)"
        )


def _config_labels(client: RegistryClient, repository: str, digest: str, size: int | None) -> Mapping[str, str]:
    """The image config's labels; its size (from the manifest) keeps a small download from
    printing a progress line per image."""
    with tempfile.TemporaryDirectory(prefix="swstack-config-") as tmp:
        path = Path(tmp) / "config.json"
        client.pull_blob(repository, digest, path, size)
        try:
            labels = (json.loads(path.read_bytes()).get("config") or {}).get("Labels") or {}
        except (ValueError, AttributeError):
            return {}
    return {str(k): str(v) for k, v in labels.items()}


def load_menu(source: str, policy: MenuPolicy | None = None, *, retry: RetryPolicy | None = None) -> Menu:
    """A menu from a file ``hub-config --format json`` wrote, or planned from a repository's tags."""
    path = Path(source)
    if path.is_file():
        return Menu.from_json(path.read_bytes(), source)  # bytes: one that is not UTF-8 is a MenuError too
    if source.endswith(".json") or path.is_dir():  # meant as a menu file: a registry-reference error would mislead
        raise MenuError(
            f"{source}: no such menu file; render one with `swstack hub-config REPOSITORY --format json -o {source}`"
        )
    name = parse_reference(source, default_tag=None, error=MenuError)
    return plan_menu(read_registry(source, retry=retry), policy, repository=f"{name.registry}/{name.repository}")


__all__ = [
    "Menu",
    "MenuEntry",
    "MenuError",
    "MenuPolicy",
    "TaggedImage",
    "kube_profiles",
    "load_menu",
    "plan_menu",
    "read_registry",
    "render_dockerspawner",
    "render_kubespawner",
    "tag_kind",
]
