"""tasks.summary: the pipeline run's summary artifact, from the stage reports (no flow run, no server)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import params_for
from reportsamples import sample, write_samples

from tasks import summary, versioning


def reports(tmp_path: Path):
    params = params_for(tmp_path, tmp_path / "photos")
    write_samples(params.paths.reports)  # clean: 40 files, 38 kept; metrics: accuracy 0.8433; promoted
    return params


def test_after_until_shard_no_model_numbers_from_committed_reports(tmp_path: Path):
    params = reports(tmp_path)
    stages = {"ingest": "ran (1.0s)", "clean": "ran (2.0s)", "dedup": "ran (1.0s)", "shard": "ran (1.0s)"}
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "test accuracy" not in md and "gate" not in md and "0.8433" not in md
    assert "Not part of this run: " in md and "train, evaluate (nothing of theirs is shown)" in md
    assert "**train**" not in md
    assert "**clean**: 40 files, 38 kept" in md and "earlier run" not in md


def test_numbers_of_a_skipped_stage_are_marked_as_an_earlier_runs(tmp_path: Path):
    params = reports(tmp_path)
    stages = dict.fromkeys(
        ("ingest", "clean", "audit", "dedup", "shard", "base", "train"), "skipped (up to date)"
    )
    stages["evaluate"] = "ran (3.0s)"
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "**clean** (from an earlier run: up to date in dvc.lock): 40 files" in md
    assert "**train** (from an earlier run: up to date in dvc.lock): trained from scratch" in md
    assert "**test accuracy** 0.8433" in md and "**gate**: promoted" in md
    assert "Not part of this run" not in md


def test_a_warm_started_model_and_the_run_history_record(tmp_path: Path):
    params = reports(tmp_path)
    warm = {"count": 2, "from_sha256": "ab" * 32}
    (params.paths.reports / "train.json").write_text(
        json.dumps(sample("train.json", warm_start=warm, start_reason="7 new photos"))
    )
    assert summary.warm_start_markdown(params.paths.reports) == [
        "",
        f"**train**: warm start #2 from {'ab' * 6} (the champion then): 7 new photos",
    ]
    assert summary.train_start(params.paths.reports) == {"warm_start": warm}
    (params.paths.reports / "train.json").unlink()
    assert summary.warm_start_markdown(params.paths.reports) == []
    assert summary.train_start(params.paths.reports) == {"warm_start": None}


def test_what_the_run_changed_in_the_collection_and_the_audit(tmp_path: Path):
    params = reports(tmp_path)
    stages = dict.fromkeys(versioning.STAGES, "ran (1.0s)")
    figures = {
        "copied": 5,
        "updated": 0,
        "removed": 3,
        "relabelled": 2,
        "renamed": 0,
        "relabelled_per_class": {"Cat": {"Dog": 2}},
    }
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES, figures)
    assert (
        "**ingest**: the collection follows the source: +5 new, removed 3, relabelled 2 (Cat -> Dog 2)" in md
    )
    assert "**label audit**: **QUARANTINED**: the champion disagrees with 14 of 30" in md
    assert "1 excluded by you, 0 held in quarantine" in md
    stages["audit"] = "skipped (up to date)"  # an earlier run's audit: its verdict, not flagged as new
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "**label audit** (from an earlier run: up to date in dvc.lock): the champion" in md
    assert "QUARANTINED" not in md and "**ingest**" not in md


def test_no_new_data_is_said_first():
    md = summary.pipeline_markdown(Path("/nonexistent"), {"ingest": "ran (1.0s)"}, True, ("ingest", "clean"))
    assert md.splitlines()[2] == "**No new data**: the source has not changed, nothing was retrained."
    assert "Not part of this run: clean (nothing of theirs is shown)." in md


def test_why_a_stage_runs_is_one_readable_line():
    changed = [
        {"changed deps": {"params.yaml": {"ingest.source": "modified"}, "../photos": "modified"}},
        {"changed outs": {f"data/raw/{i}.jpg": "deleted" for i in range(6)}},
        "always changed",
    ]
    assert summary.why_stage_runs(changed, most=4) == (
        "changed deps: params.yaml (ingest.source modified), ../photos (modified); "
        "changed outs: data/raw/0.jpg (deleted), data/raw/1.jpg (deleted), data/raw/2.jpg (deleted), "
        "data/raw/3.jpg (deleted) and 2 more; always changed"
    )
    assert summary.why_stage_runs({"changed deps": {"flows/ingest.py": "modified"}}) == (
        "changed deps: flows/ingest.py (modified)"
    )
