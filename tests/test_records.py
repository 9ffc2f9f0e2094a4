"""tasks/history/records.py: the two kinds of line in the run history, written and read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.history import records
from tasks.history.records import RunLine, StageLine


def test_each_line_reads_back_as_its_kind_with_the_keys_it_does_not_name(tmp_path: Path):
    path = tmp_path / "reports" / "runs.jsonl"
    stage = StageLine(finished="2026-12-05T03:00:10+00:00", stage="clean", runner={"workers": 2})
    run = RunLine(
        finished="2026-12-05T03:02:00+00:00",
        entry="prefect",
        stages={"clean": "ran (3.1s)"},
        run_id="20261205-030000",
        run={"id": "20261205-030000", "outcome": "completed"},
        seconds=120.5,
    )
    assert records.append(path, stage)["runner"] == {"workers": 2}
    records.append(path, run)
    with path.open("a") as f:
        f.write('{"broken\n[1, 2]\n{"finished": "x"}\n')  # a cut line, not an object, neither kind
    got = records.read(path)
    assert [type(r) for r in got] == [StageLine, RunLine]
    assert got == [stage, run]
    assert got[0].model_dump()["runner"] == {"workers": 2} and got[1].model_dump()["seconds"] == 120.5
    assert json.loads(path.read_text().splitlines()[1])["run"]["outcome"] == "completed"
    assert records.read(tmp_path / "none.jsonl") == []


def test_a_line_is_checked_where_it_is_written():
    with pytest.raises(ValidationError, match="stages"):
        RunLine(finished="2026-12-05T03:02:00+00:00", entry="prefect", stages={"clean": 3.1})
    with pytest.raises(ValidationError, match="stage"):
        StageLine.model_validate({"finished": "2026-12-05T03:00:10+00:00"})
