"""The one exception type a person is meant to read: what is wrong, where, and what to do."""

from __future__ import annotations

import sys
from enum import IntEnum


class ExitCode(IntEnum):
    """What every pawflow command exits with (the CLI, `python -m flows.<stage>`, the pipeline), the
    one place these numbers are written."""

    OK = 0
    FAILED = 1  # the run started and failed: its error, a full disk, its Prefect API gone
    REFUSED = 2  # bad usage, params or input, refused before anything changed
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended
    TERMINATED = 143  # 128 + SIGTERM (or the process that started it gone)


class PawflowError(Exception):
    """A problem with the user's input or environment, reported without a traceback. Refused before
    the run changed anything (exit 2) unless a subclass says the run had started (exit 1)."""

    exit_code: ExitCode = ExitCode.REFUSED

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}\n  What to do: {fix}")

    def __reduce__(self) -> tuple:
        # Rebuilt from what and fix, not from the joined text: an error raised in a worker process (the
        # processes or Dask task runner) reaches the flow with its "What to do" intact.
        return type(self), (self.what, self.fix)


class Refused(PawflowError):
    """Input refused by a stage before it changed anything (exit 2, like bad usage): e.g. a source that
    lost most of the collection (tasks.ingest.guard_removals)."""


def report(prog: str, err: PawflowError) -> int:
    """Print a user's error once, under the command that met it ("pawflow ingest"), and return its exit
    code: how every entry point ends on a PawflowError."""
    print(f"\n{prog}: {err}", file=sys.stderr)
    return int(err.exit_code)
