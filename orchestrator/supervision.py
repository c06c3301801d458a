"""What a service started by `orchestrator dev` shares with its supervisor.

- It dies with it: `die_with_parent()` is a `preexec_fn` that asks Linux to signal the child
  when the supervisor dies for any reason, SIGKILL included (`PR_SET_PDEATHSIG`). The signal
  fires when the *thread* that forked the child ends, so the supervisor starts every child
  from its main thread. It survives `exec`, so it also covers a static binary (Tansu).
- It says when it is ready: a service started with ORCHESTRATOR_READY_FILE set creates that
  file once it serves (`announce_ready()`), and the supervisor waits for it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

#: Names the file a supervised service creates once it is ready (set by the supervisor).
READY_FILE_VARIABLE = "ORCHESTRATOR_READY_FILE"
#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `subprocess.Popen(preexec_fn=...)` giving the child `sig` when this process dies.

    None where Linux's prctl is unavailable (the child then outlives a killed supervisor).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def announce_ready(env: Mapping[str, str] | None = None) -> None:
    """Tell the supervisor, if any, that this service is up (see the module docstring)."""
    path = (os.environ if env is None else env).get(READY_FILE_VARIABLE)
    if path:
        Path(path).touch()
