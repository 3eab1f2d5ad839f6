"""Child processes that die with their parent (the embedded server, supervised workers).

A child started with `preexec_fn=die_with_parent` gets SIGTERM when the process that started it
dies, even by `kill -9`, so no server or worker outlives the vecq command that owns it (Linux;
elsewhere the parent's own cleanup is all there is).
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
