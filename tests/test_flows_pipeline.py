"""The pipeline flow's summary artifact, its concurrency limit and its command line (no flow run, no
server)."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import pytest
from conftest import params_for

from flows.pipeline import _summary_markdown, main, workspace_limit


def reports(tmp_path: Path):
    params = params_for(tmp_path, tmp_path / "photos")
    r = params.paths.reports
    r.mkdir(parents=True)
    files = {
        "clean.json": {"files": 40, "kept": 38, "rejected": 2, "per_reason": {"truncated": 2}},
        "dedup.json": {"exact_duplicates": 1, "near_duplicates": 0, "conflict": 0},
        "shard.json": {"class_names": ["Cat", "Dog"], "counts": {"train": {"Cat": 15, "Dog": 15}}},
        "metrics.json": {"accuracy": 0.8433, "f1_macro": 0.84, "roc_auc": 0.9, "ece": 0.01, "examples": 600},
        "gate.json": {"decision": "promoted", "p_value": 1.0, "reason": "first model"},
        "train.json": {"warm_start": None, "start_reason": "no champion"},
    }
    for name, data in files.items():
        (r / name).write_text(json.dumps(data))
    return params


def test_after_until_shard_no_model_numbers_from_committed_reports(tmp_path: Path):
    params = reports(tmp_path)
    stages = {"ingest": "ran (1.0s)", "clean": "ran (2.0s)", "dedup": "ran (1.0s)", "shard": "ran (1.0s)"}
    md = _summary_markdown(params, stages, no_new_data=False)
    assert "test accuracy" not in md and "gate" not in md and "0.8433" not in md
    assert "Not part of this run: " in md and "train, evaluate (nothing of theirs is shown)" in md
    assert "**train**" not in md
    assert "**clean**: 40 files, 38 kept" in md and "earlier run" not in md


def test_numbers_of_a_skipped_stage_are_marked_as_an_earlier_runs(tmp_path: Path):
    params = reports(tmp_path)
    stages = dict.fromkeys(("ingest", "clean", "dedup", "shard", "base", "train"), "skipped (up to date)")
    stages["evaluate"] = "ran (3.0s)"
    md = _summary_markdown(params, stages, no_new_data=False)
    assert "**clean** (from an earlier run: up to date in dvc.lock): 40 files" in md
    assert "**train** (from an earlier run: up to date in dvc.lock): trained from scratch" in md
    assert "**test accuracy** 0.8433" in md and "**gate**: promoted" in md
    assert "Not part of this run" not in md


def test_a_local_run_takes_no_global_concurrency_limit():
    # Outside a deployment the limit `pawflow serve` creates does not exist: taking it would warn.
    assert isinstance(workspace_limit(), contextlib.nullcontext)


def test_every_option_of_python_m_flows_pipeline_has_help(monkeypatch: pytest.MonkeyPatch):
    seen: list[argparse.ArgumentParser] = []

    def stop(parser, args=None, namespace=None):
        seen.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        main(["-h"])
    (parser,) = seen
    options = [a for a in parser._actions if a.option_strings]
    assert {"--source", "--epochs", "--force", "--no-push", "--until", "--warm-start", "--full-retrain"} <= {
        o for a in options for o in a.option_strings
    }
    assert [a.option_strings for a in options if not (a.help or "").strip()] == []
    assert parser.description and "ingest -> clean" in parser.description
