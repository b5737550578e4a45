"""Extracted tree + the prefix it must answer to -> a relocation plan, then conda-pack's own rewrite.

conda-pack trees carry ``bin/conda-unpack``: its ``_prefix_records`` list every file
holding a prefix (placeholder, text|binary). We read that list without running
anything (``ast``) to decide, then run the tree's own python on the tree's own
``update_prefix`` with the live path as the new prefix. conda-unpack itself would
rewrite to wherever it sits (the staging directory), hence the small driver.
Binary files can only take a prefix no longer than their placeholder (it is padded
with NULs), so a longer one is refused before anything is touched.
"""

from __future__ import annotations

import ast
import contextlib
from dataclasses import dataclass
from pathlib import Path

from .. import log, proc
from ..errors import ActivateError
from .reuse import unshare

_DRIVER = """\
import os, runpy, sys
tree, target = sys.argv[1], sys.argv[2]
bindir = os.path.join(tree, "bin")
sys.path.insert(0, bindir)
ns = runpy.run_path(os.path.join(bindir, "conda-unpack"), run_name="conda_unpack")
for path, placeholder, mode in ns["_prefix_records"]:
    ns["update_prefix"](os.path.join(tree, path), target, placeholder, mode=mode)
print(len(ns["_prefix_records"]))
"""


@dataclass(frozen=True)
class Record:
    path: str
    placeholder: str
    mode: str  # "text" | "binary"


@dataclass(frozen=True)
class Relocation:
    placeholders: tuple[str, ...]
    target: str
    files: int
    paths: tuple[str, ...] = ()  # the files rewritten, relative to the tree


def read_records(script: Path) -> list[Record] | None:
    """``_prefix_records`` of a conda-unpack script, or None if the tree has none (no code is run)."""
    try:
        module = ast.parse(script.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    except SyntaxError as exc:
        raise ActivateError(f"{script}: not a conda-unpack script ({exc})") from exc
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_prefix_records" for t in node.targets
        ):
            try:
                raw = ast.literal_eval(node.value)
            except ValueError as exc:
                raise ActivateError(f"{script}: _prefix_records is not a literal list") from exc
            return [Record(str(p), str(ph), str(m)) for p, ph, m in raw]
    raise ActivateError(f"{script}: has no _prefix_records; not a conda-pack conda-unpack")


def plan(tree: Path, baked_prefix: str, target: str) -> Relocation | None:
    """Decide whether and how to relocate (reads the script, changes nothing)."""
    records = read_records(tree / "bin" / "conda-unpack")
    if records is None:
        if baked_prefix == target:
            return None
        raise ActivateError(
            f"the tree was packed for {baked_prefix} and has no bin/conda-unpack, so it cannot move to "
            f"{target}: activate with the root it was built for, or rebuild it for this root"
        )
    pending = [r for r in records if r.placeholder != target]
    if not pending:
        return None
    too_short = sorted(
        {r.placeholder for r in pending if r.mode == "binary" and len(target) > len(r.placeholder)}
    )
    if too_short:
        binaries = [r.path for r in pending if r.mode == "binary" and r.placeholder in too_short][:5]
        raise ActivateError(
            f"cannot relocate to {target} ({len(target)} characters): binary files "
            f"({', '.join(binaries)}{', ...' if len(binaries) == 5 else ''}) carry the prefix "
            f"{too_short[0]} ({len(too_short[0])} characters) and a binary prefix can only get shorter; "
            f"use a shorter --root or rebuild the stack for this root"
        )
    return Relocation(
        tuple(sorted({r.placeholder for r in pending})), target, len(pending), tuple(r.path for r in pending)
    )


def relocate(tree: Path, relocation: Relocation) -> None:
    """Run conda-pack's rewrite with the tree's own python, aimed at the live path."""
    python = tree / "bin" / "python"
    if not python.exists():
        raise ActivateError(f"{tree}: has no bin/python to run bin/conda-unpack with; cannot relocate")
    log.info(
        f"relocating {relocation.files} files from {', '.join(relocation.placeholders)} "
        f"to {relocation.target} (conda-unpack)"
    )
    # conda-pack rewrites in place: a file shared with the previous version gets its own inode first.
    for path in relocation.paths:
        with contextlib.suppress(FileNotFoundError):
            unshare(tree / path)
    proc.run(
        [python, "-c", _DRIVER, tree, relocation.target],
        error=ActivateError,
        what=f"relocating {tree.name} with its bin/conda-unpack",
    )
