"""The ``labclient`` command."""

from __future__ import annotations

import argparse
import sys

import tornado
import traitlets

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labclient", description="Client for the lab's data service")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--deps", action="store_true", help="print the versions of its dependencies")
    args = parser.parse_args(argv)
    if args.deps:
        print(f"traitlets {traitlets.__version__}")
        print(f"tornado {tornado.version}")
        return 0
    print(f"labclient {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
