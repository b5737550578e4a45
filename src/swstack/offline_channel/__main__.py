"""``python -m swstack.offline_channel``: ``build``, ``lock-wheels``, and the child-process
steps the build runs (``rattler-build``, ``pack-tree``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .. import log, paths
from ..errors import SwstackError
from .build import build_channel, default_out_dir
from .packages import pack_tree, run_rattler_build
from .wheels import lock_wheels


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m swstack.offline_channel")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the offline channel")
    b.add_argument("--out", type=Path, default=None,
                   help="where to build it (default: the cache's offline-channel, which the offline site mirrors)")
    b.add_argument("--wheelhouse", type=Path, default=None)
    b.add_argument("-j", "--jobs", type=int, default=2)
    sub.add_parser("lock-wheels", help="re-resolve channel/wheels.in into channel/wheels.txt")
    rb = sub.add_parser("rattler-build", help=argparse.SUPPRESS)
    rb.add_argument("--recipe", type=Path, required=True)
    rb.add_argument("--output-dir", type=Path, required=True)
    rb.add_argument("--channel", action="append", default=[])
    pt = sub.add_parser("pack-tree", help=argparse.SUPPRESS)
    pt.add_argument("--tree", type=Path, required=True)
    pt.add_argument("--name", required=True)
    pt.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    log.setup()
    root = paths.project_root()
    try:
        if args.cmd == "rattler-build":
            run_rattler_build(args.recipe, args.output_dir, args.channel)
        elif args.cmd == "pack-tree":
            pack_tree(args.tree, args.name, args.dest)
        elif args.cmd == "lock-wheels":
            wheels = lock_wheels(root / "channel")
            log.info(f"channel/wheels.txt: {len(wheels)} wheels")
        else:
            build_channel(
                args.out or default_out_dir(),
                recipes_dir=root / "channel" / "recipes",
                cache_dir=paths.cache_dir(),
                wheelhouse=args.wheelhouse,
                jobs=args.jobs,
            )
    except SwstackError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
