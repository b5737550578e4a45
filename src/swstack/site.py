"""Site settings TOML -> ``Site``: what differs between data centres rather than between stacks.

Registry, artifact directory, channel mirrors, pip index / wheelhouse / git
mirrors, sandbox backend. Chosen by ``SWSTACK_SITE`` or doit's ``site=``; with no site file
the embedded defaults work for a new user. Values may use ``{cache}`` (the shared cache)
and ``{project}`` (the checkout); relative paths are relative to the site file. The host
root is not a site setting: the host commands take ``--root`` (default /data0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, field_validator

from . import paths
from .errors import SiteError
from .spec import Model, read_toml_model
from .tomlloc import index_lines, line_of

DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org"


class RegistrySettings(Model):
    url: str | None = None  # host[:port][/namespace], e.g. "registry.example.org/jupyter"
    insecure: StrictBool | None = None  # plain http; default: only for 127.0.0.1 / localhost

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or value.endswith("/")):
            raise ValueError(f"registry url {value!r}: write host[:port][/namespace], without a scheme")
        return value


class ChannelSettings(Model):
    alias: str = DEFAULT_CHANNEL_ALIAS
    mirrors: dict[str, str] = Field(default_factory=dict)


class PipSettings(Model):
    index_url: str | None = None
    wheelhouse: str | None = None  # a directory in PEP 503 "simple" layout, or of plain wheels
    git_mirrors: dict[str, str] = Field(default_factory=dict)


class BaseImageSettings(Model):
    debian_mirror: str | None = None  # default: the mirror this machine's apt uses
    suite: str = "bookworm"


class ImageSettings(Model):
    # Base image a stack names -> the reference this site pulls instead. ``{registry}`` in a
    # value is the site's registry, so a test registry on another port needs no second file.
    mirrors: dict[str, str] = Field(default_factory=dict)


class SigningSettings(Model):
    # The site's signing keys (``doit keygen`` makes them): cosign.key/.pub, gnupg/, openpgp.pub.
    keys: str | None = None
    # Where OpenPGP signatures for containers/image's ``signedBy`` go (serve it as the lookaside).
    lookaside: str | None = None


class SiteFile(Model):
    name: str = "default"
    artifacts: str = "{project}/artifacts"
    cache: str | None = None
    sandbox: Literal["auto", "docker", "namespace"] = "auto"
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    channels: ChannelSettings = Field(default_factory=ChannelSettings)
    pip: PipSettings = Field(default_factory=PipSettings)
    base_image: BaseImageSettings = Field(default_factory=BaseImageSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)

@dataclass(frozen=True)
class Site:
    """Resolved site settings: placeholders expanded, paths absolute, channels as URLs."""

    name: str
    source: Path | None
    artifacts: Path
    cache: Path
    sandbox: str
    registry: str | None
    registry_insecure: bool
    channel_alias: str
    mirrors: dict[str, str] = field(default_factory=dict)
    pip_index_url: str | None = None
    pip_wheelhouse: Path | None = None
    git_mirrors: dict[str, str] = field(default_factory=dict)
    debian_mirror: str | None = None
    debian_suite: str = "bookworm"
    image_mirrors: dict[str, str] = field(default_factory=dict)
    signing_keys: Path | None = None
    lookaside: Path | None = None

    def image_ref(self, ref: str) -> str:
        """A base image a stack names -> what this site pulls (its mirror, ``{registry}`` expanded)."""
        target = self.image_mirrors.get(ref, ref)
        if "{registry}" in target:
            if not self.registry:
                raise SiteError(
                    f"image mirror for {ref!r} uses {{registry}}, but the site {self.name!r} names no "
                    "registry: set [registry] url"
                )
            target = target.replace("{registry}", self.registry)
        return target

    def channel_url(self, channel: str) -> str:
        """A stack's channel name or URL -> the URL to solve and download from (mirrors applied)."""
        if channel in self.mirrors:
            return self.mirrors[channel]
        for name, target in self.mirrors.items():
            if channel.rstrip("/") == f"{self.channel_alias}/{name}":
                return target
        if "://" in channel:
            return channel.rstrip("/")
        return f"{self.channel_alias}/{channel}"

    def fetch_url(self, url: str) -> str:
        """A package's canonical URL (as a lockfile names it) -> where this site fetches it.

        The inverse of ``canonical_url``: a mirrored channel's prefix is swapped for the
        mirror's, a named channel's default alias for the site's alias; anything else is
        fetched where it is.
        """
        for name, target in sorted(self.mirrors.items(), key=lambda item: -len(item[0])):
            canonical = canonical_channel(name)
            if url.startswith(canonical + "/"):
                return target + url[len(canonical):]
        if self.channel_alias != DEFAULT_CHANNEL_ALIAS and url.startswith(DEFAULT_CHANNEL_ALIAS + "/"):
            return self.channel_alias + url[len(DEFAULT_CHANNEL_ALIAS):]
        return url

    def canonical_url(self, url: str, channels: tuple[str, ...]) -> str:
        """A package URL the solver gave (through this site's mirrors) -> its channel's own URL."""
        for channel in channels:
            served = self.channel_url(channel)
            if url.startswith(served + "/"):
                return canonical_channel(channel) + url[len(served):]
        return url

    def git_url(self, url: str) -> str:
        """A git dependency's URL -> where this site clones it from (its git mirror, if any)."""
        return self.git_mirrors.get(url, url)

    def canonical_git_url(self, url: str) -> str:
        """The inverse of ``git_url``: a git mirror's URL -> the repository it mirrors."""
        for real, mirror in self.git_mirrors.items():
            if url == mirror or url.startswith(mirror + "@"):
                return real + url[len(mirror):]
        return url

    def pip_file_url(self, name: str, filename: str) -> str | None:
        """Where this site serves a locked pip file by name (wheelhouse), or None (fetch its URL)."""
        if self.pip_wheelhouse is None:
            return None
        return (self.pip_wheelhouse / filename).as_uri()

    def mirror_description(self) -> str:
        """The site's package sources in a few words, for messages."""
        parts = [f"{name} -> {target}" for name, target in sorted(self.mirrors.items())]
        if self.pip_wheelhouse is not None:
            parts.append(f"pip -> {self.pip_wheelhouse}")
        return f"site {self.name!r} ({'; '.join(parts) or 'no mirrors'})"


def canonical_channel(channel: str) -> str:
    """A channel name or URL -> the URL a lockfile names: the channel's own, never a mirror's.

    Named channels are conda's default alias (``conda-forge`` ->
    ``https://conda.anaconda.org/conda-forge``), whatever alias or mirror a site uses.
    """
    if "://" in channel:
        return channel.rstrip("/")
    return f"{DEFAULT_CHANNEL_ALIAS}/{channel}"


def _expand(value: str, base: Path, project: Path, cache: Path) -> str:
    value = value.replace("{cache}", str(cache)).replace("{project}", str(project))
    value = os.path.expanduser(value)
    return value


def _as_path(value: str, base: Path, project: Path, cache: Path) -> Path:
    expanded = Path(_expand(value, base, project, cache))
    return expanded if expanded.is_absolute() else (base / expanded).resolve()


def _as_url(value: str, base: Path, project: Path, cache: Path) -> str:
    """A mirror value: URLs stay as they are, paths become file:// URLs."""
    expanded = _expand(value, base, project, cache)
    if "://" in expanded:
        return expanded.rstrip("/")
    return _as_path(expanded, base, project, cache).as_uri()


def resolve_site(site_file: SiteFile, source: Path | None, project: Path | None = None) -> Site:
    project = (project or paths.project_root()).resolve()
    base = source.parent.resolve() if source else project
    cache = _as_path(site_file.cache, base, project, paths.cache_dir()) if site_file.cache else paths.cache_dir()
    registry = site_file.registry.url
    insecure = site_file.registry.insecure
    if insecure is None:
        host = (registry or "").split("/")[0].split(":")[0]
        insecure = host in ("127.0.0.1", "localhost", "::1")
    return Site(
        name=site_file.name,
        source=source,
        artifacts=_as_path(site_file.artifacts, base, project, cache),
        cache=cache,
        sandbox=site_file.sandbox,
        registry=registry,
        registry_insecure=insecure,
        channel_alias=site_file.channels.alias.rstrip("/"),
        mirrors={k: _as_url(v, base, project, cache) for k, v in site_file.channels.mirrors.items()},
        pip_index_url=site_file.pip.index_url,
        pip_wheelhouse=_as_path(site_file.pip.wheelhouse, base, project, cache) if site_file.pip.wheelhouse else None,
        git_mirrors={k: _as_url(v, base, project, cache) for k, v in site_file.pip.git_mirrors.items()},
        debian_mirror=site_file.base_image.debian_mirror,
        debian_suite=site_file.base_image.suite,
        image_mirrors=dict(site_file.images.mirrors),
        signing_keys=_as_path(site_file.signing.keys, base, project, cache) if site_file.signing.keys else None,
        lookaside=_as_path(site_file.signing.lookaside, base, project, cache) if site_file.signing.lookaside else None,
    )


def load_site(path: str | Path | None = None, project: Path | None = None) -> Site:
    """The site from ``path``, else ``$SWSTACK_SITE``, else the embedded defaults."""
    chosen = path or os.environ.get("SWSTACK_SITE") or None
    if not chosen:
        return resolve_site(SiteFile(), None, project)
    site_path = Path(chosen)
    if not site_path.is_file() and project and (project / site_path).is_file():
        site_path = project / site_path
    site = resolve_site(read_toml_model(site_path, SiteFile, SiteError), site_path, project)
    check_written_directories(site, site_path)
    return site


def check_written_directories(site: Site, site_path: Path) -> None:
    """The cache and the artifacts are directories the build side writes into (each made when
    missing): a path naming a file is the site file's mistake, said here at its line rather
    than by the first task to write there, in a traceback."""
    for key, directory in (("cache", site.cache), ("artifacts", site.artifacts)):
        if directory.exists() and not directory.is_dir():
            # The file is read again only here, for the line: every task loads the site.
            line = line_of(index_lines(site_path.read_text(encoding="utf-8")), (key,))
            where = f"{site_path}:{line}" if line else str(site_path)
            raise SiteError(f"{where}: {key}: {directory} is not a directory; "
                            "name a directory (it is made when missing)")
