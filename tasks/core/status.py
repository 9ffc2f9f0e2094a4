"""The one vocabulary of a photo's status, of the gate's decision and of what a run did with each stage
(values as the files hold them).

A photo is kept or rejected by clean (clean.parquet), then kept, a duplicate, in a label conflict,
excluded or quarantined after dedup (dedup.parquet, split.parquet). Both are StrEnums: a member is the
plain string it stands for (equal to it, and written as it by json and pyarrow), so the files' bytes are
those of the strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tasks.core.errors import PawflowError


class Status(StrEnum):
    """A photo's status: clean's verdict (KEPT, REJECTED), then dedup's (KEPT, DUPLICATE, CONFLICT)."""

    KEPT = "kept"
    REJECTED = "rejected"  # clean: the file is not a usable photo (clean.parquet's `reason` says why)
    DUPLICATE = "duplicate"  # dedup: another photo of its group is kept
    CONFLICT = "conflict"  # dedup: its group spans labels, so none of it is used
    EXCLUDED = "excluded"  # dedup: named in the exclude list (paths.exclude), never split
    QUARANTINED = "quarantined"  # dedup: in a batch the label audit holds out until it is released


class Decision(StrEnum):
    """The promotion gate's decision on a newly trained model (reports/gate.json, scores.json)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"


# A stage's status in a run, as the run history holds it ("ran (12.3s)", "ran" when the time is not
# known, or this).
SKIPPED = "skipped (up to date)"


@dataclass(frozen=True, repr=False)
class StageRun:
    """What a pipeline run did with one stage: ran it (or found it up to date in dvc.lock), whether its
    outputs changed, in how many seconds, ingest's figures of what changed in the collection, or the
    error it failed with (the pipeline reports it once)."""

    stage: str
    ran: bool
    new_outputs: bool = False
    seconds: float | None = None
    figures: dict[str, Any] | None = None
    error: PawflowError | None = None

    @property
    def status(self) -> str:
        if not self.ran:
            return SKIPPED
        return "ran" if self.seconds is None else f"ran ({self.seconds}s)"

    def __repr__(self) -> str:  # what Prefect's log line of a failed stage task shows: not the error again
        return f"StageRun({self.stage}: {'failed' if self.error else self.status})"


def ran(stages: dict[str, str], stage: str) -> bool:
    """Whether a run's stage statuses (stage -> status) say the stage ran in it."""
    return str(stages.get(stage, "")).startswith("ran")
