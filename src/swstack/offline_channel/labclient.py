"""``clients/labclient`` -> the channel's pip side: its wheel in a PEP 503 wheelhouse and a bare
git repository (tag ``v1.0.0``, ``main`` at 1.1.0.dev0), the fixture the pip and git stacks use.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

from .. import proc
from ..errors import ChannelError
from ..fsutil import atomic_write_text, sha256_file
from .plan import cache_key, hash_files
from .target import ensure_dir

LABCLIENT_VERSION = "1.0.0"
LABCLIENT_DEV_VERSION = "1.1.0.dev0"
# Fixed identity and dates make the labclient repository's commit shas stable.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "swstack",
    "GIT_AUTHOR_EMAIL": "swstack@localhost",
    "GIT_COMMITTER_NAME": "swstack",
    "GIT_COMMITTER_EMAIL": "swstack@localhost",
}
GIT_DATES = ("2024-01-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00")


def labclient_files(client: Path) -> list[Path]:
    return sorted(
        p
        for p in client.rglob("*")
        if p.is_file()
        and not any(
            part in ("__pycache__", "build", "dist") or part.endswith(".egg-info")
            for part in p.relative_to(client).parts
        )
    )


def build_labclient_wheel(client: Path, dest: Path, cache_dir: Path) -> Path:
    """Build ``labclient-1.0.0-py3-none-any.whl`` (cached by the source's hash)."""
    key = cache_key("labclient", hash_files(labclient_files(client), client))
    entry = cache_dir / "channel" / f"labclient-{key}"
    wheels = sorted(entry.glob("*.whl"))
    if not wheels:
        src = Path(tempfile.mkdtemp(prefix="labclient.", dir=ensure_dir(cache_dir / "tmp")))
        try:
            _copy_tree(client, src / "labclient")
            proc.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                    "--disable-pip-version-check",
                    "--quiet",
                    "-w",
                    src / "dist",
                    src / "labclient",
                ],
                extra_env={"SOURCE_DATE_EPOCH": "1704067200"},
                error=ChannelError,
                what="pip wheel clients/labclient",
            )
            built = sorted((src / "dist").glob("labclient-*.whl"))
            if not built:
                raise ChannelError("pip wheel clients/labclient produced no wheel")
            tmp_entry = entry.with_name(entry.name + ".partial")
            shutil.rmtree(tmp_entry, ignore_errors=True)
            tmp_entry.mkdir(parents=True)
            shutil.copy2(built[0], tmp_entry / built[0].name)
            os.replace(tmp_entry, entry)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        wheels = sorted(entry.glob("*.whl"))
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheels[0].name
    shutil.copy2(wheels[0], target)
    return target


def write_simple_index(wheelhouse: Path, files: Sequence[Path]) -> None:
    """A PEP 503 index under ``wheelhouse/simple`` for wheels stored in ``wheelhouse``."""
    projects: dict[str, list[Path]] = {}
    for f in files:
        projects.setdefault(canonicalize_name(f.name.split("-")[0]), []).append(f)
    simple = wheelhouse / "simple"
    root_links = []
    for project, wheels in sorted(projects.items()):
        links = "\n".join(
            f'    <a href="../../{w.name}#sha256={sha256_file(w)}">{w.name}</a><br/>' for w in sorted(wheels)
        )
        atomic_write_text(
            simple / project / "index.html",
            f"<!DOCTYPE html>\n<html>\n  <body>\n{links}\n  </body>\n</html>\n",
        )
        root_links.append(f'    <a href="{project}/">{project}</a><br/>')
    atomic_write_text(
        simple / "index.html",
        "<!DOCTYPE html>\n<html>\n  <body>\n" + "\n".join(root_links) + "\n  </body>\n</html>\n",
    )


def make_labclient_repo(client: Path, bare: Path, work: Path) -> str:
    """A bare git repository of labclient: tag ``v1.0.0``, ``main`` one commit later at
    1.1.0.dev0. Fixed names and dates make the shas stable; returns main's sha."""
    tree = work / "labclient-git"
    shutil.rmtree(tree, ignore_errors=True)
    _copy_tree(client, tree)
    git = [
        "git",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "tag.gpgsign=false",
        "-c",
        "core.autocrlf=false",
        "-c",
        "user.name=swstack",
        "-c",
        "user.email=swstack@localhost",
    ]
    env = {**GIT_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "TZ": "UTC"}

    def run(*args: str | os.PathLike[str], date: str | None = None) -> str:
        extra = dict(env)
        if date:
            extra |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        return proc.output(
            [*git, *args], cwd=tree, extra_env=extra, error=ChannelError, what=f"git {args[0]}"
        )

    run("init", "--quiet", "-b", "main")
    run("add", "--all")
    run("commit", "--quiet", "-m", f"labclient {LABCLIENT_VERSION}", date=GIT_DATES[0])
    run("tag", f"v{LABCLIENT_VERSION}")
    for rel in ("pyproject.toml", "src/labclient/__init__.py"):
        path = tree / rel
        path.write_text(path.read_text().replace(f'"{LABCLIENT_VERSION}"', f'"{LABCLIENT_DEV_VERSION}"'))
    run("commit", "--quiet", "--all", "-m", f"Start {LABCLIENT_DEV_VERSION}", date=GIT_DATES[1])
    sha = run("rev-parse", "HEAD")
    bare.parent.mkdir(parents=True, exist_ok=True)
    run("clone", "--quiet", "--bare", tree, bare)
    shutil.rmtree(tree, ignore_errors=True)
    return sha


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")
    )
