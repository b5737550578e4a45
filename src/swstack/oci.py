"""A minimal OCI distribution client, standard library only, used by both sides.

Input: a reference such as ``registry.example.org:5000/swstack/py3:2026-11-21`` (an
``oci://`` prefix and an ``@sha256:...`` digest are accepted). Output: blobs pushed
from files or streamed into files with their digest checked, manifests pushed and
fetched, tag lists, and, for the host, a fetched artifact directory (tarball,
``<tarball>.sha256``, ``manifest.json``).

Talks plain HTTP(S) through urllib so a notebook host needs nothing beyond the
standard library. Token (Bearer) and basic auth are supported, with credentials
from ``SWSTACK_REGISTRY_USER``/``SWSTACK_REGISTRY_PASSWORD`` or the ``auths`` of
``~/.docker/config.json``; secrets never reach a message. Transient failures
(connection refused or reset, timeouts, 5xx, 429) are retried with a bounded
exponential backoff; anything else fails at once.
"""

from __future__ import annotations

import base64
import difflib
import email.message
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import log
from .artifact import (
    ARTIFACT_TYPE,
    ArtifactError,
    artifact_layout,
    checksum_line,
    checksum_path,
    load_manifest,
    names_registry,
)
from .errors import ActivateError, PushError, SwstackError
from .fsutil import atomic_output, atomic_write_text, sha256_file
from .manifest import REPOSITORY_COMPONENT_RE, Manifest, host_platform

# ----------------------------------------------------------------------------- media types

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
CREATED = "org.opencontainers.image.created"

DEFAULT_CHUNK = 32 << 20  # bytes per PATCH; blobs up to this size go in one PUT
_QUIET_BELOW = 8 << 20  # smaller blobs transfer without a progress line
_READ = 1 << 20

# ----------------------------------------------------------------------------- references

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``, parsed once."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(
    text: str, *, default_tag: str | None = "latest", error: type[SwstackError] = PushError
) -> Reference:
    """Parse ``[oci://]host[:port]/name[:tag][@sha256:...]``; the registry host is required."""
    original = text
    text = text.strip()
    if text.startswith("oci://"):
        text = text[len("oci://") :]
    hint = "expected host[:port]/name[:tag][@sha256:<64 hex>], e.g. registry.example.org/swstack/py3:1.0"
    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST_RE.match(digest):
            raise error(f"{original!r}: bad digest {digest!r}; {hint}")
    host, sep, path = text.partition("/")
    if not sep or not names_registry(host) or not _HOST_RE.match(host):
        raise error(f"{original!r}: no registry host; {hint}")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise error(
                f"{original!r}: bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128); {hint}"
            )
    if not path or not all(REPOSITORY_COMPONENT_RE.match(c) for c in path.split("/")):
        raise error(
            f"{original!r}: bad repository name {path!r} (lowercase letters, digits, '.', '_', '-'); {hint}"
        )
    if tag is None and digest is None:
        tag = default_tag
    return Reference(host, path, tag, digest)


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    return host in ("localhost", "[::1]") or host.startswith("127.")


def default_scheme(registry: str, env: Mapping[str, str] | None = None) -> str:
    """Plain http for loopback registries (docker's insecure default) and those listed in
    ``SWSTACK_INSECURE_REGISTRIES`` (comma separated); https for everything else."""
    env = os.environ if env is None else env
    insecure = {h.strip() for h in env.get("SWSTACK_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return "http" if is_loopback(registry) or registry in insecure else "https"


# ----------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, waiting ``initial * factor**n`` (at most ``maximum``) between them."""

    attempts: int = 5
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0

    def delays(self) -> tuple[float, ...]:
        """The waits between tries: ``attempts - 1`` of them."""
        return tuple(
            min(self.maximum, self.initial * self.factor**n) for n in range(max(0, self.attempts - 1))
        )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, error: type[SwstackError] = PushError
    ) -> RetryPolicy:
        """``SWSTACK_REGISTRY_RETRIES`` (tries) and ``SWSTACK_REGISTRY_BACKOFF`` (first wait, s).

        A bad value is ``error``: the client's own class, so a host refuses it with exit 11."""
        env = os.environ if env is None else env
        base = cls()
        try:
            attempts = int(env.get("SWSTACK_REGISTRY_RETRIES", base.attempts))
            initial = float(env.get("SWSTACK_REGISTRY_BACKOFF", base.initial))
        except ValueError as exc:
            raise error(
                f"SWSTACK_REGISTRY_RETRIES/SWSTACK_REGISTRY_BACKOFF: not a number ({exc})"
            ) from exc
        return cls(
            attempts=max(1, attempts), initial=max(0.0, initial), factor=base.factor, maximum=base.maximum
        )


def is_transient_status(status: int) -> bool:
    """Worth another try: the registry is overloaded or briefly broken."""
    return status in (408, 429) or (status >= 500 and status != 501)


class _Transient(Exception):
    """A failure worth retrying; carries a redacted description."""

    def __init__(self, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


# ----------------------------------------------------------------------------- credentials and auth


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def secrets(self) -> tuple[str, ...]:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return (self.password, token)


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def load_credentials(
    registry: str, env: Mapping[str, str] | None = None, docker_config: Path | None = None
) -> Credentials | None:
    """Credentials for ``registry``: the environment first, then docker's ``auths``."""
    env = os.environ if env is None else env
    user, password = env.get("SWSTACK_REGISTRY_USER"), env.get("SWSTACK_REGISTRY_PASSWORD")
    if user and password is not None:
        return Credentials(user, password)
    path = docker_config or docker_config_path(env)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warn(f"{path}: unreadable ({type(exc).__name__}); ignoring it for registry credentials")
        return None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _auth_key_host(key) == registry and isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                log.warn(f"{path}: auths[{key!r}].auth is not base64 'user:password'; ignoring it")
                return None
            return Credentials(user, password)
    return None


def _auth_key_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000`` (docker keeps several spellings)."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "bearer" | "basic" | other, lowercase
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str | None) -> Challenge | None:
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def authorization_for(challenge: Challenge, credentials: Credentials | None, token: str | None) -> str | None:
    """The ``Authorization`` header answering ``challenge``, or None when we have nothing to offer."""
    if challenge.scheme == "bearer":
        return f"Bearer {token}" if token else None
    if challenge.scheme == "basic":
        return credentials.basic() if credentials else None
    return None


def token_request_url(challenge: Challenge, scope: str) -> str:
    """Where to ask for a bearer token: ``realm?service=...&scope=...``.

    Our own scope wins over the challenge's: a push asks for ``pull,push`` at once,
    where the challenge to its first HEAD names ``pull`` only (one token, not two).
    """
    realm = challenge.params.get("realm")
    if not realm:
        raise PushError("the registry asked for a bearer token but named no realm to get one from")
    query = {
        k: v
        for k, v in (
            ("service", challenge.params.get("service")),
            ("scope", scope or challenge.params.get("scope")),
        )
        if v
    }
    return realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)


_AUTH_HEADER_RE = re.compile(r"(?i)\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+")
_USERINFO_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from a message: known secrets, auth headers, URL user info."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)} ***", text)
    return _USERINFO_RE.sub(lambda m: f"{m.group(1)}***@", text)


def _public_url(url: str) -> str:
    """A URL fit for a message: no query (upload state), no user info."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not parseable (a registry's bad realm or Location): cut it by hand
        return _USERINFO_RE.sub(r"\1", url.split("?", 1)[0])
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ----------------------------------------------------------------------------- descriptors


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: Any, error: type[SwstackError]) -> Descriptor:
        try:
            descriptor = cls(
                str(data["mediaType"]),
                str(data["digest"]),
                int(data["size"]),
                dict(data.get("annotations") or {}),
            )
            if descriptor.size < 0:  # else read as a short download, retried, and blamed on the network
                raise ValueError("negative size")
            return descriptor
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise error(f"malformed descriptor in the registry's manifest: {data!r}") from exc


# Tags that name no version: cosign's signatures (``sha256-<hex>.sig``, ``.att``, ``.sbom``) and the
# OCI 1.1 referrers fallback index (``sha256-<hex>``), which signing and attesting add beside each tag.
_ATTACHMENT_TAG = re.compile(r"sha256-[0-9a-f]{64}(\.[a-z]+)?")


def is_attachment_tag(tag: str) -> bool:
    """Whether ``tag`` holds signatures or referrers of a digest, not an image or artifact of its own."""
    return _ATTACHMENT_TAG.fullmatch(tag) is not None


@dataclass(frozen=True)
class ManifestDoc:
    """A manifest as the registry served it: its bytes, digest and media type."""

    media_type: str
    digest: str
    data: bytes

    def json(self) -> dict[str, Any]:
        parsed = json.loads(self.data)
        if not isinstance(parsed, dict):
            raise ValueError("manifest is not a JSON object")
        return parsed


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable bytes (sorted keys, no spaces), so one artifact always renders one digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def render_manifest(
    *,
    config: Descriptor,
    layers: Sequence[Descriptor],
    annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
    subject: Mapping[str, Any] | None = None,
) -> bytes:
    """An OCI image manifest as canonical JSON: an image's, an artifact's (``artifact_type`` set)
    or a referrer's (``subject`` set). The one renderer, so equal content is one digest."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = dict(subject)
    return canonical_json(doc)


# conda's platform names (``manifest.host_platform``) -> OCI's os and architecture.
_OCI_OS = {"osx": "darwin", "win": "windows"}
_OCI_ARCH = {"64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "32": "386"}


def oci_platform(platform: str) -> tuple[str, str]:
    """``linux-64`` -> ``("linux", "amd64")``, ``linux-aarch64`` -> ``("linux", "arm64")``."""
    os_name, _, arch = platform.partition("-")
    return _OCI_OS.get(os_name, os_name), _OCI_ARCH.get(arch, arch)


def pick_from_index(
    index: Mapping[str, Any],
    platform: str,
    *,
    error: type[SwstackError],
    what: str,
    artifact_type: str | None = None,
) -> str:
    """The digest of the entry of a multi-platform index for ``platform`` (conda's name).

    An entry naming that os and architecture wins; else one naming no platform (a
    publisher's only build). With ``artifact_type``, entries of that type are preferred.
    """
    raw = index.get("manifests") or []
    if not isinstance(raw, list):
        raise error(f"{what}: malformed index: manifests is {type(raw).__name__}, not a list")
    # A platform that is not an object is no platform this host can match (a registry's JSON is anyone's).
    entries = [
        d for d in raw
        if isinstance(d, dict) and "digest" in d and isinstance(d.get("platform") or {}, dict)
    ]  # fmt: skip
    if artifact_type:
        entries = [d for d in entries if d.get("artifactType") == artifact_type] or entries
    want = oci_platform(platform)
    for entry in entries:
        plat = entry.get("platform") or {}
        if plat and (plat.get("os", want[0]), plat.get("architecture", want[1])) == want:
            return str(entry["digest"])
    for entry in entries:
        if not entry.get("platform"):
            return str(entry["digest"])
    raise error(f"{what}: the index has no entry for {want[0]}/{want[1]} (platform {platform})")


# ----------------------------------------------------------------------------- the client


class _FileSlice:
    """``length`` bytes of a file from ``offset``, sent once in 1 MiB pieces, counting progress.

    Iterable rather than file-like on purpose: http.client reads file-like bodies 8 KiB
    at a time, which costs a third of the throughput on a fast link.
    """

    def __init__(self, path: Path, offset: int, length: int, on_read: Callable[[int], None] | None = None):
        self.path, self.offset, self.length, self._on_read = path, offset, length, on_read
        self._fh: IO[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close(), also on errors
        self._fh.seek(self.offset)
        left = self.length
        while left > 0:
            data = self._fh.read(min(_READ, left))
            if not data:
                raise OSError(f"{self.path} shrank while being uploaded")
            left -= len(data)
            if self._on_read:
                self._on_read(len(data))
            yield data

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class _Session:
    """An open blob upload: where to send the next bytes, and how many the registry has."""

    location: str
    offset: int


@dataclass
class _Reply:
    status: int
    headers: email.message.Message
    body: bytes
    url: str


class RegistryClient:
    """One registry: requests with auth, retries and redaction; blob, manifest and tag calls.

    ``error`` is the exception class raised for failures: ``PushError`` on the build
    side, ``ActivateError`` on the host side.
    """

    def __init__(
        self,
        registry: str,
        *,
        scheme: str | None = None,
        credentials: Credentials | None | bool = True,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK,
        error: type[SwstackError] = PushError,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.registry = registry
        self.base = f"{scheme or default_scheme(registry)}://{registry}"
        # True: look credentials up (environment, docker config); None/False: anonymous.
        self.credentials = load_credentials(registry) if credentials is True else (credentials or None)
        self.retry = retry or RetryPolicy.from_env(error=error)
        self.timeout = timeout
        self.chunk_size = max(1, chunk_size)
        self.error = error
        self._sleep = sleep
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._secrets: set[str] = set(self.credentials.secrets() if self.credentials else ())
        self.uploaded: list[str] = []  # digests whose bytes this client sent
        self.skipped: list[str] = []  # digests the registry already had
        # Our own opener: no automatic proxy for loopback, errors handled here.
        handlers: list[urllib.request.BaseHandler] = []
        if is_loopback(registry):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    # -- messages

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _fail(self, message: str) -> SwstackError:
        """The error to raise, secrets removed. Callers raise it ``from None``: a chained
        urllib exception could carry a request with our Authorization header."""
        return self.error(self._redact(message))

    # -- the request core

    def _request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        ok: Collection[int],
        headers: Mapping[str, str] | None = None,
        body: bytes | _FileSlice | None = None,
        consume: Callable[[IO[bytes], email.message.Message], None] | None = None,
        retry: bool = True,
    ) -> _Reply:
        """Send one request; answer auth challenges; retry transient failures unless told not to.

        Statuses in ``ok`` are returned; other 4xx raise ``self.error`` at once; 5xx,
        429 and connection failures are retried (when ``retry``) and then raise.
        With ``consume`` a successful body is handed to it as a stream.
        """
        delays = self.retry.delays() if retry else ()
        started = time.monotonic()
        attempt = 0
        auth_refreshed = False
        while True:
            attempt += 1
            try:
                reply = self._send_once(method, url, scope, ok, headers, body, consume)
            except _AuthNeeded as need:
                if auth_refreshed:
                    raise self._fail(self._auth_failed_message(method, url)) from None
                self._authenticate(need.challenge, scope)
                auth_refreshed = True
                attempt -= 1  # answering a challenge is not a failure
                continue
            except _Transient as exc:
                if not retry:
                    raise  # the caller retries at a higher level (a whole upload session)
                if attempt > len(delays):
                    took = time.monotonic() - started
                    raise self._fail(
                        f"{method} {_public_url(url)}: {exc.detail} "
                        f"(gave up after {attempt} attempt{'s' if attempt > 1 else ''} in {took:.1f}s); "
                        "the registry is unreachable or failing: check it is up, then retry"
                    ) from None
                wait = delays[attempt - 1]
                if exc.retry_after is not None:
                    wait = min(max(wait, exc.retry_after), self.retry.maximum)
                log.debug(f"{method} {_public_url(url)}: {exc.detail}; retrying in {wait:.1f}s")
                self._sleep(wait)
                continue
            return reply

    def _send_once(
        self,
        method: str,
        url: str,
        scope: str,
        ok: Collection[int],
        headers: Mapping[str, str] | None,
        body: bytes | _FileSlice | None,
        consume: Callable[[IO[bytes], email.message.Message], None] | None,
    ) -> _Reply:
        request = urllib.request.Request(url, method=method, data=body)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if body is not None:
            length = len(body) if isinstance(body, bytes) else body.length
            request.add_header("Content-Length", str(length))
            request.add_unredirected_header("Content-Length", str(length))
        auth = self._auth.get(scope) or self._auth.get("*")
        if auth:
            # Unredirected: a blob redirect to storage must not carry our credentials.
            request.add_unredirected_header("Authorization", auth)
        response: http.client.HTTPResponse | urllib.error.HTTPError
        try:
            try:
                response = self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as http_error:
                response = http_error
            with response:
                status = response.status if isinstance(response, http.client.HTTPResponse) else response.code
                status = int(status or 0)
                hdrs = response.headers
                if status in ok:
                    if consume is not None and 200 <= status < 300:
                        consume(response, hdrs)
                        return _Reply(status, hdrs, b"", response.geturl())
                    return _Reply(status, hdrs, response.read(), response.geturl())
                payload = response.read(65536)
        except (_Transient, _AuthNeeded, SwstackError):
            raise
        except urllib.error.URLError as exc:
            raise self._classify(exc.reason, method, url) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._classify(exc, method, url) from None
        except ValueError as exc:  # urllib's answer to a malformed URL, e.g. a redirect's Location
            raise self._fail(f"{method} {_public_url(url)}: {self._redact(str(exc))}") from None
        finally:
            if isinstance(body, _FileSlice):
                body.close()
        if status == 401:
            challenge = parse_challenge(hdrs.get("WWW-Authenticate"))
            if challenge is None:
                raise self._fail(f"{method} {_public_url(url)}: 401 Unauthorized with no challenge to answer")
            raise _AuthNeeded(challenge)
        detail = f"{status} {_reason(status)}{_registry_errors(payload)}"
        if is_transient_status(status):
            raise _Transient(detail, _retry_after(hdrs.get("Retry-After")))
        raise self._fail(f"{method} {_public_url(url)}: {detail}{_hint(status)}")

    def _classify(self, reason: object, method: str, url: str) -> Exception:
        if isinstance(reason, ssl.SSLError):
            return self._fail(
                f"{method} {_public_url(url)}: TLS failed ({reason}); if this registry speaks plain http, "
                "list it in SWSTACK_INSECURE_REGISTRIES"
            )
        if isinstance(reason, socket.gaierror):
            return self._fail(
                f"{method} {_public_url(url)}: cannot resolve the registry host ({reason.strerror})"
            )
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return _Transient(f"{type(reason).__name__}: {self._redact(text or 'connection failed')}")

    def _auth_failed_message(self, method: str, url: str) -> str:
        if self.credentials is None:
            return (
                f"{method} {_public_url(url)}: the registry requires credentials and none were found; "
                "set SWSTACK_REGISTRY_USER and SWSTACK_REGISTRY_PASSWORD, or `docker login "
                f"{self.registry}`"
            )
        return (
            f"{method} {_public_url(url)}: the registry rejected the credentials of "
            f"{self.credentials.username!r} (wrong password, or no access to this repository)"
        )

    def _authenticate(self, challenge: Challenge, scope: str) -> None:
        token = None
        if challenge.scheme == "bearer":
            token = self._fetch_token(challenge, scope)
            self._secrets.add(token)
        value = authorization_for(challenge, self.credentials, token)
        if value is None:
            if challenge.scheme not in ("basic", "bearer"):
                raise self._fail(f"{self.registry}: unsupported authentication scheme {challenge.scheme!r}")
            raise self._fail(self._auth_failed_message("GET", self.base + "/v2/"))
        # Basic credentials serve every scope; a bearer token only the one it was issued for.
        self._auth["*" if challenge.scheme == "basic" else scope] = value

    def _fetch_token(self, challenge: Challenge, scope: str) -> str:
        try:
            url = token_request_url(challenge, scope)
        except PushError as exc:  # as this client's error (ActivateError on a host); no secret in it
            raise self.error(f"{self.registry}: {exc}") from None
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        reply = self._request_plain("GET", url, headers)
        try:
            data = json.loads(reply)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._fail(f"GET {_public_url(url)}: the token service answered without a token")
        return token

    def _request_plain(self, method: str, url: str, headers: Mapping[str, str]) -> bytes:
        """A request to the token service: retried like the others, no challenge handling."""
        delays = self.retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                request = urllib.request.Request(url, method=method)  # the realm is the registry's text
                for key, value in headers.items():
                    request.add_unredirected_header(key, value)
                with self._opener.open(request, timeout=self.timeout) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise self._fail(self._auth_failed_message(method, url)) from None
                if not is_transient_status(exc.code) or attempt == len(delays):
                    raise self._fail(f"{method} {_public_url(url)}: {exc.code} {_reason(exc.code)}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if attempt == len(delays):
                    raise self._fail(f"{method} {_public_url(url)}: {type(exc).__name__}") from None
            except ValueError as exc:  # a realm that is no URL: retrying cannot mend it
                raise self._fail(
                    f"{method} {_public_url(url)}: not a URL ({exc}); the registry's token realm is malformed"
                ) from None
            self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    # -- endpoints

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{path}"

    @staticmethod
    def _scope(repository: str, push: bool = False) -> str:
        return f"repository:{repository}:{'pull,push' if push else 'pull'}"

    def ping(self) -> None:
        """Check the registry answers the v2 API (401 counts: it is there, wanting auth)."""
        reply = self._request("GET", f"{self.base}/v2/", scope="", ok=(200, 401))
        if reply.status == 200 and "registry/2.0" not in (
            reply.headers.get("Docker-Distribution-API-Version") or "registry/2.0"
        ):
            raise self._fail(f"{self.base}/v2/: this does not look like an OCI distribution registry")

    def blob_exists(self, repository: str, digest: str, *, push: bool = False) -> bool:
        reply = self._request(
            "HEAD",
            self._url(f"{repository}/blobs/{digest}"),
            scope=self._scope(repository, push),
            ok=(200, 404),
        )
        return reply.status == 200

    def push_blob(self, repository: str, source: Path | bytes, digest: str, size: int) -> bool:
        """Upload a blob unless the registry has it; True when bytes were sent.

        Blobs up to ``chunk_size`` go in one PUT, larger ones as PATCH chunks then a
        closing PUT. After a failure inside a chunked upload the registry is asked how
        much it kept (GET on the upload, ``Range: 0-N``) and the upload resumes there;
        when it cannot say, a new upload starts. All within the retry budget.
        """
        if self.blob_exists(repository, digest, push=True):
            log.debug(f"{repository}: blob {digest[:19]} already present")
            self.skipped.append(digest)
            return False
        delays = self.retry.delays()
        session: _Session | None = None
        with _progress(f"upload {digest[7:19]}", size) as bar:
            for attempt in range(len(delays) + 1):
                try:
                    if session is None:
                        session = self._start_upload(repository)
                    bar.done = session.offset
                    self._send_blob(repository, session, source, digest, size, bar.advance)
                    self.uploaded.append(digest)
                    return True
                except _Transient as exc:
                    if attempt == len(delays):
                        where = f"{self.registry}/{repository}"
                        raise self._fail(
                            f"uploading {digest[:19]} ({log.human_bytes(size)}) to {where}: {exc.detail} "
                            f"(gave up after {attempt + 1} attempts); check the registry, then retry"
                        ) from None
                    log.info(
                        f"upload of {digest[:19]} interrupted ({exc.detail}); again in {delays[attempt]:.1f}s"
                    )
                    self._sleep(delays[attempt])
                    session = self._resume_point(repository, session, chunked=size > self.chunk_size)
        raise AssertionError("unreachable")

    def _start_upload(self, repository: str) -> _Session:
        scope = self._scope(repository, push=True)
        start = self._request("POST", self._url(f"{repository}/blobs/uploads/"), scope=scope, ok=(202,))
        return _Session(self._location(start), 0)

    def _resume_point(self, repository: str, session: _Session | None, *, chunked: bool) -> _Session | None:
        """Where an interrupted chunked upload can go on, or None to start a new one."""
        if session is None or not chunked:
            return None
        try:
            reply = self._request(
                "GET", session.location, scope=self._scope(repository, push=True), ok=(204,), retry=False
            )
        except (_Transient, SwstackError):
            return None
        match = re.fullmatch(r"(?:bytes=)?0-(\d+)", (reply.headers.get("Range") or "").strip())
        # "0-0" means either nothing or one byte: ambiguous, so start over.
        if match is None or int(match.group(1)) == 0:
            return None
        offset = int(match.group(1)) + 1
        log.info(f"resuming the upload at {log.human_bytes(offset)}")
        return _Session(self._location(reply), offset)

    def _send_blob(
        self,
        repository: str,
        session: _Session,
        source: Path | bytes,
        digest: str,
        size: int,
        advance: Callable[[int], None],
    ) -> None:
        """Send the blob's bytes from ``session.offset`` and close the upload with its digest."""
        scope = self._scope(repository, push=True)
        octet = {"Content-Type": "application/octet-stream"}
        if isinstance(source, bytes) or size <= self.chunk_size:
            body = source if isinstance(source, bytes) else _FileSlice(source, 0, size, advance)
            self._request(
                "PUT",
                _with_digest(session.location, digest),
                scope=scope,
                ok=(201,),
                headers=octet,
                body=body,
                retry=False,
            )
            if isinstance(source, bytes):
                advance(size)
            return
        while session.offset < size:
            length = min(self.chunk_size, size - session.offset)
            reply = self._request(
                "PATCH",
                session.location,
                scope=scope,
                ok=(202,),
                headers={**octet, "Content-Range": f"{session.offset}-{session.offset + length - 1}"},
                body=_FileSlice(source, session.offset, length, advance),
                retry=False,
            )
            session.location = self._location(reply)
            session.offset += length
        self._request(
            "PUT", _with_digest(session.location, digest), scope=scope, ok=(201,), body=b"", retry=False
        )

    def _location(self, reply: _Reply) -> str:
        location = reply.headers.get("Location")
        if not location:
            raise self._fail(f"{self.registry}: upload answered without a Location header")
        return urllib.parse.urljoin(reply.url, location)

    def pull_blob(self, repository: str, digest: str, dest: Path, size: int | None = None) -> None:
        """Stream a blob into ``dest`` (atomically), checking its size and sha256."""
        if not digest.startswith("sha256:"):
            raise self._fail(f"{self.registry}/{repository}: unsupported digest algorithm in {digest!r}")
        with atomic_output(dest) as partial, _progress(f"download {dest.name}", size) as bar:

            def consume(stream: IO[bytes], _headers: email.message.Message) -> None:
                hasher = hashlib.sha256()
                bar.done = 0
                with open(partial, "wb") as out:
                    while chunk := stream.read(_READ):
                        hasher.update(chunk)
                        out.write(chunk)
                        bar.advance(len(chunk))
                got = "sha256:" + hasher.hexdigest()
                if size is not None and bar.done != size:
                    raise _Transient(f"short read: {bar.done} of {size} bytes")
                if got != digest:
                    raise self._fail(
                        f"{self.registry}/{repository}: blob {digest} arrived with digest {got}; "
                        "the registry's copy is corrupt: publish the artifact again"
                    )

            self._request(
                "GET",
                self._url(f"{repository}/blobs/{digest}"),
                scope=self._scope(repository),
                ok=(200,),
                consume=consume,
            )

    def get_manifest(self, repository: str, reference: str) -> ManifestDoc:
        """Fetch a manifest or index by tag or digest; a digest reference is verified."""
        reply = self._request(
            "GET",
            self._url(f"{repository}/manifests/{reference}"),
            scope=self._scope(repository),
            ok=(200, 404),
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        )
        if reply.status == 404:
            raise self._fail(self._not_found_message(repository, reference))
        digest = digest_of(reply.body)
        if reference.startswith("sha256:") and digest != reference:
            raise self._fail(
                f"{self.registry}/{repository}@{reference}: the registry served a manifest of digest {digest}"
            )
        media_type = (reply.headers.get("Content-Type") or "").split(";")[0].strip()
        if media_type not in MANIFEST_ACCEPT:
            with suppress(ValueError, AttributeError):
                media_type = str(json.loads(reply.body).get("mediaType") or media_type)
        return ManifestDoc(media_type, digest, reply.body)

    def head_manifest(self, repository: str, reference: str, *, push: bool = False) -> str | None:
        """The digest ``reference`` points to, or None when there is no such tag (``push``: asked
        on the way to a push, so it shares the push's token)."""
        reply = self._request(
            "HEAD",
            self._url(f"{repository}/manifests/{reference}"),
            scope=self._scope(repository, push),
            ok=(200, 404),
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        )
        if reply.status == 404:
            return None
        return reply.headers.get("Docker-Content-Digest") or self.get_manifest(repository, reference).digest

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        self._request(
            "PUT",
            self._url(f"{repository}/manifests/{reference}"),
            scope=self._scope(repository, push=True),
            ok=(201,),
            headers={"Content-Type": media_type},
            body=data,
        )
        return digest_of(data)

    def list_tags(self, repository: str, page_size: int = 100) -> list[str]:
        """Every tag of ``repository``, following the ``Link: <...>; rel="next"`` pages."""
        url: str | None = self._url(f"{repository}/tags/list?n={page_size}")
        tags: list[str] = []
        pages = 0
        while url is not None and pages < 10_000:
            pages += 1
            reply = self._request("GET", url, scope=self._scope(repository), ok=(200, 404))
            if reply.status == 404:
                return []
            try:
                tags.extend(json.loads(reply.body).get("tags") or [])
            except (ValueError, AttributeError) as exc:
                raise self._fail(f"{_public_url(url)}: the tag list is not JSON ({exc})") from None
            url = _next_link(reply.headers.get("Link"), reply.url)
        return tags

    def _not_found_message(self, repository: str, reference: str) -> str:
        message = f"{self.registry}/{repository}:{reference}: no such tag or digest in the registry"
        if reference.startswith("sha256:"):
            return message
        try:
            tags = self.list_tags(repository)
        except SwstackError:
            return message
        tags = [tag for tag in tags if not is_attachment_tag(tag)]  # signatures and referrers: no version
        if not tags:
            return f"{message} (the repository has no tags: publish one first)"
        near = difflib.get_close_matches(reference, tags, n=3)
        shown = ", ".join(near or sorted(tags)[-5:])
        return f"{message}; {'did you mean' if near else 'it has'}: {shown}"


class _Counter:
    """Counts transferred bytes; the silent stand-in for a progress line."""

    def __init__(self) -> None:
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n


def _progress(label: str, size: int | None) -> AbstractContextManager[log.Progress | _Counter]:
    """A progress line for big transfers; small ones count silently."""
    if size is not None and size < _QUIET_BELOW:
        return nullcontext(_Counter())
    return log.progress(label, total=size, unit="B")


class _AuthNeeded(Exception):
    def __init__(self, challenge: Challenge):
        super().__init__(challenge.scheme)
        self.challenge = challenge


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + urllib.parse.quote(digest, safe="")


def _next_link(header: str | None, base: str) -> str | None:
    if not header:
        return None
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', header)
    return urllib.parse.urljoin(base, match.group(1)) if match else None


def _reason(status: int) -> str:
    return http.client.responses.get(status, "")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _registry_errors(payload: bytes) -> str:
    """The registry's own error codes and messages (``{"errors": [{"code", "message"}]}``)."""
    try:
        errors = json.loads(payload).get("errors") or []
        parts = [
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        return ""
    return f" ({'; '.join(parts)})" if parts else ""


def _hint(status: int) -> str:
    return {
        403: "; the credentials in use may not push to or pull from this repository",
        404: "; check the repository name",
        413: "; the registry (or a proxy in front of it) refuses bodies this large: lower the chunk size",
    }.get(status, "")


# ----------------------------------------------------------------------------- pushing


@dataclass(frozen=True)
class Blob:
    """One blob to push and where its bytes are: a file, bytes, or a function that makes the
    file (called only when the registry lacks the blob: a base layer fetched from elsewhere)."""

    descriptor: Descriptor
    source: Path | bytes | Callable[[], Path]


@dataclass(frozen=True)
class PushOutcome:
    digest: str  # of the manifest
    uploaded: tuple[str, ...]  # blob digests sent, in order, once each
    skipped: tuple[str, ...]  # blob digests the registry already had


def push_manifest(
    client: RegistryClient,
    repository: str,
    blobs: Sequence[Blob],
    manifest: bytes,
    *,
    tags: Sequence[str] = (),
    media_type: str = OCI_MANIFEST,
    fixed: Sequence[str] = (),
) -> PushOutcome:
    """Push what a manifest needs, then the manifest: the one push routine (images, artifacts).

    Blobs the registry lacks go first, then the manifest once per tag (by its digest when
    there is no tag): a push that fails on the way leaves every tag where it was. A ``fixed``
    tag (a version) that names another manifest already is refused before a byte is sent.
    """
    digest = digest_of(manifest)
    sent, had = len(client.uploaded), len(client.skipped)
    with before_the_manifest(client, repository):
        for tag in fixed:
            refuse_moving(client, repository, tag, digest)
        for blob in blobs:
            d, source = blob.descriptor, blob.source
            if callable(source):
                if client.blob_exists(repository, d.digest, push=True):
                    client.skipped.append(d.digest)
                    continue
                source = source()
            client.push_blob(repository, source, d.digest, d.size)
    for reference in tags or (digest,):
        client.put_manifest(repository, reference, manifest, media_type)
    return PushOutcome(
        digest,
        tuple(dict.fromkeys(client.uploaded[sent:])),
        tuple(dict.fromkeys(client.skipped[had:])),
    )


@contextmanager
def before_the_manifest(client: RegistryClient, repository: str) -> Iterator[None]:
    """A failure on the way to a push's manifest says that no tag moved, which a release engineer
    would otherwise have to find out from the registry."""
    try:
        yield
    except SwstackError as exc:
        stopped = f"the push stopped before the manifest: no tag of {repository} moved"
        raise client.error(f"{exc}\n{stopped}") from None


def refuse_moving(client: RegistryClient, repository: str, tag: str, digest: str) -> None:
    """A version tag names one content for good: hosts that activated it, and menus pinned to it,
    would otherwise get other bytes under the same version (a fresh checkout numbers its
    versions from its own artifacts directory, so it can reuse one the registry has)."""
    there = client.head_manifest(repository, tag, push=True)
    if there is not None and there != digest:
        raise client.error(
            f"{client.registry}/{repository}:{tag} already names other content ({there[:19]}); nothing was sent: "
            "a version is pushed once, so build a new version, or delete that tag from the registry first"
        )


# ----------------------------------------------------------------------------- the swstack artifact


def fetch_artifact(ref: str, dest_dir: Path, *, retry: RetryPolicy | None = None) -> Path:
    """Download the artifact ``ref`` into ``dest_dir``; return the tarball's path.

    Writes ``manifest.json``, the tarball (title from the registry, checked against
    the manifest) and ``<tarball>.sha256``. Every blob's digest is verified; a
    tarball already in ``dest_dir`` with the right digest is not downloaded again.
    """
    reference = parse_reference(ref, error=ActivateError)
    client = RegistryClient(reference.registry, retry=retry, error=ActivateError)
    repo = reference.repository
    doc = client.get_manifest(repo, reference.reference)
    if doc.media_type in (OCI_INDEX, DOCKER_LIST):
        doc = client.get_manifest(
            repo,
            pick_from_index(
                _manifest_json(doc, reference), host_platform(), error=ActivateError, what=str(reference),
                artifact_type=ARTIFACT_TYPE,
            ),
        )  # fmt: skip
    manifest_json = _manifest_json(doc, reference)
    try:
        layout = artifact_layout(manifest_json, error=ActivateError)
    except ActivateError as exc:  # named: in a release of several stacks, which source was refused
        raise ActivateError(f"{reference}: {exc}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = dest_dir / "manifest.json"
    client.pull_blob(repo, layout.manifest.digest, manifest_path, layout.manifest.size)
    stack_manifest = _load_stack_manifest(manifest_path, reference)
    name = layout.tarball.annotations[TITLE]
    expected = layout.tarball.digest.removeprefix("sha256:")
    if stack_manifest.tarball is not None and (
        stack_manifest.tarball.sha256 != expected or stack_manifest.tarball.name != name
    ):
        raise ActivateError(
            f"{reference}: the artifact's manifest.json describes {stack_manifest.tarball.name} "
            f"(sha256 {stack_manifest.tarball.sha256[:12]}), the layer is {name} (sha256 {expected[:12]}); "
            "the artifact is inconsistent: publish it again"
        )
    tarball = dest_dir / name
    if _already_there(tarball, layout.tarball):
        log.info(f"{name}: already downloaded, digest verified")
    else:
        log.info(f"fetching {reference} ({log.human_bytes(layout.tarball.size)})")
        client.pull_blob(repo, layout.tarball.digest, tarball, layout.tarball.size)
    atomic_write_text(checksum_path(tarball), checksum_line(expected, name))
    return tarball


def _manifest_json(doc: ManifestDoc, reference: Reference) -> dict[str, Any]:
    """The manifest or index the registry served, as an object; anything else is one refusal."""
    try:
        return doc.json()
    except ValueError as exc:
        raise ActivateError(f"{reference}: the registry's manifest is not valid JSON ({exc})") from None


def _already_there(path: Path, blob: Descriptor) -> bool:
    try:
        return path.stat().st_size == blob.size and "sha256:" + sha256_file(path) == blob.digest
    except OSError:
        return False


def _load_stack_manifest(path: Path, reference: Reference) -> Manifest:
    try:
        return load_manifest(path)
    except ArtifactError as exc:
        raise ActivateError(f"{reference}: the artifact's manifest.json is unreadable ({exc})") from None


def list_tags(repo_ref: str, *, retry: RetryPolicy | None = None) -> list[str]:
    """The tags of ``host[:port]/name`` (a tag or digest in ``repo_ref`` is ignored), sorted."""
    reference = parse_reference(repo_ref, default_tag=None)
    client = RegistryClient(reference.registry, retry=retry)
    return sorted(client.list_tags(reference.repository))
