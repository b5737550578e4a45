"""Signals as a terminal gives them to the programs the tests start."""

from __future__ import annotations

import signal


def sigint_as_from_a_terminal() -> None:
    """A ``preexec_fn``: SIGINT back to its default in the child, so that Python installs its Ctrl-C
    handler there. A suite started in the background by a shell inherits SIGINT ignored, and passes
    that on; a child ignoring it would never see the Ctrl-C a test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
