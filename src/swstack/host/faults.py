"""Named points in the activation where fault tests kill us: ``SWSTACK_FAULT_AT=<point>``.

Off unless the variable is set; the points document the order of the activation steps.
``SWSTACK_FAULT_SIGNAL=INT`` sends SIGINT there instead (Ctrl-C at that very point).
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "locked",
    "extracting",
    "extracted",
    "relocated",
    "persisted",
    "ramdisk-copying",
    "ramdisk-copied",
    "switched",
    "state-written",
    "hdd-switched",
)


def hit(point: str) -> None:
    """Die here, like a power cut or ``kill -9``, if the fault tests asked for this point."""
    if os.environ.get("SWSTACK_FAULT_AT") == point:
        name = os.environ.get("SWSTACK_FAULT_SIGNAL", "KILL")
        os.kill(os.getpid(), signal.Signals[f"SIG{name}"])
