"""Command line -> the host commands (init, activate, active, set-version, list, diff, prune, restore)
and the hub's (hub-config, prepull).

Starts fast and imports little: argparse here, each command's module only when it
runs, and nothing of the build side (pydantic, rattler, docker, doit). A
``SwstackError`` becomes its message and exit code; anything else is a bug and keeps
its traceback.

Exit status: 0 done (something changed), 3 nothing to do (already so; for Ansible's
``changed_when: rc == 0`` and ``failed_when: rc not in [0, 3]``), 11 activation error,
1 other error, 2 usage error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from . import __version__, log, paths
from .errors import SwstackError, Terminated, UsageError, sigterm_unwinds

UNCHANGED_EXIT = 3

_EPILOG = f"""\
layout under the root (default {paths.ROOT}):
  sw -> sw.tmpfs         live trees, one link per built prefix (sw/py3 for /data0/sw/py3)
  sw.tmpfs/              ramdisk: .<stack>@<version> copies (production only)
  sw.<version>/<stack>/  persistent trees (stack id: py3, py3-dev);  sw.hdd -> sw.<version>
exit status: 0 changed, 3 unchanged, 6 no Docker engine (prepull), 9 menu error, 11 activation error,
1 other error, 2 usage, 130 interrupted (SIGINT), 141 output reader gone, 143 terminated (SIGTERM).
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
        _emit_json(
            {"changed": outcome.changed, "hdd": outcome.hdd, "stacks": list(outcome.results),
             "failed": list(outcome.failed)}
        )  # fmt: skip
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
        if not outcome.results and not outcome.failed:  # a stack that failed was something to do
            _out("nothing to do")
    return 0 if outcome.changed else UNCHANGED_EXIT


def cmd_activate(args: argparse.Namespace) -> int:
    from .host import commands
    from .host.signature import load_policy

    sources = list(args.sources)
    names = commands.read_release(Path(args.release)) if args.release else None
    sources += names or {}
    if not sources:
        raise UsageError("nothing to activate: give artifact sources or --release FILE")
    # A --trusted-key on the command line asks for signatures: it makes them required for this
    # activation (checking nothing while a key was given would be the surprise).
    required = args.require_signature or bool(args.trusted_key)
    policy = load_policy(args.host_config, required, list(args.trusted_key))
    outcome = commands.activate(args.root, sources, wait=args.wait, policy=policy, names=names)
    return _print_outcome(outcome, args.json)


def cmd_set_version(args: argparse.Namespace) -> int:
    from .host import commands

    return _print_outcome(
        commands.set_version(args.root, args.version, args.stack, wait=args.wait), args.json
    )


def cmd_restore(args: argparse.Namespace) -> int:
    from .errors import ActivateError
    from .host import commands

    outcome = commands.restore(args.root, wait=args.wait)
    status = _print_outcome(outcome, args.json)
    for line in outcome.failed:  # the others were restored; each failure is one line
        sys.stderr.write(f"swstack {args.command}: error: {line}\n")
    return ActivateError.exit_code if outcome.failed else status


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
                _out(f"  served from: {s.served_from or '-'}")
                _out(f"  persistent:  {s.persistent or '-'}")
                _out(f"  recorded:    {s.recorded or '-'}   previous: {s.previous or '-'}")
            limit = None if args.verbose else 10
            for d in s.differences[:limit]:
                _out(f"  differs: {d}")
            if limit and len(s.differences) > limit:
                _out(f"  ... {len(s.differences) - limit} more (--verbose lists all)")
        if args.verbose:
            _out(f"sw.hdd -> sw.{layout.hdd_version()}" if layout.hdd_version() else "sw.hdd: not set")
    bad = [s for s in statuses if s.in_sync is False and s.version is not None]
    if bad:
        log.warn(
            f"{', '.join(s.stack for s in bad)}: ramdisk copy missing or different from the persistent tree; "
            f"{layout.command('restore')} loads that tree again (if the persistent tree is what changed, activate the "
            f"artifact again instead)"
        )
    not_live = [s for s in statuses if s.version is None]
    if not_live:  # its link is gone (a ramdisk emptied by a reboot, or a link removed by hand)
        gone = commands.ramdisk_gone(layout)
        log.warn(
            f"{', '.join(s.stack for s in not_live)}: not live; "
            + (gone or f"{layout.command('restore')} makes the recorded version live again")
        )
    unrecorded = [s for s in statuses if s.version is not None and s.recorded != s.version]
    for s in unrecorded:
        # A run cut short between the switch and its record (kill -9, power loss): restore
        # (and a reboot) would bring the recorded one back.
        log.warn(
            f"{s.stack}: {s.version} is live but {s.recorded or 'nothing'} is recorded; "
            f"{layout.command(f'set-version {s.version}')} records the live one"
            + (f", {layout.command(f'set-version {s.recorded}')} goes back" if s.recorded else "")
        )
    return 1 if bad or not_live or unrecorded else 0


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

    pruned = commands.prune(args.root, args.keep, dry_run=args.dry_run, wait=args.wait)
    plan = pruned.plan
    if args.json:
        # "removed*" is what a run removed, "would_remove*" what a --dry-run would: each empty in the other mode.
        versions, copies = list(plan.remove), list(pruned.copies)
        _emit_json({"removed": [] if args.dry_run else versions, "would_remove": versions if args.dry_run else [],
                    "kept": plan.keep, "removed_copies": [] if args.dry_run else copies,
                    "would_remove_copies": copies if args.dry_run else [], "kept_in_use": list(pruned.kept_in_use)})
    else:
        verb = "would remove" if args.dry_run else "removed"
        for v in plan.remove:
            _out(f"{verb} sw.{v}")
        for copy in pruned.copies:
            _out(f"{verb} {copy} (ramdisk copy no longer live)")
        for v, why in sorted(plan.keep.items()):
            _out(f"kept sw.{v} ({why})")
        for kept in pruned.kept_in_use:  # as activate names them: the copy a running kernel holds
            _out(f"kept {kept}")
    return 0 if pruned.changed else UNCHANGED_EXIT


def _policy(args: argparse.Namespace) -> Any:
    from .hub import MenuPolicy

    return MenuPolicy(
        releases=args.releases, weeklies=args.weeklies, dailies=args.dailies, experimentals=args.experimentals
    )


def cmd_hub_config(args: argparse.Namespace) -> int:
    from . import hub, prepull
    from .fsutil import atomic_write_text

    if args.output is not None and Path(args.output).is_dir():  # else the rename's error names the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), args.output)
    menu = hub.load_menu(args.source, _policy(args))
    if args.format == "docker":
        text = hub.render_dockerspawner(menu)
    elif args.format == "kube":
        text = hub.render_kubespawner(menu)
    elif args.format == "daemonset":
        text = prepull.daemonset_json(prepull.render_daemonset(menu, namespace=args.namespace, keep=args.keep))
    else:
        text = menu.to_json()
    if args.output is not None:
        atomic_write_text(Path(args.output), text)
        log.info(f"wrote {args.output}: {len(menu.entries)} entries, default {menu.default.tag}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_prepull(args: argparse.Namespace) -> int:
    from . import hub, prepull
    from .engine import HOST_HINT, DockerEngine

    menu = hub.load_menu(args.source, _policy(args))
    try:
        engine = DockerEngine(hint=HOST_HINT)
        plan = prepull.prepull(menu, engine, args.keep, dry_run=args.dry_run)
    except ModuleNotFoundError as exc:  # the docker SDK is an extra on hosts
        return _fail(args, f"error: {exc}; install swstack[docker]", 1)
    if args.json:
        _emit_json({"dry_run": args.dry_run, **_plan_json(plan)})
    else:
        verb = "would " if args.dry_run else ""
        for ref in plan.pull:
            _out(f"{verb}pull {ref}")
        for ref in plan.present:
            _out(f"present {ref}")
        for ref in plan.remove:
            _out(f"{verb}remove {ref}")
        for image_id in plan.in_use:
            _out(f"kept {image_id} (a container uses it)")
    return 0 if plan.changes else UNCHANGED_EXIT


def _plan_json(plan: Any) -> dict[str, Any]:
    return {
        "repository": plan.repository,
        "pull": list(plan.pull),
        "present": list(plan.present),
        "remove": list(plan.remove),
        "in_use": list(plan.in_use),
    }


def _menu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="the images' repository (host[:port]/name, e.g. registry.example.org/swstack/py3) "
        "or a menu file written by `hub-config --format json`",
    )
    # _count: a negative count (a typo) listed none of its kind without a word.
    p.add_argument("--releases", type=_count, default=1, metavar="N", help="newest releases r* listed (default 1)")
    p.add_argument("--weeklies", type=_count, default=3, metavar="N", help="newest weeklies w_* listed (default 3)")
    p.add_argument("--dailies", type=_count, default=3, metavar="N", help="newest dailies d_* listed (default 3)")
    p.add_argument(
        "--experimentals", type=_count, default=3, metavar="N", help="newest experimental exp_* listed (default 3)"
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from .host import provenance
    from .host.signature import load_policy

    policy = load_policy(args.host_config, False, list(args.trusted_key))
    report = provenance.verify(args.artifact, list(policy.trusted_keys))
    if args.json:
        _emit_json(report)
        return 0
    _out(f"{report.stack} {report.version} ({report.platform}): {report.tarball}")
    _out(f"  sha256      {report.tarball_sha256}")
    _out(f"  built       {report.built_at} by {report.builder}")
    if report.builder_image:
        _out(f"  in          {report.builder_image}")
    _out(f"  tools       {', '.join(f'{k} {v}' for k, v in sorted(report.tools.items()))}")
    for name, digest in report.inputs.items():
        _out(f"  from        {name} {digest}")
    signed = f"signed by   {', '.join(report.signed_by)}" if report.signed_by else "signature   not checked"
    _out(f"  {signed}" + ("" if report.signed_by else " (no --trusted-key)"))
    return 0


def _count(text: str) -> int:
    """A number of versions: 0 or more (argparse type: a bad one is a usage error, exit 2)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 0 or more")
    return int(text)


def _seconds(text: str) -> float:
    """A --wait: a number of seconds, 0 or more (argparse type: a bad one is a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0.0 <= value < float("inf")):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds, 0 or more")
    return value


def _ramdisk_size(text: str) -> str:
    from .host.init import check_size

    try:
        return check_size(text)
    except SwstackError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ramdisk-size ")) from exc


def _root(value: str) -> Path:
    """``--root``, absolute, ``..`` taken out as written (not through symlinks: the live path is the
    path users type, and a relocation writes it into files)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path; give the directory holding sw and sw.<version>")
    return Path(os.path.abspath(value))


def _output(value: str) -> str:
    """``hub-config --output``: a file (argparse type: an empty one is a usage error, exit 2, not stdout)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path; give a file, or leave -o out for stdout")
    return value


def _common(json_too: bool = True, lock: bool = False, root: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if root:
        p.add_argument(
            "--root",
            "-R",
            type=_root,
            default=Path(paths.ROOT),
            help=f"root directory holding sw, sw.tmpfs, sw.hdd and sw.<version> (default: {paths.ROOT})",
        )
    if json_too:
        p.add_argument("--json", action="store_true", help="print a JSON document for machines")
    if lock:
        p.add_argument(
            "--wait",
            type=_seconds,
            default=0.0,
            metavar="SECONDS",
            help="if another swstack holds the host lock, wait up to this many seconds, 0 or more "
            "(default 0: fail at once)",
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
        type=_ramdisk_size,
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
        "the version. With a signature policy (--require-signature, --trusted-key or the host\n"
        "config), an artifact no trusted key signed is refused before anything is written.\n"
        "Exit 0 if something changed, 3 if already active, 11 if refused or failed, 1 on an error\n"
        "of the machine (a host lock this user may not take), 130 if interrupted, 143 if\n"
        "terminated (SIGTERM).",
        lock=True,
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="artifact: path, URL or OCI reference")
    p.add_argument(
        "--release",
        metavar="FILE",
        help='release manifest (TOML [stacks] name = "source", or JSON {"stacks": {...}})',
    )
    p.add_argument(
        "--require-signature",
        action="store_true",
        help="refuse an artifact unless a trusted key signed it (also: [signatures] require in the host "
        "config; implied by --trusted-key)",
    )
    p.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        type=Path,
        metavar="PUBKEY",
        help="a PEM public key (the site's cosign.pub) whose signatures are trusted; repeatable. "
        "Given here, it requires a signature for this activation, as --require-signature does",
    )
    p.add_argument(
        "--host-config",
        type=Path,
        metavar="FILE",
        help="host config TOML (default $SWSTACK_HOST_CONFIG, else /etc/swstack/host.toml when present)",
    )

    p = add(
        "set-version",
        cmd_set_version,
        "switch to a version already on the host",
        "Revert or update to a version already on the host (the seed's --set-version):\n"
        "VERSION is 2026.11.01, sw.2026.11.01, <root>/sw.2026.11.01, or <root>/sw.2026.11.01/<stack>\n"
        "for one stack of it. Exit 3 if already active, 11 if there is no such version or stack.",
        lock=True,
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--stack", help="switch only this stack (default: every stack in that version)")

    p = add(
        "active",
        cmd_active,
        "show the active version of each stack",
        "Show each stack's live version and whether the ramdisk copy equals the persistent\n"
        "tree (type, mode, size and mtime; --verify compares content hashes too). Exit 1 if a\n"
        "copy is missing or differs (`swstack restore`) or the live version is not the recorded\n"
        "one; 11 if the root is missing.",
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
    p.add_argument("--keep", type=_count, required=True, metavar="N", help="keep the N newest versions")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")

    p = add(
        "verify",
        cmd_verify,
        "say who built an artifact, from which inputs",
        "Read an artifact's SLSA provenance (beside the tarball, or attached to it in the\n"
        "registry), check it describes this very tarball and, with --trusted-key (or the host\n"
        "config's trusted_keys), that a trusted key signed the artifact and its provenance.\n"
        "Prints the builder, tools, builder image and inputs (lockfile, stack file, git\n"
        "commit). Exit 0 verified, 11 refused.",
        root=False,  # it reads the artifact alone, nothing of the host's layout
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact directory, tarball path or OCI reference")
    p.add_argument("--trusted-key", action="append", default=[], type=Path, metavar="PUBKEY",
                   help="a PEM public key whose signatures are trusted; repeatable")
    p.add_argument(
        "--host-config",
        type=Path,
        metavar="FILE",
        help="host config TOML naming trusted_keys (default $SWSTACK_HOST_CONFIG, else /etc/swstack/host.toml "
        "when present)",
    )

    add(
        "restore",
        cmd_restore,
        "reload the ramdisk after a reboot",
        "After a reboot the ramdisk is empty: copy the recorded active versions onto it and\n"
        "relink them. Run before the notebook service (systemd/swstack-restore.service).\n"
        "Exit 3 if everything was already in place, 11 if a stack could not be restored\n"
        "(named on stderr; the others are restored).",
        lock=True,
    )

    p = sub.add_parser(
        "hub-config",
        help="render the spawner menu from the registry's tags",
        description="Render a JupyterHub config file offering the repository's images: the newest\n"
        "release (the default), the newest weeklies, dailies and experimental tags, each labelled\n"
        "with its tag, version and build date and pinned by digest.\n"
        "  --format docker     c.DockerSpawner.allowed_images (run `swstack prepull` on the host)\n"
        "  --format kube       c.KubeSpawner.profile_list\n"
        "  --format daemonset  a Kubernetes DaemonSet (JSON) pulling the images on every node\n"
        "  --format json       the menu, for `swstack prepull` and other tools\n"
        "Load the file with load_subconfig() in jupyterhub_config.py, or `jupyterhub -f` it.",
        formatter_class=fmt,
    )
    p.set_defaults(func=cmd_hub_config)
    _menu_options(p)
    p.add_argument("--format", choices=("docker", "kube", "daemonset", "json"), default="docker")
    p.add_argument("--output", "-o", type=_output, metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument("--namespace", help="the DaemonSet's namespace (default: kubectl's)")
    p.add_argument("--keep", type=int, metavar="N", help="the DaemonSet pulls only the menu's first N images")
    p.add_argument("--debug", action="store_true", help="log every step and request")

    p = sub.add_parser(
        "prepull",
        help="pull the menu's images onto this Docker host",
        description="Pull the menu's images missing on this Docker host (DOCKER_HOST or the local\n"
        "socket), keeping at most N images of the repository: the menu's first N, the default\n"
        "first. Other images of the repository are removed, never one a container uses (it\n"
        "stays until its container is gone). Exit 0 if something changed, 3 if nothing to do,\n"
        "9 a menu, registry, pull or removal error, 6 no Docker engine answering.",
        formatter_class=fmt,
    )
    p.set_defaults(func=cmd_prepull)
    _menu_options(p)
    p.add_argument("--keep", type=int, required=True, metavar="N", help="images of the repository to keep")
    p.add_argument("--dry-run", action="store_true", help="only say what would be pulled and removed")
    p.add_argument("--json", action="store_true", help="print a JSON document for machines")
    p.add_argument("--debug", action="store_true", help="log every step and command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(verbose=getattr(args, "debug", False))
    # Without a handler SIGTERM kills at once, leaving a begun step (a staging tree, a
    # .partial ramdisk copy) for the next run to clear and saying nothing.
    with sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except SwstackError as exc:
        return _fail(args, f"error: {exc}", exc.exit_code)
    except BrokenPipeError:
        # The reader went away (`swstack list | head`): no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the machine's answer (a file where a directory belongs...): one line
        if isinstance(exc.__context__, KeyboardInterrupt):
            # Raised while the interrupt unwound: shutil.rmtree, interrupted just after closing a
            # directory's descriptor, closes it again in a `finally` (EBADF). The interrupt it is.
            return _interrupted(args, exc.__context__)
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, f"error: {where}{exc.strerror or exc}", 1)
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr and, under --json, the same line as a JSON document on stdout: a machine
    reading stdout gets a document on every path, not an empty string to choke on."""
    sys.stderr.write(f"swstack {args.command}: {message}\n")
    if getattr(args, "json", False):
        _emit_json({"error": message.removeprefix("error: "), "exit_code": code})
    return code


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    done = "a step it finished stays done, one it began is undone"
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    return _fail(args, f"{how}; {done}", 143 if isinstance(exc, Terminated) else 130)


if __name__ == "__main__":
    sys.exit(main())
