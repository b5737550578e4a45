"""A source (path, directory, http(s) URL, OCI reference) -> a local artifact: tarball, checksum, manifest.

An artifact directory holds ``<stack>-<version>-<platform>.tar.zst`` (or ``.tar.gz``),
``<tarball>.sha256`` in sha256sum format and ``manifest.json``. Downloads stream to
disk (never memory) under ``<root>/.swstack/downloads`` and are renamed when complete.
"""

from __future__ import annotations

import functools
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .. import log
from ..artifact import (
    CHECKSUM_SUFFIX,
    MANIFEST_NAME,
    checksum_path,
    load_manifest,
    names_registry,
    reraise,
    tarball_path,
)
from ..errors import ActivateError, SwstackError
from ..fsutil import atomic_output
from ..manifest import Manifest

# Without ``oci://``, a reference needs a tag or a digest (so ``./art.d/py3`` stays a path), and
# may have both, and a bracketed IPv6 host, as docs/registry.md writes references.
_OCI_RE = re.compile(
    r"^(oci://)?(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.\-]+)(:\d+)?/[^\s:@]+"
    r"(:[\w.\-]+|(:[\w.\-]+)?@sha256:[0-9a-f]{64})$"
)
_TIMEOUT = 60.0


@dataclass(frozen=True)
class Artifact:
    tarball: Path
    checksum_file: Path | None
    manifest: Manifest
    source: str


def kind_of(source: str) -> str:
    """'http', 'oci' or 'path' (pure)."""
    if source.startswith(("http://", "https://")):
        return "http"
    if source.startswith("oci://"):
        return "oci"
    if not Path(source).exists() and _OCI_RE.match(source) and names_registry(source.split("/", 1)[0]):
        return "oci"
    return "path"


def _load_manifest(path: Path) -> Manifest:
    with reraise(ActivateError):
        return load_manifest(path)


def from_path(source: str) -> Artifact:
    path = Path(source).expanduser()
    if path.is_dir():
        manifest = _load_manifest(path / MANIFEST_NAME)
        if manifest.tarball is None:
            raise ActivateError(f"{path / MANIFEST_NAME}: has no tarball section; pass the tarball path instead")
        with reraise(ActivateError):
            tarball = tarball_path(path, manifest)
    elif path.name == MANIFEST_NAME:
        return from_path(str(path.parent))
    elif path.is_file():
        tarball = path
        manifest = _load_manifest(path.parent / MANIFEST_NAME)
        _check_is_the_tarball(path, manifest)
    else:
        raise ActivateError(
            f"{source}: no such file or directory (expected a tarball, its directory, "
            f"an http(s) URL or an OCI reference)"
        )
    return Artifact(tarball, _checksum_file(tarball), manifest, source)


_TARBALL_SUFFIXES = (".tar.zst", ".tar.gz", ".tgz", ".tar")


def _check_is_the_tarball(path: Path, manifest: Manifest) -> None:
    """A side file of the artifact (its SBOM, provenance, ``.sha256``) given in place of the
    tarball is named as such, not measured against the tarball's size ("truncated")."""
    named = manifest.tarball.name if manifest.tarball is not None else ""
    if path.name == named or path.name.endswith(_TARBALL_SUFFIXES) or not (path.parent / named).is_file():
        return  # the tarball, maybe renamed; verified by its sha256 like any other
    raise ActivateError(
        f"{path}: not the artifact's tarball ({path.parent / MANIFEST_NAME} names {named}); "
        f"give the tarball or its directory {path.parent}"
    )


def _checksum_file(tarball: Path) -> Path | None:
    checksum = checksum_path(tarball)
    return checksum if checksum.is_file() else None


# manifest.json and the side file are small; a server streaming them without end is cut off.
_SMALL_FILE = 1 << 24


def _download(url: str, dest: Path, limit: int | None, what: str, optional: bool = False) -> Path | None:
    """``url`` streamed to ``dest``, refused past ``limit`` bytes (the root's disk must not fill
    before a size is compared); with ``optional``, a 404 is None (and any stale ``dest`` removed)."""
    # Imported here: a local activation never pays for the HTTP client (see signature._read_url).
    import urllib.error

    log.info(f"downloading {url}")
    try:
        with (
            open_url(url) as response,
            atomic_output(dest) as partial,
            open(partial, "wb") as out,
        ):
            _copy_at_most(response, out, limit, f"{url}: the server sent more than the {limit} bytes {what}; refused")
    except urllib.error.HTTPError as exc:
        if optional and exc.code == 404:
            dest.unlink(missing_ok=True)
            return None
        raise ActivateError(f"{url}: download failed ({exc}); check the URL and the network") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ActivateError(f"{url}: download failed ({exc}); check the URL and the network") from exc
    return dest


def open_url(url: str) -> Any:
    """``urlopen(url)`` with the host's redirect rule: a redirect may lead only to http or https,
    and never from https to plain http (where anyone on the path could swap what is served)."""
    return _opener().open(url, timeout=_TIMEOUT)


@functools.cache
def _opener() -> Any:
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
        ) -> urllib.request.Request | None:
            old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme.lower()
            if new not in ("http", "https") or (old == "https" and new != "https"):
                raise ActivateError(
                    f"{req.full_url}: redirected to {newurl}, from {old}:// to {new}://; refused (a download "
                    f"is never redirected off https, nor to anything but http or https): use the final URL"
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(Redirects)


# A download that brings fewer than _STALL_BYTES in a window of SWSTACK_DOWNLOAD_STALL seconds is
# stalled: the socket's timeout restarts with every byte, so a server trickling one byte a minute
# would hold the host lock for ever.
_STALL_BYTES = 64 << 10
_STALL_SECONDS = 60.0


def stall_seconds() -> float:
    text = os.environ.get("SWSTACK_DOWNLOAD_STALL", "")
    try:
        seconds = float(text) if text else _STALL_SECONDS
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ActivateError(f"SWSTACK_DOWNLOAD_STALL={text!r}: expected a number of seconds above 0")
    return seconds


def _copy_at_most(response: Any, out: BinaryIO, limit: int | None, refusal: str) -> None:
    """Copy ``response`` (one receive at a time, so a trickle is seen) to ``out``, refused past
    ``limit`` bytes or when it stalls."""
    written = 0
    window, started, since = stall_seconds(), time.monotonic(), 0
    while block := response.read1(1 << 20):
        written += len(block)
        if limit is not None and written > limit:
            raise ActivateError(refusal)
        out.write(block)
        since += len(block)
        if time.monotonic() - started >= window:
            if since < _STALL_BYTES:
                raise ActivateError(
                    f"{response.geturl()}: stalled, {since} bytes in the last {window:g} s (fewer than "
                    f"{_STALL_BYTES >> 10} KiB); refused: check the server and the network "
                    f"(SWSTACK_DOWNLOAD_STALL sets the window)"
                )
            started, since = time.monotonic(), 0


def check_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split, or one line saying why it is no URL (urllib raises ValueError for a bad
    IPv6 host or port, inside urlopen too: it is no network failure, and no traceback)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - parsing the port is what raises
    except ValueError as exc:
        raise ActivateError(f"{url}: not a valid URL ({exc})") from None
    return parsed


def sibling_url(tarball: urllib.parse.SplitResult, name: str) -> str:
    """The URL of ``name`` beside the tarball: the same query (a site's access token rides
    there, and a suffix must go on the path, not after the query), no fragment."""
    parent = tarball.path.rsplit("/", 1)[0]
    return urllib.parse.urlunsplit(tarball._replace(path=f"{parent}/{name}", fragment=""))


def from_url(url: str, downloads: Path) -> Artifact:
    parsed = check_url(url)
    name = Path(parsed.path).name
    if name.endswith(".json") or not name:
        raise ActivateError(f"{url}: point the URL at the tarball (…-<platform>.tar.zst)")
    dest_dir = downloads / re.sub(r"[^A-Za-z0-9._-]", "_", f"{parsed.netloc}{Path(parsed.path).parent}")
    tarball = dest_dir / name
    # The manifest first: the tarball's size it gives bounds the tarball's download.
    _download(sibling_url(parsed, MANIFEST_NAME), dest_dir / MANIFEST_NAME, _SMALL_FILE, "a manifest takes")
    manifest = _load_manifest(dest_dir / MANIFEST_NAME)
    size = manifest.tarball.size if manifest.tarball is not None else None
    _download(url, tarball, size, "manifest.json gives the tarball")
    # The side file is optional, as beside a local tarball: manifest.json's sha256 is what is
    # checked (verify.expectations), the side file only has to agree with it when it is there.
    checksum = _download(
        sibling_url(parsed, name + CHECKSUM_SUFFIX), checksum_path(tarball), _SMALL_FILE, "a checksum takes",
        optional=True,
    )
    return Artifact(tarball, checksum, manifest, url)


def from_oci(ref: str, downloads: Path) -> Artifact:
    try:
        from .. import oci  # imported lazily: only OCI sources need it
    except ImportError as exc:
        raise ActivateError(f"{ref}: OCI references need swstack.oci, which this installation lacks") from exc
    dest = downloads / re.sub(r"[^A-Za-z0-9._-]", "_", ref.removeprefix("oci://"))
    dest.mkdir(parents=True, exist_ok=True)
    tarball = Path(oci.fetch_artifact(ref.removeprefix("oci://"), dest))
    return Artifact(tarball, _checksum_file(tarball), _load_manifest(tarball.parent / MANIFEST_NAME), ref)


def _check_readable(artifact: Artifact) -> None:
    """Open the tarball and its side file once, so one this user may not read is refused here,
    as bad input, and not later by the extraction as a machine error."""
    for path in (artifact.tarball, artifact.checksum_file):
        if path is not None:
            with open(path, "rb"):
                pass


def fetch(source: str, downloads: Path) -> Artifact:
    """Any failure to get the artifact is an ``ActivateError`` (exit 11): nothing live changed."""
    if not source or any(ord(c) < 0x20 for c in source):
        raise ActivateError(f"{source!r}: not a source (expected a path, an http(s) URL or an OCI reference)")
    kind = kind_of(source)
    try:
        if kind == "http":
            artifact = from_url(source, downloads)
        elif kind == "oci":
            artifact = from_oci(source, downloads)
        else:
            artifact = from_path(source)
        _check_readable(artifact)
        return artifact
    except ActivateError:
        raise
    except SwstackError as exc:  # a registry error of the shared OCI client
        raise ActivateError(f"{source}: {exc}") from exc
    except (OSError, UnicodeError) as exc:
        raise ActivateError(f"{source}: cannot be read ({exc})") from exc
