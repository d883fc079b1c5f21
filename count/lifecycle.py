"""Process lifecycle helpers shared by the supervisor and its children.

Who stops a node: only the supervisor (``count-server``). A Ctrl-C in a terminal sends
SIGINT to the whole process group at once: the supervisor, the node process, the gunicorn
master and every worker. If each acted on it, the node process would stop before HTTP has
drained, gunicorn's master would begin a quick shutdown that the supervisor's SIGTERM then
races, and a worker still booting would miss its stop signal (gunicorn's arbiter waits
``graceful_timeout`` for it, then logs "was sent SIGKILL! Perhaps out of memory?"). So the
children ignore SIGINT from the moment they exist (an ignored signal stays ignored across
fork and exec, and Python then installs no KeyboardInterrupt handler), and the supervisor
turns its SIGINT into the same ordered stop as SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process if its parent dies, so no orphan holds the ports."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Start child processes inside this block: they begin with SIGINT ignored.

    SIGINT is blocked while it is ignored here, so a Ctrl-C that comes meanwhile is not
    lost for this process: it stays pending and reaches the handler restored at the end.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def child_ignores_sigint() -> None:
    """In a child of the supervisor: ignore SIGINT (the supervisor drives the stop), and
    unblock it (the mask was inherited from ``children_ignore_sigint``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
