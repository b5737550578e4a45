"""Stack TOML files -> typed, frozen models; every error names file, line, key path and fix.

``load_stack_file(path)`` reads a stack file (following ``extends``), validates it and returns
a ``StackFile``; ``StackFile.resolve(variant)`` gives the ``Stack`` a lock or build works from:
the stack's dependencies with that variant's overrides applied. Nothing downstream touches
raw dicts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import manifest, paths
from . import toml as tomllib
from .errors import SpecError
from .tomlloc import KeyPath, decode_error_at, decode_utf8, dotted, index_lines, line_of, path_defined_at

DEFAULT_KERNEL_ARGV = ("{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}")
TAG_FIELDS = (
    "version", "variant", "stack", "yyyy", "mm", "dd", "isoyear", "week", "major", "minor", "patch", "git",
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_OWNER = re.compile(r"^(?:\d+|[a-z_][a-z0-9_-]*)(?::(?:\d+|[a-z_][a-z0-9_-]*))?$")
_TAG = re.compile(r"^[A-Za-z0-9_{}][A-Za-z0-9_.{}-]*$")


M = TypeVar("M", bound=BaseModel)


class Model(BaseModel):
    """Frozen, strict about unknown keys: the base of every stack-file table."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EntryError(ValueError):
    """A problem with one entry of a table (a dependency), so the error points at that key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _check_match_spec(name: str, spec: str) -> str:
    """'numpy', '>=1.26' -> 'numpy >=1.26' (validated by rattler's parser)."""
    import rattler

    text = name if spec.strip() in ("", "*") else f"{name} {spec.strip()}"
    try:
        parsed = rattler.MatchSpec(text)
    except Exception as exc:  # rattler raises its own exception types
        raise EntryError(name, f"invalid conda match spec {text!r}: {exc}") from None
    build = str(parsed.build or "")
    if build[:1] in ("<", ">", "=", "!", "~", ","):
        # "version build": rattler reads ">=1.26 <2" as version >=1.26 of a build named "<2",
        # which no package has (conda refuses the spec).
        joined = build if str(parsed.version) in ("None", "*") else f"{parsed.version},{build}"
        raise EntryError(name, f"invalid conda match spec {text!r}: {build!r} would be its build string; "
                               f"join version constraints with ',' ({joined})")
    return text


def _check_pip_spec(name: str, spec: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    text = name if spec.strip() in ("", "*") else f"{name}{spec.strip()}"
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise EntryError(name, f"invalid pip requirement {text!r}: {reason}") from None
    if canonicalize_name(requirement.name) != canonicalize_name(name):
        # A bare version ("1.0") is no specifier: joined to the name it names another project.
        given = spec.strip()
        example = f"=={given}" if given[:1].isdigit() else ">=1.0"
        raise EntryError(name, f"invalid pip requirement {text!r}: {given!r} is not a version specifier "
                               f"(pip would look for a project named {requirement.name!r}); "
                               f"write a PEP 440 one, e.g. '{example}'")
    return text


def _check_dependency_names(deps: Mapping[str, object]) -> None:
    for name in deps:
        if not _NAME.match(name):
            raise EntryError(name, f"invalid package name {name!r}: use lower case letters, digits, '.', '_', '-'")


class PipGit(Model):
    """A pip dependency installed from a git repository, locked to a commit."""

    git: str
    ref: str = "main"
    subdirectory: str | None = None

    @field_validator("git")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(https?|ssh|git|file)://", value):
            raise ValueError(f"git URL {value!r} must start with https://, ssh://, git:// or file://")
        return value


PipDependency = str | PipGit


class PipSection(Model):
    dependencies: dict[str, PipDependency] = Field(default_factory=dict)

    @field_validator("dependencies")
    @classmethod
    def _specs(cls, deps: dict[str, PipDependency]) -> dict[str, PipDependency]:
        _check_dependency_names(deps)
        for name, spec in deps.items():
            if isinstance(spec, str):
                _check_pip_spec(name, spec)
        return deps


class Variant(Model):
    """Named overrides: ``false`` removes a dependency, a string replaces or adds it."""

    description: str = ""
    default: StrictBool = False
    dependencies: dict[str, str | Literal[False]] = Field(default_factory=dict)
    pip: dict[str, dict[str, PipDependency | Literal[False]]] = Field(default_factory=dict)

    @field_validator("dependencies")
    @classmethod
    def _conda(cls, deps: dict[str, str | Literal[False]]) -> dict[str, str | Literal[False]]:
        _check_dependency_names(deps)
        for name, spec in deps.items():
            if isinstance(spec, str):
                _check_match_spec(name, spec)
        return deps

    @field_validator("pip")
    @classmethod
    def _pip(
        cls, section: dict[str, dict[str, PipDependency | Literal[False]]]
    ) -> dict[str, dict[str, PipDependency | Literal[False]]]:
        for key in section:
            if key != "dependencies":
                raise ValueError(f"unknown key {key!r} in a variant's pip table; expected 'dependencies'")
        deps = section.get("dependencies", {})
        _check_dependency_names(deps)
        for name, spec in deps.items():
            if isinstance(spec, str):
                _check_pip_spec(name, spec)
        return section


class Kernel(Model):
    name: str
    display_name: str
    language: str = "python"
    argv: tuple[str, ...] = DEFAULT_KERNEL_ARGV
    env: dict[str, str] = Field(default_factory=dict)
    interrupt_mode: Literal["signal", "message"] = "signal"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"kernel name {value!r}: use lower case letters, digits, '.', '_', '-'")
        return value

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("argv must not be empty")
        if not any("{connection_file}" in a for a in value):
            raise ValueError("argv must pass '{connection_file}' to the kernel")
        return value


class JupyterLab(Model):
    extensions: tuple[str, ...] = ()


class Owner(Model):
    """Owner of the installed tree: numeric ids or names, as the seed's ANTARES kernel (899:899)."""

    user: str
    group: str

    @property
    def spec(self) -> str:
        return f"{self.user}:{self.group}"


class ImageSettings(Model):
    base: str = "debian:bookworm-slim"
    repository: str | None = None
    tags: tuple[str, ...] = ("{version}", "latest")
    command: tuple[str, ...] = ("jupyterhub-singleuser",)
    user: str = "jovyan"
    uid: Annotated[StrictInt, Field(ge=1, le=2**31)] = 1000
    labels: dict[str, str] = Field(default_factory=dict)
    max_layers: Annotated[StrictInt, Field(ge=2, le=100)] = 12

    @field_validator("repository")
    @classmethod
    def _repository(cls, repository: str | None) -> str | None:
        if repository is not None and not all(manifest.REPOSITORY_COMPONENT_RE.match(c) for c in repository.split("/")):
            raise ValueError(
                f"{repository!r}: a repository name is lowercase letters, digits and '.', '_', '-' "
                "between them, in '/'-separated parts (e.g. swstack/py3)"
            )
        return repository

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        for tag in tags:
            if not _TAG.match(tag) or len(tag) > 128:
                raise ValueError(f"tag {tag!r}: letters, digits, '_', '.', '-' and {{fields}} only")
            for field in re.findall(r"{([^}]*)}", tag):
                if field not in TAG_FIELDS:
                    close = difflib.get_close_matches(field, TAG_FIELDS, n=1)
                    hint = f"; did you mean '{{{close[0]}}}'?" if close else f"; fields: {', '.join(TAG_FIELDS)}"
                    raise ValueError(f"tag {tag!r}: unknown field {{{field}}}{hint}")
            if "{week}" in tag and "{yyyy}" in tag:
                # The calendar year is wrong around New Year: 2024-12-30 is in week 1 of 2025.
                raise ValueError(f"tag {tag!r}: {{week}} is the ISO week; pair it with {{isoyear}}, not {{yyyy}}")
        return tags


class PackSettings(Model):
    format: Literal["tar.zst", "tar.gz"] = "tar.zst"
    level: Annotated[StrictInt, Field(ge=1, le=22)] | None = None
    threads: Annotated[StrictInt, Field(ge=0, le=256)] = 0

    @field_validator("level")
    @classmethod
    def _gzip_level(cls, level: int | None, info: ValidationInfo) -> int | None:
        # format is declared first, so it is checked (and in info.data) before level.
        if info.data.get("format") == "tar.gz" and level is not None and level > 9:
            raise ValueError(f"{level}: tar.gz takes levels 1 to 9 (1 to 22 is zstd's range)")
        return level


KNOWN_PLATFORMS = ["linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64"]
# The CPU level a platform's packages are solved for when the stack names none.
GENERIC_ARCHSPEC = {"linux-64": "1=x86_64", "linux-aarch64": "1=aarch64", "linux-ppc64le": "1=ppc64le"}


def _check_virtual(packages: dict[str, str]) -> dict[str, str]:
    for name in packages:
        if not name.startswith("__"):
            raise ValueError(f"virtual package {name!r} must start with '__' (e.g. __glibc)")
    return packages


class PlatformLockSettings(Model):
    """What one target platform's hosts provide, beside (and over) the shared virtual packages."""

    virtual_packages: dict[str, str] = Field(default_factory=dict)

    @field_validator("virtual_packages")
    @classmethod
    def _virtual(cls, packages: dict[str, str]) -> dict[str, str]:
        return _check_virtual(packages)


class LockSettings(Model):
    """Virtual packages the solver assumes for each target platform (``__glibc`` etc.).

    ``virtual_packages`` hold for every platform; ``platform.<name>.virtual_packages``
    add to them or override them for one; a platform given no ``__archspec`` gets its
    generic CPU (``1=x86_64``, ``1=aarch64``).
    """

    virtual_packages: dict[str, str] = Field(
        default_factory=lambda: {"__glibc": "2.28", "__linux": "5.10", "__unix": "0"}
    )
    platform: dict[str, PlatformLockSettings] = Field(default_factory=dict)

    @field_validator("virtual_packages")
    @classmethod
    def _virtual(cls, packages: dict[str, str]) -> dict[str, str]:
        return _check_virtual(packages)

    @field_validator("platform")
    @classmethod
    def _platform_names(cls, value: dict[str, PlatformLockSettings]) -> dict[str, PlatformLockSettings]:
        for name in value:
            if name not in KNOWN_PLATFORMS:
                close = difflib.get_close_matches(name, KNOWN_PLATFORMS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown platform {name!r}{hint}")
        return value

    def virtual_packages_for(self, platform: str) -> dict[str, str]:
        merged = dict(self.virtual_packages)
        if platform in self.platform:
            merged.update(self.platform[platform].virtual_packages)
        if "__archspec" not in merged and platform in GENERIC_ARCHSPEC:
            merged["__archspec"] = GENERIC_ARCHSPEC[platform]
        return dict(sorted(merged.items()))


class StackFile(Model):
    """The validated content of one stack file (after ``extends`` is merged in)."""

    extends: str | list[str] | None = None
    name: str
    description: str = ""
    prefix: str | None = None
    platforms: tuple[str, ...] = ("linux-64",)
    channels: tuple[str, ...]
    dependencies: dict[str, str]
    pip: PipSection = Field(default_factory=PipSection)
    variants: dict[str, Variant] = Field(default_factory=dict)
    kernels: tuple[Kernel, ...] = ()
    kernel_spec_dirs: tuple[str, ...] = ()
    jupyterlab: JupyterLab = Field(default_factory=JupyterLab)
    owner: Owner | None = None
    image: ImageSettings = Field(default_factory=ImageSettings)
    pack: PackSettings = Field(default_factory=PackSettings)
    lock: LockSettings = Field(default_factory=LockSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"stack name {value!r}: use lower case letters, digits, '.', '_', '-'")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "//" in value or value.endswith("/")):
            raise ValueError(f"prefix {value!r} must be an absolute path without a trailing '/'")
        if value is not None and any(part in (".", "..") for part in value.split("/")):
            # The build mounts its directory at the prefix's parent and a host names the live
            # path after its last component: both as written.
            raise ValueError(f"prefix {value!r}: write the path without '.' or '..' components")
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import rattler

        if not value:
            raise ValueError("list at least one platform, e.g. [\"linux-64\"]")
        for platform in value:
            if value.count(platform) > 1:  # solved and written twice: conda-lock cannot read that lockfile
                raise ValueError(f"{platform!r} is listed twice; list each platform once")
            if platform == "noarch":
                raise ValueError("'noarch' is no platform to lock for: noarch packages are solved with each "
                                 "platform's own; list the hosts' platforms, e.g. [\"linux-64\"]")
            try:
                rattler.Subdir(platform)
            except Exception:
                close = difflib.get_close_matches(platform, KNOWN_PLATFORMS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown platform {platform!r}{hint}") from None
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one channel, e.g. [\"conda-forge\"]")
        return value

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, deps: dict[str, str]) -> dict[str, str]:
        _check_dependency_names(deps)
        for name, spec in deps.items():
            _check_match_spec(name, spec)
        return deps

    @field_validator("owner", mode="before")
    @classmethod
    def _owner(cls, value: object) -> object:
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            if not _OWNER.match(value):
                raise ValueError(f"owner {value!r}: expected 'uid:gid' or 'user:group' (e.g. '899:899')")
            user, _, group = value.partition(":")
            too_large = [i for i in (user, group) if i.isdigit() and int(i) > manifest.MAX_ID]
            if too_large:
                raise ValueError(
                    f"owner {value!r}: id {too_large[0]} is past {manifest.MAX_ID}, the largest an id can be"
                )
            return {"user": user, "group": group or user}
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> StackFile:
        defaults = [name for name, v in self.variants.items() if v.default]
        if len(defaults) > 1:  # named at the second one's line
            raise ValueError(f"variants.{defaults[1]}.default: only one variant may set default = true, and "
                             f"{defaults[0]} does; remove one of them")
        for name, variant in self.variants.items():
            _check_variant(name, variant, self)
        names = [k.name for k in self.kernels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"kernels: duplicate kernel name(s) {', '.join(dupes)}")
        all_deps = set(self.dependencies) | set(self.pip.dependencies)
        for variant in self.variants.values():
            all_deps |= set(variant.dependencies) | set(variant.pip.get("dependencies", {}))
        for extension in self.jupyterlab.extensions:
            if extension not in all_deps:
                raise ValueError(
                    f"jupyterlab.extensions: {extension!r} is not a dependency; add it to "
                    "[dependencies] or [pip.dependencies] (prebuilt extensions are packages)"
                )
        return self

    # ---- derived views -------------------------------------------------------------------

    @property
    def default_variant(self) -> str:
        for name, variant in self.variants.items():
            if variant.default:
                return name
        return next(iter(self.variants), "default")

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(self.variants) or ("default",)

    def resolve(self, variant: str | None = None) -> Stack:
        """The stack as one variant sees it: the base dependencies with that variant's overrides."""
        chosen = variant or self.default_variant
        if self.variants and chosen not in self.variants:
            close = difflib.get_close_matches(chosen, list(self.variants), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            variants = ", ".join(self.variants)
            raise SpecError(f"stack {self.name!r} has no variant {chosen!r}{hint} (variants: {variants})")
        if not self.variants and chosen != "default":
            raise SpecError(f"stack {self.name!r} defines no variants; drop variant={chosen}")
        overrides = self.variants.get(chosen, Variant())
        conda = dict(self.dependencies)
        for name, spec in overrides.dependencies.items():
            if spec is False:
                conda.pop(name, None)
            else:
                conda[name] = spec
        pip: dict[str, PipDependency] = dict(self.pip.dependencies)
        for name, pspec in overrides.pip.get("dependencies", {}).items():
            if pspec is False:
                pip.pop(name, None)
            else:
                pip[name] = pspec
        return Stack(
            name=self.name,
            variant=chosen,
            default_variant=self.default_variant,
            description=self.description,
            prefix=self.prefix or f"{paths.ROOT}/sw/{self.name}",
            platforms=self.platforms,
            channels=self.channels,
            conda=tuple(_check_match_spec(n, s) for n, s in sorted(conda.items())),
            pip=tuple(sorted(pip.items())),
            kernels=self.kernels,
            kernel_spec_dirs=self.kernel_spec_dirs,
            jupyterlab=self.jupyterlab,
            owner=self.owner,
            image=self.image,
            pack=self.pack,
            lock=self.lock,
        )


def _check_variant(name: str, variant: Variant, stack: StackFile) -> None:
    """A variant's name names lockfiles, artifacts, images and doit tasks (``py3-dev``); what it
    removes (``numpy = false``) must be there to remove: a misspelt name would remove nothing."""
    if not _NAME.match(name) or name == "default":
        why = ("'default' is the variant name of a stack without variants" if name == "default"
               else "use lower case letters, digits, '.', '_', '-'")
        raise ValueError(f"variants.{name}: variant name {name!r}: {why}")
    tables = (("dependencies", variant.dependencies, stack.dependencies),
              ("pip.dependencies", variant.pip.get("dependencies", {}), stack.pip.dependencies))
    for table, changes, base in tables:
        for package, spec in changes.items():
            if spec is False and package not in base:
                close = difflib.get_close_matches(package, list(base), n=1)
                listed = f"the stack's {table}: {', '.join(base)}" if base else f"the stack has no {table}"
                hint = f"; did you mean {close[0]!r}?" if close else f"; {listed}"
                raise ValueError(
                    f"variants.{name}.{table}.{package}: removes a dependency the stack does not have{hint}"
                )


@dataclass(frozen=True)
class Stack:
    """One variant of a stack, ready to lock or build."""

    name: str
    variant: str
    default_variant: str  # the one the stack file declares (or its first, or "default")
    description: str
    prefix: str
    platforms: tuple[str, ...]
    channels: tuple[str, ...]
    conda: tuple[str, ...]  # match specs, e.g. "numpy >=1.26"
    pip: tuple[tuple[str, PipDependency], ...]
    kernels: tuple[Kernel, ...]
    kernel_spec_dirs: tuple[str, ...]
    jupyterlab: JupyterLab
    owner: Owner | None
    image: ImageSettings
    pack: PackSettings
    lock: LockSettings
    source: Path | None = None  # the stack file, for messages and relative paths
    sources: tuple[Path, ...] = ()  # the stack file and every file it extends (resolved)
    source_hash: str = ""  # sha256 of the merged stack-file content

    @property
    def is_default_variant(self) -> bool:
        return self.variant == self.default_variant

    def where(self, key: KeyPath) -> str:
        """``file:line`` of ``key`` as the stack takes it (``locate``)."""
        return self.locate(key)[0]

    def locate(self, key: KeyPath) -> tuple[str, KeyPath]:
        """``(file:line, key)`` of the entry the stack takes for ``key``: the variant's where it
        overrides the base one, its own file first, then those it extends; the stack file and ``key``
        when none sets it."""
        indexes = []
        for path in self.sources:
            try:
                indexes.append((path, index_lines(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue
        for wanted in (("variants", self.variant, *key), key):
            for path, index in indexes:
                if wanted in index:
                    return f"{path}:{index[wanted]}", wanted
        return str(self.source or self.name), key

    def doit_command(self, task: str, version: str | None = None) -> str:
        """The ``doit`` command line of ``task`` for this stack, to quote in a message."""
        words = ["doit", task, f"stack={self.name}"]
        if not self.is_default_variant:
            words.append(f"variant={self.variant}")
        if version is not None:
            words.append(f"version={version}")
        return " ".join(words)

    @property
    def stack_id(self) -> str:
        """``py3`` for the default variant, ``py3-dev`` for another: names artifacts and images."""
        return manifest.stack_id(self.name, self.variant, self.default_variant)

    @property
    def lock_subdir(self) -> str:
        """``py3`` or ``py3/dev``: where under ``lockfiles/`` this variant's lockfile lives."""
        return self.name if self.is_default_variant else f"{self.name}/{self.variant}"

    def locking_inputs(self) -> dict[str, Any]:
        """Everything that changes the solve, as JSON-able data (the staleness hash covers it)."""
        return {
            "name": self.name,
            "variant": self.variant,
            "platforms": list(self.platforms),
            "channels": list(self.channels),
            "conda": list(self.conda),
            "pip": [[n, s if isinstance(s, str) else s.model_dump()] for n, s in self.pip],
            "virtual_packages": {p: self.lock.virtual_packages_for(p) for p in self.platforms},
        }


# ---- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    path: Path
    text: str
    lines: dict[KeyPath, int]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_toml(path: Path, chain: Sequence[Path]) -> tuple[dict[str, Any], _Source]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        via = f" (extended by {_display(chain[-1])})" if chain else ""
        raise SpecError(f"{_display(path)}: no such file{via}") from None
    except OSError as exc:
        raise SpecError(f"{_display(path)}: cannot read: {exc.strerror}") from None
    text = decode_utf8(raw, _display(path), "the file", SpecError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, reason = decode_error_at(exc)  # the line leads, after the file
        where = f":{line}" if line else ""
        duplicate = _duplicate_key(text, line, reason) if line else None
        raise SpecError(f"{_display(path)}{where}: {duplicate or f'invalid TOML: {reason}'}") from None
    return data, _Source(path, text, index_lines(text))


# tomllib's words for a key defined twice; they name neither the key nor where it was first.
_DUPLICATE = re.compile(r"Cannot overwrite a value|Cannot declare .* twice|Duplicate inline table key '(.*)'")


def _duplicate_key(text: str, line: int, reason: str) -> str | None:
    """``key.path: defined twice (first on line N); keep one`` for tomllib's duplicate-key errors."""
    found = _DUPLICATE.fullmatch(reason)
    path = path_defined_at(text, line) if found else None
    if found is None or path is None:
        return None
    if found.group(1) is not None:  # a key repeated inside an inline table: { a = 1, a = 2 }
        path = (*path, found.group(1))
    first = index_lines(text).get(path)
    earlier = f" (first on line {first})" if first is not None and first != line else ""
    return f"{dotted(path)}: defined twice{earlier}; keep one of them"


def _merge(base: dict[str, Any], over: dict[str, Any], origin: dict[KeyPath, _Source] | None,
           src: _Source | None, prefix: KeyPath = ()) -> dict[str, Any]:
    """Tables merge key by key; any other value in ``over`` replaces the base's.

    With ``origin`` the file that defined each key path is recorded, so an error in a
    merged stack points into the file (base or child) that holds the offending line.
    """
    merged = dict(base)
    for key, value in over.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if origin is not None and src is not None:
                origin.setdefault(path, src)
            merged[key] = _merge(merged[key], value, origin, src, path)
        else:
            merged[key] = value
            if origin is not None and src is not None:
                origin[path] = src
                for sub in [p for p in origin if p[: len(path)] == path and len(p) > len(path)]:
                    origin[sub] = src
    return merged


def _load_merged(
    path: Path, chain: tuple[Path, ...], origin: dict[KeyPath, _Source], files: list[Path]
) -> dict[str, Any]:
    """The merged content of ``path`` and what it extends; ``files`` collects every file read."""
    resolved = path.resolve()  # a cycle is refused below, at the 'extends' that would close it
    data, src = _read_toml(path, chain)
    if resolved not in files:
        files.append(resolved)
    merged: dict[str, Any] = {}
    for parent in _extends(path, data, src):
        if not (path.parent / parent).is_file():
            others = [p.name for p in path.parent.glob("*.toml") if p.name != path.name]
            near = difflib.get_close_matches(parent, others, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (a file beside {_display(path)})"
            line = line_of(src.lines, ("extends",))
            raise SpecError(f"{_display(path)}:{line}: extends: {parent!r}: no such file{hint}")
        if (path.parent / parent).resolve() in (*chain, resolved):
            cycle = " -> ".join(_display(p) for p in (*chain, resolved, (path.parent / parent).resolve()))
            line = line_of(src.lines, ("extends",))
            raise SpecError(f"{_display(path)}:{line}: extends: {parent!r} forms a cycle: {cycle}; "
                            "remove one of these 'extends'")
        parent_data = _load_merged(path.parent / parent, (*chain, resolved), origin, files)
        merged = _merge(merged, parent_data, None, None)  # origins recorded by the recursive call
    merged = _merge(merged, data, origin, src)
    merged.pop("extends", None)
    return merged


def _extends(path: Path, data: Mapping[str, Any], src: _Source) -> list[str]:
    """The files ``extends`` names: one name or a list of them."""
    parents = data.get("extends")
    if parents is None:
        return []
    if isinstance(parents, str):
        return [parents]
    if isinstance(parents, list) and all(isinstance(p, str) for p in parents):
        return parents
    line = line_of(src.lines, ("extends",))
    raise SpecError(f"{_display(path)}:{line}: extends: expected a file name or a list of them")


def _where(origin: dict[KeyPath, _Source], loc: KeyPath, default: _Source) -> str:
    probe = loc
    while probe and probe not in origin:
        probe = probe[:-1]
    src = origin.get(probe, default)
    line = line_of(src.lines, loc)
    return f"{_display(src.path)}:{line}" if line else _display(src.path)


def _describe(error: dict[str, Any], model_fields: Sequence[str]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, model_fields, n=1, cutoff=0.5)
        expected = f"; expected one of: {', '.join(model_fields)}"
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else expected)
    if kind == "missing":
        return f"required key is missing; {_where_to_add(_clean_loc(loc))}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind.endswith("_type") or kind in ("literal_error", "union_tag_invalid"):
        given = type(error.get("input")).__name__
        names = {"str": "a string", "int": "an integer", "bool": "true/false", "list": "a list",
                 "dict": "a table", "float": "a number"}
        msg = error["msg"].lower().replace("valid tuple", "valid list")  # TOML has arrays, not tuples
        return f"{msg} (got {names.get(given, given)}: {error.get('input')!r})"
    if kind in _BOUNDS:  # a number out of its range: say which number was given
        return f"{error['msg'].lower()} (got {error.get('input')!r})"
    return str(error["msg"])


def _where_to_add(loc: KeyPath) -> str:
    """Where a missing key goes, as a user edits the file: a top-level key has no line to point at."""
    if len(loc) <= 1:
        return "add it at the top of the file, above the first [table] or [[array]] header"
    return f"add it to {dotted(loc[:-1])}"


# pydantic's error types for a number outside a ``Field(ge=..., le=...)`` range.
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _fields_at(loc: KeyPath, root: type[BaseModel]) -> list[str]:
    """Valid keys of the table at ``loc``, for 'did you mean'."""
    model: type[BaseModel] | None = root
    keyed = False  # the part is a name the user chose (a variant, a platform), not a field
    for part in loc[:-1]:
        if model is None or isinstance(part, int) or keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        keyed = any(getattr(a, "__origin__", a) is dict for a in (annotation, *getattr(annotation, "__args__", ())))
        model = None
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            inner = getattr(candidate, "__args__", None)
            for c in (candidate, *(inner or ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
    return list(model.model_fields) if model is not None else []


def _clean_loc(loc: tuple[Any, ...]) -> KeyPath:
    """Drop pydantic's union-branch markers ('str', 'PipGit', 'function-after[...]') from a location.

    A model's name is a marker; any other capitalised part is a key the user chose (an
    environment variable in a kernel's ``env``, a label) and stays in the key path.
    """
    return tuple(p for p in loc if not _is_branch(p))


def _is_branch(part: str | int) -> bool:
    """Whether a location part is pydantic's name of a union branch, not a key."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "bool", *_model_names(Model)))


# What a union branch takes, as a user writes it in TOML.
_BRANCHES = {"str": "a string", "int": "an integer", "bool": "true/false", "literal[False]": "false",
             "list[str]": "a list of strings"}


def _one_per_union(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One error per value of a union type, not one per branch: a table (or list) keeps its branch's
    errors (``gti: unknown key; did you mean 'git'?``); anything else is one "expected A or B"."""
    unions: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
    kept: list[dict[str, Any]] = []
    for error in errors:
        raw = tuple(error["loc"])
        at = next((i for i, part in enumerate(raw) if _is_branch(part)), None)
        if at is None:
            kept.append(error)
            continue
        if raw[:at] not in unions:
            kept.append({"union": raw[:at]})  # keeps the union's place among the errors
        unions.setdefault(raw[:at], []).append((str(raw[at]), error))
    merged: list[dict[str, Any]] = []
    for error in kept:
        if "union" not in error:
            merged.append(error)
            continue
        branches = unions[error["union"]]
        given = next((e["input"] for b, e in branches if len(e["loc"]) == len(error["union"]) + 1), None)
        kind = "list[" if isinstance(given, list) else None
        matching = [e for b, e in branches if isinstance(given, dict) and b[:1].isupper()
                    or kind is not None and b.startswith(kind)]
        if matching:
            merged.extend(matching)
            continue
        names = [_BRANCHES.get(b, "a table" if b[:1].isupper() else b) for b, _ in branches]
        names = list(dict.fromkeys(names))
        text = f"expected {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else f"expected {names[0]}"
        shown = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
        text += f" (got {shown.get(type(given), type(given).__name__)}: {given!r})"
        if "false" in names:
            text += "; a string replaces or adds the dependency, false removes it"
        merged.append({"type": "value_error", "loc": error["union"], "msg": text, "input": given,
                       "ctx": {"error": text}})
    return merged


def _model_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The class names of ``model`` and its subclasses: what pydantic tags a union branch with."""
    return (model.__name__, *(n for sub in model.__subclasses__() for n in _model_names(sub)))


def format_validation_error(
    exc: ValidationError, root: type[BaseModel], origin: dict[KeyPath, _Source], top: _Source
) -> str:
    """One line per problem: ``file:line: key.path: what is wrong; the fix``."""
    problems: list[str] = []
    errors = _one_per_union([dict(e) for e in exc.errors()])
    # A misspelt required key is one mistake, not two: its "unknown key; did you mean" line says
    # it all, so the "required key is missing" line of the key it meant is left out.
    meant = set()
    for error in errors:
        loc = _clean_loc(tuple(error["loc"]))
        if error["type"] == "extra_forbidden" and loc:
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc, root), n=1, cutoff=0.5)
            meant |= {(*loc[:-1], close[0])} if close else set()
    errors = [e for e in errors if not (e["type"] == "missing" and _clean_loc(tuple(e["loc"])) in meant)]
    for error in errors:
        loc = _clean_loc(tuple(error["loc"]))
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, EntryError):
            loc = (*loc, cause.key)
        what = _describe(dict(error), _fields_at(loc, root))
        named = re.match(r"([a-z_][\w\-]*(?:\.[\w\-]+)*): ", what) if not loc else None
        if named:  # a check across the file names the key it is about: point at that key's line
            loc, what = tuple(named.group(1).split(".")), what[named.end() :]
        key = dotted(loc) or "(top level)"
        text = f"{_where(origin, loc, top)}: {key}: {what}"
        if error["type"] == "extra_forbidden" and len(loc) > 1 and str(loc[-1]) in root.model_fields:
            if root is StackFile and len(loc) == 3 and loc[0] == "variants":
                # Meant for the variant, not misplaced: moving it up would change every variant.
                text = (f"{_where(origin, loc, top)}: {key}: a variant sets only its description, default, "
                        f"dependencies and pip.dependencies; {loc[-1]} is the whole stack's (above the first "
                        f"[table] header): for another {loc[-1]}, write a stack file that extends this one")
            else:
                text += f"; {loc[-1]} is a top-level key: move it above the first [table] or [[array]] header"
        if text not in problems:
            problems.append(text)
    return "\n".join(problems)


def load_stack_file(path: Path | str) -> StackFile:
    """Read, merge (``extends``) and validate a stack file; raise ``SpecError`` listing every problem."""
    return _load_stack_file(Path(path))[0]


def _load_stack_file(path: Path) -> tuple[StackFile, tuple[Path, ...]]:
    """The validated stack file and every file it was read from (itself first, resolved)."""
    origin: dict[KeyPath, _Source] = {}
    files: list[Path] = []
    merged = _load_merged(path, (), origin, files)
    top = next((src for src in origin.values() if src.path == path), None) or _read_toml(path, ())[1]
    try:
        stack_file = StackFile.model_validate(merged)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, StackFile, origin, top)) from None
    check_kernel_spec_dirs(stack_file, path, origin.get(("kernel_spec_dirs",), top))
    return stack_file, tuple(files)


def check_kernel_spec_dirs(stack_file: StackFile, path: Path, src: _Source) -> None:
    """Each ``kernel_spec_dirs`` entry names a directory (relative to the stack file ``path``,
    as the build mounts it): found missing when the file is read, like any other mistake in
    it, rather than by the build, after the lock and without the line."""
    for rel in stack_file.kernel_spec_dirs:
        directory = (path.parent / rel).resolve()
        if not directory.is_dir():
            raise SpecError(
                f"{_display(src.path)}:{line_of(src.lines, ('kernel_spec_dirs',))}: kernel_spec_dirs: {rel!r} "
                f"is not a directory ({directory}); create it, or give the path relative to {_display(path)}"
            )


def _toml_files(stacks_dir: Path) -> list[Path]:
    """The ``*.toml`` files of ``stacks_dir``, sorted; a directory so named is no stack file."""
    return sorted(p for p in stacks_dir.glob("*.toml") if p.is_file())


def stack_files(stacks_dir: Path) -> list[Path]:
    """Every stack file in ``stacks_dir``, each named after its file; a file without a top-level
    ``name`` is a shared part (base.toml), which another file must extend: a stack whose
    ``name`` is missing or misspelt must fail, not drop out of every command unseen."""
    read = {path: _read_toml(path, ()) for path in _toml_files(stacks_dir)}
    extended = {
        (path.parent / parent).resolve() for path, (data, src) in read.items() for parent in _extends(path, data, src)
    }
    stacks = []
    for path, (data, src) in read.items():
        if "name" in data:
            check_named_after_file(path, data, src)
            stacks.append(path)
        elif path.resolve() not in extended:
            raise SpecError(
                f"{_display(path)}: no top-level name, and no stack file extends it; a stack sets "
                f'name = "{path.stem}" (above the first [table]), a shared part is named in another\'s extends'
            )
    return stacks


def check_own_live_path(path: Path, stacks_dir: Path) -> None:
    """A host makes a stack live at ``/data0/sw/<last component of its prefix>``: two stacks built
    for one such path would replace each other there (a stack's variants do so by design)."""
    mine = load_stack_file(path)
    live = (mine.prefix or f"{paths.ROOT}/sw/{mine.name}").rsplit("/", 1)[-1]
    for other_path in _toml_files(stacks_dir):
        if other_path.resolve() == path.resolve():
            continue
        try:
            other = load_stack_file(other_path)
        except SpecError:  # a shared part, or a broken file: its own command says so
            continue
        if (other.prefix or f"{paths.ROOT}/sw/{other.name}").rsplit("/", 1)[-1] == live:
            data, src = _read_toml(path, ())
            key = "prefix" if "prefix" in data else "name"
            raise SpecError(
                f"{_display(path)}:{line_of(src.lines, (key,))}: {key}: stack {mine.name!r} would be live at "
                f"{paths.ROOT}/sw/{live} on a host, as stack {other.name!r} ({_display(other_path)}) is, and "
                f"activating one would replace the other; give it a prefix of its own, e.g. "
                f'prefix = "{paths.ROOT}/sw/{mine.name}" (variants of one stack share theirs)'
            )


def check_named_after_file(path: Path, data: Mapping[str, Any], src: _Source) -> None:
    """``stacks/py3.toml`` must say ``name = "py3"``: ``stack=py3`` finds the file by its name,
    and the artifacts and lockfiles go by the stack's."""
    if data.get("name") != path.stem:
        raise SpecError(
            f"{_display(path)}:{line_of(src.lines, ('name',))}: name: {data.get('name')!r} is not the file's "
            f'name; set name = "{path.stem}" or rename the file to {data.get("name")}.toml'
        )


def read_toml_model(path: Path, model: type[M], error: type[SpecError] = SpecError) -> M:
    """Read one TOML file (no ``extends``) into ``model`` with located errors."""
    try:
        data, src = _read_toml(path, ())
    except SpecError as exc:
        raise error(str(exc)) from None
    origin: dict[KeyPath, _Source] = {(key,): src for key in data}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(exc, model, origin, src)) from None


def stack_digest(stack_file: StackFile) -> str:
    """sha256 of the validated content, independent of formatting and comments."""
    payload = json.dumps(stack_file.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()


def load_stack(path: Path | str, variant: str | None = None) -> Stack:
    """``load_stack_file`` then ``resolve``: the usual entry point of every stage."""
    from dataclasses import replace

    stack_file, files = _load_stack_file(Path(path))
    return replace(
        stack_file.resolve(variant), source=Path(path), sources=files, source_hash=stack_digest(stack_file)
    )


def find_stack_file(name: str, stacks_dir: Path) -> Path:
    """``py3`` -> ``stacks/py3.toml``, with a 'did you mean' when there is no such stack."""
    candidate = Path(name)
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    path = stacks_dir / f"{name}.toml"
    if path.is_file():
        data, src = _read_toml(path, ())
        if "name" not in data:
            raise SpecError(
                f"{_display(path)}: no top-level name, so a shared part, not a stack; a stack sets "
                f'name = "{path.stem}" (above the first [table]), or name another stack file'
            )
        check_named_after_file(path, data, src)
        return path
    known = sorted(p.stem for p in _toml_files(stacks_dir) if p.stem != "base")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SpecError(f"no stack named {name!r} in {_display(stacks_dir)}{hint} (stacks: {', '.join(known) or 'none'})")
