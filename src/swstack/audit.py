"""Installed prefix -> the files that still hold a foreign prefix (empty means the tree is clean).

A tree built at ``/data0/sw/<name>`` must not mention where it was really built: the build
directory's real path, an unreplaced packaging placeholder, or the build machine's home.
Any of those would break (or leak) on a notebook host. Text and ELF files are scanned;
records of where packages came from (``conda-meta/*.json``, ``direct_url.json``) are not,
since they describe the origin rather than being used at run time.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

# conda-build's and rattler-build's placeholders, which installers replace with the prefix.
PLACEHOLDERS = (b"/opt/anaconda1anaconda2anaconda3", b"placehold_placehold_placehold")
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the prefix
    needle: str
    kind: str  # "ELF" | "text"


@dataclass(frozen=True)
class Needles:
    """What must not appear in any file, and what must not appear in text files."""

    anywhere: tuple[bytes, ...]
    in_text: tuple[bytes, ...]


def needles_for(build_dir: Path, home: Path | None) -> Needles:
    """The build dir's real path and the placeholders anywhere; the home directory in text.

    Compiled extensions from package indexes often carry their build machine's paths
    (``/root/project/...``) in debug strings that nothing reads at run time; the home
    directory is a real leak where it is used: scripts, configuration, kernel specs.
    """
    in_text: tuple[bytes, ...] = ()
    if home is not None and str(home) not in ("/", ""):
        in_text = (str(home).rstrip("/").encode() + b"/",)
    return Needles((str(build_dir.resolve()).encode(), *PLACEHOLDERS), in_text)


def _skipped(rel: str) -> bool:
    return (rel.startswith("conda-meta/") and rel.endswith(".json")) or rel.endswith(".dist-info/direct_url.json") \
        or rel.endswith(".pyc")


def _kind(head: bytes) -> str | None:
    if head.startswith(ELF_MAGIC):
        return "ELF"
    if b"\x00" in head:
        return None  # other binary formats (images, archives) do not carry paths that are used
    return "text"


def scan_file(path: Path, needles: Needles) -> tuple[str, bytes] | None:
    """(kind, first needle found) for a text or ELF file holding a needle, else None."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None
        with open(path, "rb") as fh:
            kind = _kind(fh.read(1024))
            if kind is None:
                return None
            wanted = needles.anywhere + (needles.in_text if kind == "text" else ())
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for needle in wanted:
                    if data.find(needle) != -1:
                        return kind, needle
    except (OSError, ValueError):
        return None
    return None


def scan_tree(prefix: Path, needles: Needles) -> list[Finding]:
    findings = []
    for root, _dirs, files in os.walk(prefix):
        for name in files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            rel = str(path.relative_to(prefix))
            if _skipped(rel):
                continue
            hit = scan_file(path, needles)
            if hit:
                findings.append(Finding(rel, hit[1].decode(errors="replace"), hit[0]))
    return sorted(findings, key=lambda f: f.path)


def report(prefix: str, findings: Iterable[Finding], limit: int = 40) -> str:
    items = list(findings)
    lines = [f"{prefix}: {len(items)} file(s) still hold a foreign prefix:"]
    lines += [f"  {f.kind:4} {f.path}: contains {f.needle!r}" for f in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    lines.append("A package or step baked in a path other than the production prefix; fix its recipe "
                 "or the stack's kernel specs, then rebuild.")
    return "\n".join(lines)


def audit(host_prefix: Path, prefix: str, build_dir: Path, home: Path | None = None) -> None:
    """Raise ``BuildError`` with a per-file report when the tree holds a foreign prefix."""
    findings = scan_tree(host_prefix, needles_for(build_dir, home if home is not None else Path.home()))
    if findings:
        raise BuildError(report(prefix, findings))
