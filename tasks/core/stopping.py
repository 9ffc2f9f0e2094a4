"""Whether the run this process works for is being stopped (Ctrl-C, SIGTERM, a cancelled Prefect run).

A stage's flow stops at once in its main thread; the chunks of photos its task runner's threads are
working on would go on to their end, and a process does not exit before its threads do. Loops over
photos call check() before each one, so they give up at the next photo instead.
"""

from __future__ import annotations

import threading


class Stopped(BaseException):
    """Raised by a loop over photos of a run that is being stopped. A BaseException, like
    KeyboardInterrupt: the `except Exception` that turns a bad file into a verdict must not catch it."""


_requested = threading.Event()


def request() -> None:
    """The run is being stopped: every loop that calls check() ends at its next step."""
    _requested.set()


def clear() -> None:
    """A new run starts in this process (in-process tests run flows one after another)."""
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise Stopped if the run is being stopped."""
    if _requested.is_set():
        raise Stopped("the run is being stopped")
