"""What every benchmark checks before any work: its counts, and where its scratch files go."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from swstack import paths


def refuse_production_root() -> None:
    """Exit when the scratch files would land under the production root (``TMPDIR`` there):
    a benchmark never writes to a real <ROOT>."""
    tmp, root = Path(tempfile.gettempdir()).resolve(), Path(paths.ROOT)
    if tmp == root or root in tmp.parents:
        sys.exit(f"{sys.argv[0]}: the temporary directory {tmp} is under {root}, the production root; "
                 "set TMPDIR to a directory elsewhere")


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
