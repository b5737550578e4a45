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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from . import log, paths, proc
from .engine import Engine
from .errors import ImageError, PushError, SwstackError
from .fsutil import atomic_dir, atomic_write_text
from .layers import Layer, TreeEntry, ancestors, layer_of, normalise_path, plan_layers
from .manifest import Manifest
from .oci import (
    CREATED,
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    VERSION,
    Descriptor,
    RegistryClient,
    RetryPolicy,
    canonical_json,
    digest_of,
    parse_reference,
)
from .site import Site
from .spec import ImageSettings, Stack

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPES_GZIP = (LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip")
IMAGE_DIR = "image"
IMAGE_JSON = "image.json"
GZIP_LEVEL = 6  # what docker itself uses; zstd layers need engines newer than Debian 12's
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
REF_NAME = "org.opencontainers.image.ref.name"
_READ = 1 << 20

# ----------------------------------------------------------------------------- planning (pure)


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
    return (
        _version_date(manifest.version)
        or datetime.fromisoformat(manifest.build_time.replace("Z", "+00:00")).date()
    )


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


def image_env(
    base_env: Sequence[str], prefix: str, user: str, home: str, uid: int, *, stack: str = "", version: str = ""
) -> tuple[str, ...]:
    """The base's environment with the stack's prefix first on PATH and its kernels on JUPYTER_PATH.

    ``SWSTACK_STACK`` and ``SWSTACK_VERSION`` tell a notebook which build it runs in.
    """
    env = dict(item.split("=", 1) for item in base_env if "=" in item)
    base_path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
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
) -> dict[str, Any]:
    layers = [Descriptor(LAYER_GZIP, d.digest, d.size).to_json() for d in base.layers]
    layers += [Descriptor(LAYER_GZIP, layer.digest, layer.size).to_json() for layer in ours]
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor(OCI_CONFIG, digest_of(config), len(config)).to_json(),
        "layers": layers,
        "annotations": dict(annotations),
    }


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


# ----------------------------------------------------------------------------- reading the tarball


def open_tarball(path: Path) -> contextlib.AbstractContextManager[tarfile.TarFile]:
    """The artifact tarball as a streamed tar (zstd or gzip)."""

    @contextlib.contextmanager
    def opened() -> Iterator[tarfile.TarFile]:
        with open(path, "rb") as raw:
            if path.name.endswith(".zst"):
                reader: Any = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            else:
                reader = gzip.GzipFile(fileobj=raw, mode="rb")
            with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
                yield tar

    return opened()


def member_path(name: str) -> str:
    return normalise_path(name)


def index_tarball(path: Path, manifest: Manifest) -> TreeIndex:
    """Members of the tarball and each package's files (conda-meta JSON, pip RECORD)."""
    entries: list[TreeEntry] = []
    files: dict[str, list[str]] = {}
    pip_names = {_norm(p.name): p.name for p in manifest.packages if p.manager == "pip"}
    try:
        with open_tarball(path) as tar:
            for member in tar:
                rel = member_path(member.name)
                if not rel:
                    continue
                kind = "dir" if member.isdir() else "symlink" if member.issym() else "file"
                if kind == "file" and not member.isfile():
                    raise ImageError(f"{path}: {rel} is neither a file, a directory nor a symlink")
                entries.append(TreeEntry(rel, kind, member.size if kind == "file" else 0))  # type: ignore[arg-type]
                if kind != "file":
                    continue
                if re.fullmatch(r"conda-meta/[^/]+\.json", rel) and rel != "conda-meta/swstack-manifest.json":
                    _read_conda_record(tar, member, rel, files)
                elif rel.endswith(".dist-info/RECORD"):
                    _read_record(tar, member, rel, pip_names, files)
    except (OSError, tarfile.TarError, zstandard.ZstdError) as exc:
        raise ImageError(f"{path}: cannot read the artifact tarball ({exc}); pack it again") from exc
    return TreeIndex(tuple(entries), {k: tuple(v) for k, v in files.items()})


def _read_conda_record(
    tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str, files: dict[str, list[str]]
) -> None:
    handle = tar.extractfile(member)
    if handle is None:
        return
    try:
        record = json.loads(handle.read())
    except ValueError:
        return
    name = record.get("name")
    if isinstance(name, str):
        files.setdefault(name, []).extend([*(str(f) for f in record.get("files") or ()), rel])


def _read_record(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: str,
    pip_names: Mapping[str, str],
    files: dict[str, list[str]],
) -> None:
    dist_info = rel.rsplit("/", 1)[0]
    name = pip_names.get(_norm(dist_info.rsplit("/", 1)[-1].split("-", 1)[0]))
    handle = tar.extractfile(member)
    if name is None or handle is None:
        return
    site_packages = dist_info.rsplit("/", 1)[0]
    owned = files.setdefault(name, [])
    for line in handle.read().decode(errors="replace").splitlines():
        record_path = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
        if record_path:
            owned.append(normalise_path(f"{site_packages}/{record_path}"))
    owned.append(rel)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------- writing layers


class _HashWriter:
    """A write-only file that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO | _HashWriter | gzip.GzipFile | None) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        return None

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class LayerWriter:
    """One layer being written: tar -> (diff_id hash) -> gzip -> (digest hash) -> file."""

    def __init__(self, path: Path, level: int = GZIP_LEVEL) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._compressed = _HashWriter(self._file)
        # No file name and mtime 0 in the gzip header: the blob depends on the content only.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._compressed, compresslevel=level, mtime=0
        )
        self._plain = _HashWriter(self._gzip)
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=self._plain, mode="w|", format=tarfile.PAX_FORMAT  # type: ignore[call-overload]
        )
        self._dirs: set[str] = set()

    def add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        if info.isdir():
            if info.name in self._dirs:
                return
            self._dirs.add(info.name)
        self._tar.addfile(info, data)

    def has_dir(self, name: str) -> bool:
        return name in self._dirs

    def close(self) -> tuple[str, str, int]:
        """Finish the blob; return (digest, diff_id, size)."""
        self._tar.close()
        self._gzip.close()
        self._file.close()
        return self._compressed.digest, self._plain.digest, self._compressed.size

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


def normalised_info(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """A header with the tarball's metadata and nothing that varies between machines."""
    info = tarfile.TarInfo(name)
    info.type = member.type
    info.mode = member.mode
    info.mtime = int(member.mtime)
    info.size = member.size if member.isfile() else 0
    info.linkname = member.linkname
    info.uid, info.gid = member.uid, member.gid
    info.uname = info.gname = ""
    return info


def dir_info(name: str, epoch: int, uid: int = 0, gid: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode, info.mtime, info.uid, info.gid = mode, epoch, uid, gid
    info.uname = info.gname = ""
    return info


def file_info(name: str, size: int, epoch: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, epoch
    info.uname = info.gname = ""
    return info


def write_env_layers(
    tarball: Path, layers: Sequence[Layer], prefix: str, epoch: int, blobs: Path, level: int = GZIP_LEVEL
) -> list[LayerBlob]:
    """Stream the tarball once, sending each member to its planned layer's tar under ``prefix``."""
    where = layer_of(layers)
    root = prefix.strip("/")
    prefix_dirs = [*ancestors(root), root]
    tmp = [blobs / f".layer-{i}.partial" for i in range(len(layers))]
    writers = [LayerWriter(path, level) for path in tmp]
    dirs: dict[str, tarfile.TarInfo] = {d: dir_info(d, epoch) for d in prefix_dirs}
    try:
        with open_tarball(tarball) as tar, log.progress("image layers", total=None, unit="files") as bar:
            for member in tar:
                rel = member_path(member.name)
                target = f"{root}/{rel}" if rel else root
                if member.isdir():
                    dirs[target] = normalised_info(member, target)
                if rel not in where:
                    continue  # a directory some file needs: written with that file
                writer = writers[where[rel]]
                for parent in [*prefix_dirs, *(f"{root}/{a}" for a in ancestors(rel))]:
                    if not writer.has_dir(parent):
                        writer.add(dirs.get(parent) or dir_info(parent, epoch))
                info = normalised_info(member, target)
                writer.add(info, tar.extractfile(member) if member.isfile() else None)
                bar.advance()
        results = []
        for layer, writer, path in zip(layers, writers, tmp, strict=True):
            digest, diff_id, size = writer.close()
            os.replace(path, blobs / digest.removeprefix("sha256:"))
            results.append(LayerBlob(layer.name, digest, diff_id, size))
        return results
    except BaseException:
        for writer, path in zip(writers, tmp, strict=True):
            writer.abort()
            path.unlink(missing_ok=True)
        raise


def write_user_layer(passwd: str, group: str, plan: ImagePlan, epoch: int, blobs: Path) -> LayerBlob:
    """``/etc/passwd``, ``/etc/group`` and the home directory of the notebook user."""
    path = blobs / ".layer-user.partial"
    writer = LayerWriter(path)
    try:
        writer.add(dir_info("etc", epoch))
        for name, text in (("etc/group", group), ("etc/passwd", passwd)):
            data = text.encode()
            writer.add(file_info(name, len(data), epoch), io.BytesIO(data))
        writer.add(dir_info("home", epoch))
        writer.add(dir_info(plan.home.strip("/"), epoch, plan.uid, plan.uid, 0o750))
        digest, diff_id, size = writer.close()
    except BaseException:
        writer.abort()
        path.unlink(missing_ok=True)
        raise
    os.replace(path, blobs / digest.removeprefix("sha256:"))
    return LayerBlob("user", digest, diff_id, size)


# ----------------------------------------------------------------------------- the base image


def resolve_base(ref: str, *, retry: RetryPolicy | None = None) -> BaseImage:
    """The base image's manifest and config from its registry (a multi-platform index: linux/amd64)."""
    reference = parse_reference(ref, error=ImageError)
    client = RegistryClient(reference.registry, retry=retry, error=ImageError)
    doc = client.get_manifest(reference.repository, reference.reference)
    if doc.media_type in (OCI_INDEX, DOCKER_LIST):
        doc = client.get_manifest(reference.repository, _amd64_entry(doc.json(), ref))
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


def _amd64_entry(index: Mapping[str, Any], ref: str) -> str:
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") == "amd64":
            return str(entry["digest"])
    raise ImageError(f"base image {ref}: the index has no linux/amd64 image")


def base_blob(client: RegistryClient, repository: str, desc: Descriptor) -> Path:
    """A blob of the base image, downloaded once into the shared cache (content-addressed)."""
    path = paths.cache_dir() / "image-blobs" / desc.digest.removeprefix("sha256:")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        client.pull_blob(repository, desc.digest, path, desc.size)
    return path


def base_file(base: BaseImage, name: str, *, retry: RetryPolicy | None = None) -> str:
    """A text file of the base image's tree (the top-most layer that has it), e.g. ``etc/passwd``."""
    client = RegistryClient(base.registry, retry=retry, error=ImageError)
    for desc in reversed(base.layers):
        path = base_blob(client, base.repository, desc)
        with gzip.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if normalise_path(member.name) == name and member.isfile():
                    handle = tar.extractfile(member)
                    return handle.read().decode() if handle else ""
    return ""


# ----------------------------------------------------------------------------- build


def find_tarball(artifact_dir: Path, manifest: Manifest) -> Path:
    if manifest.tarball is not None and (artifact_dir / manifest.tarball.name).is_file():
        return artifact_dir / manifest.tarball.name
    found = sorted(artifact_dir.glob("*.tar.zst")) + sorted(artifact_dir.glob("*.tar.gz"))
    if not found:
        raise ImageError(
            f"{artifact_dir}: no tarball beside manifest.json; build the stack first (doit build)"
        )
    return found[0]


def load_artifact(artifact_dir: Path) -> Manifest:
    path = artifact_dir / "manifest.json"
    if not path.is_file():
        raise ImageError(f"{artifact_dir}: no manifest.json, so no complete artifact: build the stack first")
    try:
        return Manifest.load(path)
    except (ValueError, TypeError, KeyError) as exc:
        raise ImageError(f"{path}: unreadable artifact manifest ({exc}); build the stack again") from exc


def project_source(project: Path) -> str:
    """The ``source`` label: the checkout's origin URL when git knows one (credentials removed)."""
    try:
        url = proc.output(
            ["git", "-C", str(project), "remote", "get-url", "origin"], what="git remote"
        ).strip()
    except SwstackError:
        return ""
    return re.sub(r"(://)[^/@]+@", r"\1", url)


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
    manifest = load_artifact(artifact_dir)
    tarball = find_tarball(artifact_dir, manifest)
    base_ref = site.image_ref(stack.image.base)
    log.step(f"image of {manifest.stack_id} {manifest.version} on {base_ref}")
    base = resolve_base(base_ref, retry=retry)
    index = index_tarball(tarball, manifest)
    plan = plan_image(stack, site, manifest, index, base, source=project_source(project))
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
        image_manifest = canonical_json(render_manifest(base, ours, config, annotations))
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


def write_layout(root: Path, digest: str, size: int, tags: Sequence[str]) -> None:
    """``oci-layout`` and ``index.json``: the layout other tools (skopeo, crane) read."""
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}
        for tag in tags
    ]
    (root / "index.json").write_bytes(
        canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    )


def load_image_result(path: Path) -> ImageResult:
    """An earlier ``build_image``'s result, from the artifact dir, its ``image/`` or ``image.json``."""
    for candidate in (path / IMAGE_DIR / IMAGE_JSON, path / IMAGE_JSON, path):
        if candidate.is_file():
            result = ImageResult.load(candidate)
            # The layout may have moved with the artifact directory: trust where we found it.
            return replace(result, layout=candidate.parent)
    raise PushError(f"{path}: no image built there (no {IMAGE_DIR}/{IMAGE_JSON}); run doit image first")


# ----------------------------------------------------------------------------- push


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
    manifest last and once per tag, so a failed push never moves a tag."""
    result = image if isinstance(image, ImageResult) else load_image_result(image)
    target = parse_reference(repository or result.repository, default_tag=None, error=PushError)
    client = RegistryClient(target.registry, retry=retry, error=PushError)
    if chunk_size:
        client.chunk_size = chunk_size
    repo = target.repository
    blobs = result.layout / "blobs" / "sha256"
    base = parse_reference(result.base_repository, default_tag=None, error=PushError)
    base_client = RegistryClient(base.registry, retry=retry, error=PushError)
    sizes: dict[str, int] = {layer.digest: layer.size for layer in result.layers}
    log.step(f"pushing {target.registry}/{repo} ({len(result.layers)} layers)")
    config = (blobs / result.config_digest.removeprefix("sha256:")).read_bytes()
    sizes[result.config_digest] = len(config)
    try:
        _push_layers(client, repo, result, base_client, base.repository)
        client.push_blob(repo, config, result.config_digest, len(config))
    except PushError as exc:
        # Blobs go first and the manifest last: a failure here leaves every tag where it was.
        stopped = f"the push stopped before the image manifest: no tag of {repo} moved"
        raise PushError(f"{exc}\n{stopped}") from None
    manifest_bytes = (blobs / result.digest.removeprefix("sha256:")).read_bytes()
    chosen = tuple(tags) if tags is not None else result.tags
    client.put_manifest(repo, result.digest, manifest_bytes, OCI_MANIFEST)
    for tag in chosen:
        client.put_manifest(repo, tag, manifest_bytes, OCI_MANIFEST)
    uploaded = tuple(dict.fromkeys(client.uploaded))
    pushed = PushResult(
        repository=f"{target.registry}/{repo}",
        digest=result.digest,
        tags=chosen,
        uploaded=uploaded,
        skipped=tuple(dict.fromkeys(client.skipped)),
        bytes_uploaded=sum(sizes.get(d, 0) for d in uploaded) + len(manifest_bytes),
        bytes_total=sum(sizes.values()) + len(manifest_bytes),
    )
    log.info(
        f"pushed {pushed.ref()} as {', '.join(chosen) or '(no tag)'}: "
        f"sent {log.human_bytes(pushed.bytes_uploaded)} of {log.human_bytes(pushed.bytes_total)} "
        f"({len(uploaded)} blobs; {len(pushed.skipped)} already there)"
    )
    return pushed


def _push_layers(
    client: RegistryClient, repo: str, result: ImageResult, base_client: RegistryClient, base_repo: str
) -> None:
    """Every layer the registry lacks; base layers are fetched from the base's registry first."""
    blobs = result.layout / "blobs" / "sha256"
    for layer in result.layers:
        if layer.base:
            if client.blob_exists(repo, layer.digest, push=True):
                client.skipped.append(layer.digest)
                continue
            source = base_blob(base_client, base_repo, Descriptor(LAYER_GZIP, layer.digest, layer.size))
        else:
            source = blobs / layer.digest.removeprefix("sha256:")
        client.push_blob(repo, source, layer.digest, layer.size)


# ----------------------------------------------------------------------------- list


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


__all__ = [
    "BaseImage",
    "ImagePlan",
    "ImageResult",
    "LayerBlob",
    "PushResult",
    "add_user",
    "build_image",
    "image_env",
    "image_labels",
    "image_repository",
    "index_tarball",
    "list_images",
    "load_image_result",
    "plan_image",
    "push_image",
    "render_config",
    "render_manifest",
    "build_day",
    "release_numbers",
    "render_tags",
    "tag_fields",
]


def mirror_base(stack: Stack, site: Site, engine: Engine | None = None) -> str | None:
    """Put the debootstrapped Debian where the site mirrors the stack's base image.

    A site whose image mirror maps the stack's base into its own registry (the offline
    site) gets our Debian base pushed there, as production sites keep their bases in their
    registry. Returns the pushed reference, or None when the site pulls the base as named.
    """
    from .baseimage import ensure_base, load_base_spec
    from .engine import DockerEngine

    target = site.image_ref(stack.image.base)
    if target == stack.image.base or site.registry is None or not target.startswith(site.registry + "/"):
        return None
    engine = engine or DockerEngine()
    local = ensure_base(engine, load_base_spec(mirror=site.debian_mirror, suite=site.debian_suite))
    engine.tag_image(local, target)
    engine.push_image(target)
    return target


def registry_answers(site: Site) -> bool:
    """Whether the site's registry answers now (one quick try, no retries)."""
    from .oci import RegistryClient, RetryPolicy

    if not site.registry:
        return False
    try:
        RegistryClient(site.registry, retry=RetryPolicy(attempts=1), timeout=5).ping()
    except SwstackError:
        return False
    return True
