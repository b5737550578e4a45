"""The container engine: every Docker SDK call of the project lives here.

Input: image references, build contexts, rootfs tarballs, argv and bind mounts.
Output: images in the local engine, and the exit code and output tail of containers.

Callers depend on the small ``Engine`` Protocol; ``DockerEngine`` is the one real
implementation (``docker.from_env()``, so ``DOCKER_HOST`` is honoured). Fakes exist
only in tests, for fault injection. Engine failures become ``SandboxError`` (running)
or ``ImageError`` (building, importing) with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import log
from .errors import ImageError, SandboxError, SwstackError

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
TAIL_LINES = 40

# Told to the user when no engine answers, by what needed one: a build has two ways forward,
# an image (whose base goes into the site's registry through the engine) and a host's prepull one.
START_HINT = 'start one (scripts/with-engine) or set sandbox = "namespace" in the site file'
IMAGE_HINT = "an image's base goes into the site's registry through it: start one (scripts/with-engine)"
HOST_HINT = "start the Docker engine on this host"


class BindMount(Protocol):
    """What the engine needs of a mount; ``sandbox.Mount`` satisfies it."""

    @property
    def source(self) -> Path: ...

    @property
    def target(self) -> str: ...

    @property
    def read_only(self) -> bool: ...


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    tail: str  # the last lines of the container's combined output


OutputSink = Callable[[str], None]

# Colour codes the engine leaves in build output (stderr of RUN steps): noise in logs.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Engine(Protocol):
    """The container operations swstack needs; grow it one method at a time."""

    @property
    def address(self) -> str: ...

    def available(self) -> bool: ...

    def ping(self) -> None: ...

    def image_exists(self, ref: str) -> bool: ...

    def import_rootfs(self, tar_path: Path, tag: str, *, changes: Sequence[str] = ()) -> str: ...

    def build(
        self,
        context_dir: Path,
        dockerfile: str,
        tag: str,
        *,
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str: ...

    def run(
        self,
        image: str,
        argv: Sequence[str],
        *,
        mounts: Sequence[BindMount] = (),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        network: bool = True,
        on_output: OutputSink | None = None,
        check: bool = True,
    ) -> RunResult: ...

    def remove_image(self, ref: str, *, force: bool = False) -> None: ...

    def tag_image(self, ref: str, target: str) -> None: ...

    def push_image(self, ref: str) -> str: ...

    def pull_image(self, ref: str) -> str: ...

    def inspect_image(self, ref: str) -> ImageInfo: ...

    def local_images(self) -> list[LocalImage]: ...

    def images_in_use(self) -> set[str]: ...


@dataclass(frozen=True)
class LocalImage:
    """One image in the engine and the names it goes by."""

    id: str
    repo_tags: tuple[str, ...]  # "host/name:tag"
    repo_digests: tuple[str, ...]  # "host/name@sha256:..."


@dataclass(frozen=True)
class ImageInfo:
    """What the engine knows of a local image."""

    id: str
    repo_digests: tuple[str, ...]  # "host/name@sha256:..." for each registry it came from or went to
    labels: Mapping[str, str]
    user: str
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    layers: int


def engine_address() -> str:
    """Where the engine is looked for: ``DOCKER_HOST`` or the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def split_tag(ref: str) -> tuple[str, str]:
    """``swstack/debian:bookworm`` -> (``swstack/debian``, ``bookworm``); no tag means ``latest``.

    A colon before the last slash belongs to a registry port, not to the tag.
    """
    name = ref.rsplit("/", 1)[-1]
    if ":" in name:
        repository, tag = ref.rsplit(":", 1)
        return repository, tag
    return ref, "latest"


def no_engine_message(address: str, reason: str = "", hint: str = START_HINT) -> str:
    because = f" ({reason})" if reason else ""
    return f"no Docker engine answers at {address}{because}: {hint}"


class DockerEngine:
    """``Engine`` over the Docker SDK. The client is created on first use, not at import.
    ``hint``: what to do when no engine answers, for what this engine is wanted."""

    def __init__(self, *, timeout: int = 600, hint: str = START_HINT) -> None:
        self._timeout = timeout
        self._hint = hint
        self._client: docker.DockerClient | None = None

    @property
    def address(self) -> str:
        return engine_address()

    # -- connection -------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client; raises ``SandboxError`` when no engine answers."""
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                client = docker.from_env(timeout=self._timeout)
                client.ping()
            except DockerException as exc:
                raise SandboxError(no_engine_message(self.address, _first_line(exc), self._hint)) from exc
            except OSError as exc:  # connection refused or socket missing, seen raw on some SDKs
                raise SandboxError(no_engine_message(self.address, _first_line(exc), self._hint)) from exc
            self._client = client
        return self._client

    @contextlib.contextmanager
    def _connection(self, doing: str, error: type[SwstackError]) -> Iterator[None]:
        """Around a call that streams from the engine: the transport's errors, which the SDK lets
        through unwrapped once a stream has begun (the engine stopped or restarted), as one line."""
        import requests
        import urllib3
        from docker.errors import DockerException

        try:
            yield
        except DockerException:
            raise  # the engine answered: the call's own handler words it
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
            self._client = None
            raise error(
                f"{doing}: the connection to the Docker engine at {self.address} broke ({_first_line(exc)}); "
                "check that the engine is running, then run again"
            ) from exc

    def available(self) -> bool:
        try:
            self.ping()
        except SandboxError:
            return False
        return True

    def ping(self) -> None:
        """Raise ``SandboxError`` unless an engine answers."""
        from docker.errors import DockerException

        try:
            self.client.ping()
        except (DockerException, OSError) as exc:
            self._client = None
            raise SandboxError(no_engine_message(self.address, _first_line(exc), self._hint)) from exc

    # -- images -----------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        from docker.errors import ImageNotFound

        try:
            self.client.images.get(ref)
        except ImageNotFound:
            return False
        return True

    def import_rootfs(self, tar_path: Path, tag: str, *, changes: Sequence[str] = ()) -> str:
        """``docker import``: a root filesystem tarball becomes image ``tag``; return its id."""
        from docker.errors import DockerException

        repository, name = split_tag(tag)
        log.info(f"importing {tar_path.name} ({log.human_bytes(tar_path.stat().st_size)}) as {tag}")
        try:
            answer = self.client.api.import_image_from_file(
                str(tar_path), repository=repository, tag=name, changes=list(changes) or None
            )
            return str(self.client.images.get(tag).id) if answer is not None else ""
        except DockerException as exc:
            raise ImageError(f"importing {tar_path} as {tag} failed: {_first_line(exc)}") from exc

    def build(
        self,
        context_dir: Path,
        dockerfile: str,
        tag: str,
        *,
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Build ``context_dir`` with ``dockerfile`` (relative to it) as ``tag``; return the id.

        The engine's output streams to the log line by line; on failure ``ImageError``
        carries its tail.
        """
        from docker.errors import DockerException

        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with self._connection(f"building {tag} from {context_dir}", ImageError):
            try:
                stream: Iterator[dict[str, Any]] = self.client.api.build(
                    path=str(context_dir),
                    dockerfile=dockerfile,
                    tag=tag,
                    buildargs=dict(buildargs or {}),
                    labels=dict(labels or {}),
                    rm=True,
                    forcerm=True,
                    decode=True,
                )
                for chunk in stream:
                    if "error" in chunk:
                        tail.append(_ANSI.sub("", str(chunk["error"])).rstrip())
                        raise ImageError(f"building {tag} from {context_dir} failed:\n{_indent(tail)}")
                    for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
                        if line.strip():
                            tail.append(line)
                            log.output(line)
            except DockerException as exc:
                raise ImageError(f"building {tag} from {context_dir} failed: {_first_line(exc)}") from exc
        return str(self.client.images.get(tag).id)

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        from docker.errors import DockerException, ImageNotFound

        try:
            self.client.images.remove(ref, force=force)
        except ImageNotFound:
            return
        except DockerException as exc:
            raise ImageError(f"removing image {ref} failed: {_first_line(exc)}") from exc

    def tag_image(self, ref: str, target: str) -> None:
        """``docker tag ref target``."""
        from docker.errors import DockerException

        repository, tag = split_tag(target)
        try:
            self.client.api.tag(ref, repository, tag)
        except DockerException as exc:
            raise ImageError(f"tagging {ref} as {target} failed: {_first_line(exc)}") from exc

    def push_image(self, ref: str) -> str:
        """``docker push ref``; return the manifest digest the registry answered."""
        from docker.errors import DockerException

        repository, tag = split_tag(ref)
        digest = ""
        with self._connection(f"pushing {ref}", ImageError):
            try:
                for chunk in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                    if "error" in chunk:
                        raise ImageError(f"pushing {ref} failed: {chunk['error']}")
                    aux = chunk.get("aux") or {}
                    digest = str(aux.get("Digest") or digest)
            except DockerException as exc:
                raise ImageError(f"pushing {ref} failed: {_first_line(exc)}") from exc
        if not digest:
            raise ImageError(f"pushing {ref}: the engine reported no digest")
        return digest

    def pull_image(self, ref: str) -> str:
        """``docker pull ref`` (a tag or ``@sha256:`` digest); return the image id.

        With the credentials swstack reads the registry with (``SWSTACK_REGISTRY_USER`` /
        ``SWSTACK_REGISTRY_PASSWORD``, else docker's ``auths``; docs/registry.md), so what
        ``hub-config`` could list ``prepull`` can pull; none found leaves it to the SDK.
        """
        from docker.errors import DockerException

        from .oci import load_credentials

        host = ref.split("/", 1)[0] if "/" in ref else ""
        registry = host if "." in host or ":" in host or host == "localhost" else ""
        found = load_credentials(registry) if registry else None
        auth = {"username": found.username, "password": found.password} if found else None

        def failed(why: str) -> ImageError:
            if registry and re.search(r"no basic auth|unauthorized|authentication required", why, re.I):
                why += f"; set SWSTACK_REGISTRY_USER and SWSTACK_REGISTRY_PASSWORD, or `docker login {registry}`"
            return ImageError(f"pulling {ref} failed: {why}")

        log.info(f"pulling {ref}")
        with self._connection(f"pulling {ref}", ImageError):
            try:
                for chunk in self.client.api.pull(ref, stream=True, decode=True, auth_config=auth):
                    if "error" in chunk:
                        raise failed(str(chunk["error"]))
                return str(self.client.images.get(ref).id)
            except DockerException as exc:
                raise failed(_first_line(exc)) from exc

    def inspect_image(self, ref: str) -> ImageInfo:
        from docker.errors import DockerException

        try:
            attrs = self.client.api.inspect_image(ref)
        except DockerException as exc:
            raise ImageError(f"inspecting image {ref} failed: {_first_line(exc)}") from exc
        config = attrs.get("Config") or {}
        return ImageInfo(
            id=str(attrs.get("Id", "")),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
            labels=dict(config.get("Labels") or {}),
            user=str(config.get("User") or ""),
            env=tuple(config.get("Env") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            layers=len((attrs.get("RootFS") or {}).get("Layers") or ()),
        )

    def local_images(self) -> list[LocalImage]:
        """Every image in the engine (``docker images --all --digests``)."""
        from docker.errors import DockerException

        try:
            listed = self.client.api.images()
        except DockerException as exc:
            raise ImageError(f"listing the engine's images failed: {_first_line(exc)}") from exc
        return [
            LocalImage(
                id=str(item.get("Id", "")),
                repo_tags=tuple(t for t in item.get("RepoTags") or () if t != "<none>:<none>"),
                repo_digests=tuple(d for d in item.get("RepoDigests") or () if d != "<none>@<none>"),
            )
            for item in listed
        ]

    def images_in_use(self) -> set[str]:
        """Ids of the images of every container, running or stopped (the engine keeps those)."""
        from docker.errors import DockerException

        try:
            containers = self.client.api.containers(all=True)
        except DockerException as exc:
            raise ImageError(f"listing the engine's containers failed: {_first_line(exc)}") from exc
        return {str(c.get("ImageID", "")) for c in containers if c.get("ImageID")}

    # -- containers -------------------------------------------------------------------

    def run(
        self,
        image: str,
        argv: Sequence[str],
        *,
        mounts: Sequence[BindMount] = (),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        network: bool = True,
        on_output: OutputSink | None = None,
        check: bool = True,
    ) -> RunResult:
        """Run ``argv`` in a fresh container of ``image``, streaming its output to ``on_output``.

        The container is always removed, also on Ctrl-C. With ``check`` a non-zero exit
        raises ``SandboxError`` with the output tail.
        """
        from docker.errors import DockerException
        from docker.types import Mount as SdkMount

        sdk_mounts = [
            SdkMount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
            for m in mounts
        ]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        container = None
        with self._connection(f"running {argv[0] if argv else '?'} in {image}", SandboxError):
            try:
                container = self.client.containers.create(
                    image,
                    command=list(argv),
                    mounts=sdk_mounts,
                    environment=dict(env or {}),
                    working_dir=workdir,
                    user=user or "",
                    network_mode="bridge" if network else "none",
                    detach=True,
                )
                container.start()
                for line in _lines(container.logs(stream=True, follow=True)):
                    tail.append(line)
                    if on_output is not None:
                        on_output(line)
                exit_code = int(container.wait()["StatusCode"])
            except DockerException as exc:
                what = argv[0] if argv else "?"
                raise SandboxError(f"running {what} in {image} failed: {_first_line(exc)}") from exc
            finally:
                if container is not None:
                    _remove_quietly(container)
        result = RunResult(exit_code=exit_code, tail="\n".join(tail))
        if check and exit_code != 0:
            raise SandboxError(
                f"{' '.join(argv[:3])} failed in container {image} (exit {exit_code}):\n{_indent(tail)}"
            )
        return result


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Split the engine's byte chunks into text lines (chunks cut lines anywhere)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace")


def _remove_quietly(container: Any) -> None:
    import requests
    from docker.errors import DockerException

    try:
        container.remove(force=True)
    except (DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
        # Already gone, or the engine stopped: nothing left to do, and the reason the run failed,
        # not this, is what the user must read.
        log.debug(f"removing container {container.id[:12]}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _indent(lines: Iterator[str] | deque[str]) -> str:
    return "\n".join("    " + line for line in lines)


__all__ = [
    "BindMount",
    "DockerEngine",
    "Engine",
    "ImageInfo",
    "RunResult",
    "engine_address",
    "split_tag",
    "no_engine_message",
]
