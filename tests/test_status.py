"""tasks/core/status.py: one vocabulary for a photo's status and the gate's decision, written as plain
strings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.core.fileio import read_parquet, write_parquet
from tasks.core.status import Decision, Status


def test_values_are_the_strings_the_files_hold():
    assert [str(s) for s in Status] == [
        "kept",
        "rejected",
        "duplicate",
        "conflict",
        "excluded",
        "quarantined",
    ]
    assert [str(d) for d in Decision] == ["promoted", "rejected"]
    assert Status("duplicate") is Status.DUPLICATE and Status.KEPT == "kept"


def test_members_are_written_as_their_plain_strings(tmp_path: Path):
    """A status column of members writes the bytes of one of strings (parquet and JSON alike)."""
    members = pd.DataFrame(
        {"path": ["a", "b", "c"], "status": [Status.KEPT, Status.DUPLICATE, Status.CONFLICT]}
    )
    strings = members.assign(status=["kept", "duplicate", "conflict"])
    write_parquet(tmp_path / "members.parquet", members)
    write_parquet(tmp_path / "strings.parquet", strings)
    assert (tmp_path / "members.parquet").read_bytes() == (tmp_path / "strings.parquet").read_bytes()
    assert read_parquet(tmp_path / "members.parquet")["status"].tolist() == ["kept", "duplicate", "conflict"]
    assert json.dumps({Status.KEPT: Decision.PROMOTED}) == '{"kept": "promoted"}'


def test_a_status_column_of_strings_compares_equal_to_members():
    df = pd.DataFrame({"status": ["kept", "rejected", "kept"]})
    assert (df["status"] == Status.KEPT).tolist() == [True, False, True]
