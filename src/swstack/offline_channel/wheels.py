"""``channel/wheels.txt`` -> pinned wheels, fetched and hash-checked; PyPI names and markers ->
conda-forge names and run dependencies; ``wheels.in`` -> ``wheels.txt`` (``lock-wheels``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .. import log, proc
from ..errors import ChannelError
from ..fsutil import atomic_write_text, sha256_file
from .target import MARKER_ENV, PYTHON_RUN_DEP, TARGET_INTERPRETER, TARGET_TAGS_PLATFORMS, ensure_dir

# conda-forge names that differ from the normalised PyPI name and are missing from
# whl2conda's table (conda-forge kept underscores for these Jupyter packages).
CONDA_FORGE_NAMES: Mapping[str, str] = {
    "jupyter-server": "jupyter_server",
    "jupyter-client": "jupyter_client",
    "jupyter-core": "jupyter_core",
    "jupyter-events": "jupyter_events",
    "jupyter-server-terminals": "jupyter_server_terminals",
    "jupyterlab-server": "jupyterlab_server",
    "jupyterlab-widgets": "jupyterlab_widgets",
    "jupyterlab-pygments": "jupyterlab_pygments",
    "typing-extensions": "typing_extensions",
    "prometheus-client": "prometheus_client",
    "stack-data": "stack_data",
    "pure-eval": "pure_eval",
    "ipython-pygments-lexers": "ipython_pygments_lexers",
    "tzdata": "python-tzdata",
}


@dataclass(frozen=True)
class PinnedWheel:
    """One line of ``wheels.txt``: ``name==version --hash=sha256:... # filename``."""

    name: str  # the PyPI project name, canonical form
    version: str
    sha256: str
    filename: str

    @property
    def is_pure(self) -> bool:
        return self.filename.endswith("-none-any.whl")


_LINE_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})"
    r"\s*(?:#\s*(?P<file>\S+\.whl))?\s*$"
)


def parse_wheel_list(text: str, source: str = "wheels.txt") -> tuple[PinnedWheel, ...]:
    """Parse ``wheels.txt``; every entry must carry a sha256 and the wheel's file name."""
    wheels: list[PinnedWheel] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m or not m.group("file"):
            raise ChannelError(
                f"{source}:{lineno}: expected 'name==version --hash=sha256:<hex>  # <file>.whl', "
                f"got {line!r}; regenerate the list with `python -m swstack.offline_channel lock-wheels`"
            )
        wheels.append(PinnedWheel(canonicalize_name(m["name"]), m["version"], m["sha"], m["file"]))
    return tuple(wheels)


def format_wheel_list(wheels: Iterable[PinnedWheel], header: str) -> str:
    lines = [header.rstrip(), ""]
    for w in sorted(wheels, key=lambda w: w.name):
        lines.append(f"{w.name}=={w.version} --hash=sha256:{w.sha256}  # {w.filename}")
    return "\n".join(lines) + "\n"


def conda_name(pypi_name: str, table: Mapping[str, str] | None = None) -> str:
    """The conda-forge name of a PyPI project (``jupyter-server`` -> ``jupyter_server``)."""
    norm = canonicalize_name(pypi_name)
    if norm in CONDA_FORGE_NAMES:
        return CONDA_FORGE_NAMES[norm]
    mapped = (table if table is not None else _whl2conda_renames()).get(norm)
    return mapped or norm


def _whl2conda_renames() -> Mapping[str, str]:
    try:
        from whl2conda.api.stdrename import load_std_renames
    except ImportError:  # pragma: no cover - whl2conda is a build dependency
        return {}
    return dict(load_std_renames())


def conda_spec(req: Requirement, table: Mapping[str, str] | None = None) -> str:
    """``Requirement('Jupyter-Server>=2,<3')`` -> ``'jupyter_server >=2,<3'``."""
    name = conda_name(req.name, table)
    spec = str(req.specifier)
    # conda has no '~=': '~=1.2' means '>=1.2,==1.*'.
    parts = []
    for s in req.specifier:
        if s.operator == "~=":
            head = s.version.split(".")[:-1]
            upper = [*head[:-1], str(int(head[-1]) + 1)] if head[-1].isdigit() else head
            parts += [f">={s.version}", f"<{'.'.join(upper)}"]
        elif s.operator == "===":
            parts.append(f"=={s.version}")
        else:
            parts.append(str(s))
    spec = ",".join(sorted(parts))
    return f"{name} {spec}" if spec else name


def runtime_requirements(
    requires_dist: Iterable[str], env: Mapping[str, str] = MARKER_ENV
) -> list[Requirement]:
    """Requires-Dist entries that apply on linux-64 / CPython 3.11 without extras."""
    reqs: list[Requirement] = []
    for text in requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ChannelError(f"invalid Requires-Dist {text!r}: {exc}") from exc
        if req.marker is not None and not req.marker.evaluate(dict(env)):
            continue
        reqs.append(req)
    return reqs


def conda_run_deps(
    requires_dist: Iterable[str],
    requires_python: str | None,
    *,
    binary: bool,
    table: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The conda run dependencies of a wheel: python first, then its runtime requirements."""
    python = "python"
    if binary:
        python = PYTHON_RUN_DEP
    elif requires_python:
        python = f"python {requires_python.replace(' ', '')}"
    deps = {conda_spec(r, table) for r in runtime_requirements(requires_dist)}
    return (python, *sorted(deps))


def _marker_probe(marker: str) -> bool:
    """Evaluate a bare marker string against the channel's environment (used by tests)."""
    return Marker(marker).evaluate(dict(MARKER_ENV))


def mapping_fingerprint() -> str:
    """The name table and the marker environment: what a wheel's conda dependencies depend on."""
    table = [sorted(CONDA_FORGE_NAMES.items()), sorted(MARKER_ENV.items())]
    return hashlib.sha256(json.dumps(table).encode()).hexdigest()[:16]


def wheel_cache_path(cache_dir: Path, wheel: PinnedWheel) -> Path:
    return cache_dir / "wheels" / wheel.sha256[:2] / wheel.sha256 / wheel.filename


def fetch_wheels(
    wheels: Sequence[PinnedWheel], cache_dir: Path, wheelhouse: Path | None = None
) -> dict[str, Path]:
    """Make every pinned wheel present (hash-checked) in the cache; return name -> path.

    Wheels come from the cache, else from ``wheelhouse`` (air-gapped sites), else from
    PyPI through pip (``--require-hashes``); every file's sha256 is verified.
    """
    found: dict[str, Path] = {}
    missing: list[PinnedWheel] = []
    for w in wheels:
        target = wheel_cache_path(cache_dir, w)
        if target.is_file():
            found[w.name] = target
        elif wheelhouse is not None and (wheelhouse / w.filename).is_file():
            _verify_hash(wheelhouse / w.filename, w)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheelhouse / w.filename, target.with_suffix(".partial"))
            os.replace(target.with_suffix(".partial"), target)
            found[w.name] = target
        else:
            missing.append(w)
    if missing:
        if wheelhouse is not None:
            log.warn(f"{len(missing)} wheels are not in the wheelhouse {wheelhouse}; fetching them from PyPI")
        found.update(_download_wheels(missing, cache_dir))
    return found


def _verify_hash(path: Path, wheel: PinnedWheel) -> None:
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise ChannelError(
            f"{path}: sha256 {actual} does not match {wheel.sha256} pinned in channel/wheels.txt; "
            "remove the file, or refresh the list if the pin is what changed"
        )


def _download_wheels(wheels: Sequence[PinnedWheel], cache_dir: Path) -> dict[str, Path]:
    log.step(f"fetching {len(wheels)} wheels from PyPI")
    tmp = Path(tempfile.mkdtemp(prefix="wheels.", dir=ensure_dir(cache_dir / "tmp")))
    try:
        reqs = tmp / "requirements.txt"
        reqs.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels))
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--quiet",
            *TARGET_INTERPRETER,
            "-d",
            tmp / "dl",
            "-r",
            reqs,
        ]
        for plat in TARGET_TAGS_PLATFORMS:
            argv += ["--platform", plat]
        proc.run(argv, error=ChannelError, what="pip download (channel wheels)", timeout=1800)
        out: dict[str, Path] = {}
        for w in wheels:
            got = tmp / "dl" / w.filename
            if not got.is_file():
                raise ChannelError(
                    f"pip did not download {w.filename}; is the pin in channel/wheels.txt right?"
                )
            _verify_hash(got, w)
            target = wheel_cache_path(cache_dir, w)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
            out[w.name] = target
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class WheelMetadata:
    requires_dist: tuple[str, ...]
    requires_python: str | None
    summary: str


def read_wheel_metadata(path: Path) -> WheelMetadata:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        if not names:
            raise ChannelError(f"{path.name}: no .dist-info/METADATA in the wheel")
        msg = HeaderParser().parsestr(zf.read(names[0]).decode("utf-8", errors="replace"))
    return WheelMetadata(
        requires_dist=tuple(msg.get_all("Requires-Dist") or ()),
        requires_python=msg.get("Requires-Python"),
        summary=(msg.get("Summary") or "").strip(),
    )


def lock_wheels(channel_dir: Path) -> list[PinnedWheel]:
    """Resolve ``channel/wheels.in`` for linux-64 / CPython 3.11 into ``wheels.txt``."""
    wheels_in = channel_dir / "wheels.in"
    reqs = [
        line.strip()
        for line in wheels_in.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--report",
            report,
            *TARGET_INTERPRETER,
            "--target",
            Path(tmp) / "t",
        ]
        for plat in TARGET_TAGS_PLATFORMS:
            argv += ["--platform", plat]
        proc.run([*argv, *reqs], error=ChannelError, what="pip (resolving channel/wheels.in)", timeout=1800)
        data = json.loads(report.read_text())
    wheels = []
    for item in data["install"]:
        info = item["download_info"]
        wheels.append(
            PinnedWheel(
                name=canonicalize_name(item["metadata"]["name"]),
                version=item["metadata"]["version"],
                sha256=info["archive_info"]["hashes"]["sha256"],
                filename=info["url"].rsplit("/", 1)[1],
            )
        )
    header = (
        "# The closure of channel/wheels.in for linux-64 / CPython 3.11, pinned by hash.\n"
        "# Generated by `python -m swstack.offline_channel lock-wheels`; do not edit by hand."
    )
    atomic_write_text(channel_dir / "wheels.txt", format_wheel_list(wheels, header))
    return wheels
