"""Command line -> the host commands (init, activate, active, set-version, list, diff, prune, restore).

Starts fast and imports little: argparse here, each command's module only when it
runs, and nothing of the build side (pydantic, rattler, docker, doit). A
``SwstackError`` becomes its message and exit code; anything else is a bug and keeps
its traceback.

Exit status: 0 done (something changed), 3 nothing to do (already so; for Ansible's
``changed_when: rc == 0`` and ``failed_when: rc not in [0, 3]``), 11 activation error,
1 other error, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from . import __version__, log
from .errors import SwstackError

UNCHANGED_EXIT = 3

_EPILOG = """\
layout under the root (default /data0):
  sw -> sw.tmpfs         live trees, one link per built prefix (sw/py3 for /data0/sw/py3)
  sw.tmpfs/              ramdisk: .<stack>@<version> copies (production only)
  sw.<version>/<stack>/  persistent trees (stack id: py3, py3-dev);  sw.hdd -> sw.<version>
exit status: 0 changed, 3 unchanged, 11 activation error, 1 other error, 2 usage.
See docs/host.md."""


def _emit_json(data: Any) -> None:
    def default(obj: Any) -> Any:
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(type(obj).__name__)

    sys.stdout.write(json.dumps(data, indent=2, default=default, sort_keys=True) + "\n")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _print_outcome(outcome: Any, as_json: bool) -> int:
    if as_json:
        _emit_json({"changed": outcome.changed, "hdd": outcome.hdd, "stacks": list(outcome.results)})
    else:
        for r in outcome.results:
            if r.changed:
                _out(
                    f"{r.stack}: {r.version}"
                    + (f" ({r.tree})" if r.tree and r.tree != r.stack else "")
                    + f" active ({', '.join(r.steps)}"
                    + (f"; previous {r.previous}" if r.previous else "")
                    + ")"
                    + (f"; relocated from {r.relocated_from}" if r.relocated_from else "")
                )
            else:
                _out(f"{r.stack}: {r.version} already active, nothing changed")
        for kept in dict.fromkeys(k for r in outcome.results for k in r.kept_in_use):
            _out(f"kept {kept}")
        if not outcome.results:
            _out("nothing to do")
    return 0 if outcome.changed else UNCHANGED_EXIT


def cmd_activate(args: argparse.Namespace) -> int:
    from .host import commands

    sources = list(args.sources)
    if args.release:
        sources += commands.read_release(Path(args.release))
    return _print_outcome(commands.activate(args.root, sources, wait=args.wait), args.json)


def cmd_set_version(args: argparse.Namespace) -> int:
    from .host import commands

    return _print_outcome(
        commands.set_version(args.root, args.version, args.stack, wait=args.wait), args.json
    )


def cmd_restore(args: argparse.Namespace) -> int:
    from .host import commands

    return _print_outcome(commands.restore(args.root, wait=args.wait), args.json)


def cmd_active(args: argparse.Namespace) -> int:
    from .host import commands
    from .host.layout import Layout

    statuses = commands.active(args.root, verify=args.verify)
    layout = Layout(args.root)
    if args.json:
        _emit_json(
            {
                "root": str(args.root),
                "production": layout.production,
                "hdd": layout.hdd_version(),
                "stacks": statuses,
            }
        )
    else:
        if not statuses:
            _out(f"no stack is active under {args.root}")
        for s in statuses:
            sync = {None: "", True: ", ramdisk copy matches", False: ", RAMDISK COPY DIFFERS"}[s.in_sync]
            served = [f"tree {s.tree}"] if s.tree and s.tree != s.stack else []
            served += [f"variant {s.variant}"] if s.variant else []
            _out(f"{s.stack}: {s.version or 'NOT LIVE'}" + (f" ({', '.join(served)})" if served else "") + sync)
            if args.verbose:
                _out(f"  live path:   {s.live_path}")
                _out(f"  served from: {s.served_from}")
                _out(f"  persistent:  {s.persistent}")
                _out(f"  recorded:    {s.recorded}   previous: {s.previous}")
                if s.recorded != s.version:
                    _out("  the recorded version differs from the live one: run `swstack restore`")
            limit = None if args.verbose else 10
            for d in s.differences[:limit]:
                _out(f"  differs: {d}")
            if limit and len(s.differences) > limit:
                _out(f"  ... {len(s.differences) - limit} more (--verbose lists all)")
        if args.verbose:
            _out(f"sw.hdd -> sw.{layout.hdd_version()}" if layout.hdd_version() else "sw.hdd: not set")
    bad = [s for s in statuses if s.in_sync is False or s.version is None]
    if bad:
        log.warn(
            f"{', '.join(s.stack for s in bad)}: ramdisk copy missing or different; "
            f"`swstack restore` reloads it"
        )
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .host import commands

    versions, hdd = commands.list_versions(args.root)
    if args.json:
        _emit_json({"hdd": hdd, "versions": versions})
        return 0
    if not versions:
        _out(f"no version under {args.root}")
    for v in versions:
        marks = [f"active: {', '.join(v.active)}"] if v.active else []
        marks += [f"previous: {', '.join(v.previous)}"] if v.previous else []
        marks += ["sw.hdd"] if v.version == hdd else []
        _out(
            f"{v.version:<20} {', '.join(v.stacks):<30} {log.human_bytes(v.size):>10}"
            + (f"  [{'; '.join(marks)}]" if marks else "")
        )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from .host import commands

    d = commands.diff(args.root, args.a, args.b, args.stack)
    if args.json:
        _emit_json(d)
        return 0
    _out(f"{d.stack}: {d.a} -> {d.b}")
    for name, ver in d.added:
        _out(f"  + {name} {ver}")
    for name, ver in d.removed:
        _out(f"  - {name} {ver}")
    for name, old, new in d.changed:
        _out(f"  ~ {name} {old} -> {new}")
    if d.empty:
        _out("  no package differs")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .host.init import init

    result = init(args.root, args.ramdisk_size)
    if args.json:
        _emit_json({**vars(result), "changed": result.changed})
    else:
        for change in result.changes:
            _out(change)
        if result.tmpfs_mounted:
            _out(f"{args.root}/sw.tmpfs is a tmpfs mount ({log.human_bytes(result.tmpfs_size or 0)})")
        if not result.changed:
            _out("nothing changed")
    return 0 if result.changed else UNCHANGED_EXIT


def cmd_prune(args: argparse.Namespace) -> int:
    from .host import commands

    plan, changed = commands.prune(args.root, args.keep, dry_run=args.dry_run, wait=args.wait)
    if args.json:
        _emit_json(
            {"removed": [] if args.dry_run else plan.remove, "would_remove": plan.remove, "kept": plan.keep}
        )
    else:
        verb = "would remove" if args.dry_run else "removed"
        for v in plan.remove:
            _out(f"{verb} sw.{v}")
        for v, why in sorted(plan.keep.items()):
            _out(f"kept sw.{v} ({why})")
    return 0 if changed else UNCHANGED_EXIT


def _common(json_too: bool = True, lock: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--root",
        "-R",
        type=Path,
        default=Path("/data0"),
        help="root directory holding sw, sw.tmpfs, sw.hdd and sw.<version> (default: /data0)",
    )
    if json_too:
        p.add_argument("--json", action="store_true", help="print a JSON document for machines")
    if lock:
        p.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="if another swstack holds the host lock, wait this long (default: fail at once)",
        )
    p.add_argument("--debug", action="store_true", help="log every step and command")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swstack",
        description="Install and switch software stacks on a notebook host.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"swstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, desc: str, **common: bool
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=desc, parents=[_common(**common)], formatter_class=fmt
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "init",
        cmd_init,
        "create the host layout and check the ramdisk",
        "Create <root> (default /data0), <root>/sw.tmpfs, <root>/.swstack and the link\n"
        "sw -> sw.tmpfs; as root, give them to root (0755). Check that sw.tmpfs is a tmpfs\n"
        "mount and, if not, print the /etc/fstab line that mounts it (init mounts nothing).\n"
        "Exit 0 if something changed, 3 if everything was already in place.",
    )
    p.add_argument(
        "--ramdisk-size",
        default="32G",
        metavar="SIZE",
        help="tmpfs size for the fstab line and the size check (default: 32G; 512M, 50%% work too)",
    )

    p = add(
        "activate",
        cmd_activate,
        "fetch, verify and switch to artifacts",
        "Fetch artifacts (tarball path, artifact directory, http(s) URL or OCI reference\n"
        "host:port/name:tag), verify their sha256 and manifest, extract them safely into\n"
        "<root>/sw.<version>/<stack id> and onto the ramdisk in one pass (files the live\n"
        "version already has are hardlinked), relocate if the root differs from the built\n"
        "prefix, and switch the live path <root>/sw/<name> (<name>: the built prefix's last\n"
        "component; variants of a stack share it) atomically; then point <root>/sw.hdd at\n"
        "the version. Exit 0 if something changed, 3 if already active.",
        lock=True,
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="artifact: path, URL or OCI reference")
    p.add_argument(
        "--release",
        metavar="FILE",
        help='release manifest (TOML [stacks] name = "source", or JSON {"stacks": {...}})',
    )

    p = add(
        "set-version",
        cmd_set_version,
        "switch to a version already on the host",
        "Revert or update to a version already on the host (the seed's --set-version):\n"
        "VERSION is 2026.11.01, sw.2026.11.01 or <root>/sw.2026.11.01. Exit 3 if already active.",
        lock=True,
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--stack", help="switch only this stack (default: every stack in that version)")

    p = add(
        "active",
        cmd_active,
        "show the active version of each stack",
        "Show each stack's live version and whether the ramdisk copy equals the persistent\n"
        "tree (size and mtime; --verify compares content hashes). Exit 1 if a copy differs.",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show paths and every differing file")
    p.add_argument("--verify", action="store_true", help="compare by sha256, naming each differing file")

    add(
        "list",
        cmd_list,
        "list the versions on the host",
        "List the versions under the root, their stacks and sizes, marking active and previous ones.",
    )

    p = add(
        "diff",
        cmd_diff,
        "packages that differ between two versions",
        "Packages added (+), removed (-) and changed (~) from A to B. A and B are versions on\n"
        "the host or manifest.json files / artifact directories.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--stack", help="which stack, when a version holds several")

    p = add(
        "prune",
        cmd_prune,
        "remove old versions",
        "Remove versions beyond the newest N, never the active or previous version of a\n"
        "stack, never one a process still uses. Exit 3 if nothing was removed.",
        lock=True,
    )
    p.add_argument("--keep", type=int, required=True, metavar="N", help="keep the N newest versions")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")

    add(
        "restore",
        cmd_restore,
        "reload the ramdisk after a reboot",
        "After a reboot the ramdisk is empty: copy the recorded active versions onto it and\n"
        "relink them. Run before the notebook service (systemd/swstack-restore.service).\n"
        "Exit 3 if everything was already in place.",
        lock=True,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(verbose=getattr(args, "debug", False))
    if hasattr(args, "root"):
        args.root = Path(args.root).absolute()
    try:
        return int(args.func(args))
    except SwstackError as exc:
        sys.stderr.write(f"swstack {args.command}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
