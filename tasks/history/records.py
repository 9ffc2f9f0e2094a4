"""The lines of the run history (params pipeline.history, `reports/runs.jsonl`; local, not tracked).

One JSON object per line, of two kinds, told apart by their `stage` key:
- StageLine: one stage's figures of one run (times, throughput, what it reused), written by the stage as
  it ends (flows.common.record_stage_run);
- RunLine: a run as it ends (tasks.history.versioning.record_run): what each stage did, dvc.lock's
  outputs, the params, metrics and gate, `run` (the run's facts: tasks.history.nightly) and `version`
  (the commit that records it, None for a run that recorded none).
Both keep the keys they do not name (a stage's own figures; what an older pawflow wrote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter, ValidationError

from tasks.core.fileio import append_history


class StageLine(BaseModel):
    """A stage's figures of one run; the figures are its other keys."""

    model_config = ConfigDict(extra="allow")
    finished: str  # ISO 8601, UTC
    stage: str


class RunLine(BaseModel):
    """A run of the pipeline (or `pawflow run`), as it ended."""

    model_config = ConfigDict(extra="allow")
    finished: str  # ISO 8601, UTC
    entry: str  # "prefect" (the pipeline flow, any deployment) or "dvc repro" (`pawflow run`)
    git_commit: str | None = None
    stages: dict[str, str] = {}  # stage -> "ran (12.3s)" | "skipped (up to date)"
    dvc_lock: dict[str, dict[str, str]] = {}  # stage -> output path -> hash
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    gate: dict[str, Any] = {}
    run_id: str | None = None
    run: dict[str, Any] | None = None  # the run's facts: what `pawflow history` shows
    version: str | None = None


def _kind(value: Any) -> str:
    """Which kind a parsed line is: a stage's if it names one (anything else is validated as a run)."""
    return "stage" if isinstance(value, dict) and "stage" in value else "run"


Line = Annotated[Annotated[StageLine, Tag("stage")] | Annotated[RunLine, Tag("run")], Discriminator(_kind)]
LINE: TypeAdapter[StageLine | RunLine] = TypeAdapter(Line)


def parse(text: str) -> StageLine | RunLine | None:
    """One line as its record; None for a line that is not one (a run killed mid-write, a stray edit)."""
    try:
        return LINE.validate_python(json.loads(text))
    except (json.JSONDecodeError, ValidationError):
        return None


def read(path: Path) -> list[StageLine | RunLine]:
    """The records of a run history, in order; lines that are none skipped; no file: []."""
    if not path.exists():
        return []
    found = (parse(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [rec for rec in found if rec is not None]


def append(path: Path, record: StageLine | RunLine) -> dict[str, Any]:
    """Append one record as a line (tasks.core.fileio.append_history); returns what was written."""
    data = record.model_dump()
    append_history(path, data)
    return data
