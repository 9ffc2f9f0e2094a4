"""One pawflow run per workspace: the workspace lock, taken with DVC's repo lock.

Light (no Prefect): the background server (flows/server.py) reads the lock file to tell whether a stage
runs, and the stages without a flow (base, audit's command) take the lock too.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import PawflowError

# Relative to the workspace root; "pid N: command" while a run holds it, empty once it is released.
LOCK_FILE = Path(".pawflow/workspace.lock")


def _refused(holder: str) -> PawflowError:
    return PawflowError(
        f"another pawflow run is using this workspace ({holder}); refusing to start so that "
        "outputs are never interleaved.",
        "Wait for it to finish (or stop it), then run again.",
    )


def lock_holder(root: Path = Path(".")) -> str | None:
    """Who holds the workspace lock ('pid N: command', as its holder wrote it); None when it is free
    (a killed run's text stays in the file, but its lock went with the process)."""
    try:
        f = open(root / LOCK_FILE)  # noqa: SIM115 (closed below, after the probe)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None


@contextmanager
def workspace_lock(root: Path = Path(".")) -> Iterator[None]:
    """One pawflow run per workspace at a time; a second one is refused with who holds the lock."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise _refused(f.read().strip() or "another process") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {' '.join(sys.argv) or 'python'}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def under_dvc(root: Path = Path(".")) -> bool:
    """True in a stage command that `dvc repro`/`dvc exp run` started in this workspace: that DVC
    process holds the stage's outputs (and takes its repo lock back when the command ends)."""
    dvc_root = os.environ.get("DVC_ROOT")
    return bool(os.environ.get("DVC_STAGE") and dvc_root and Path(dvc_root).resolve() == root.resolve())


@contextmanager
def run_lock(root: Path = Path(".")) -> Iterator[None]:
    """The one lock of a pawflow run: DVC's repo lock (so `dvc repro` and friends are refused by DVC
    before they remove or record anything), then the workspace lock. A stage command started by DVC
    takes only the workspace lock: its DVC process already excludes every other entry point."""
    if under_dvc(root):
        with workspace_lock(root):
            yield
        return
    from tasks.history import versioning

    holder = lock_holder(root)
    if holder:  # a pawflow run (it holds DVC's lock too): say who, without waiting for DVC's lock
        raise _refused(holder)
    with versioning.dvc_lock(root), workspace_lock(root):
        yield
