"""The one exception type a person is meant to read: what is wrong, where, and what to do."""

from __future__ import annotations


class PawflowError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

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
