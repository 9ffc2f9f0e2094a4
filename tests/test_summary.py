"""tasks.summary: the pipeline run's summary artifact, from the stage reports (no flow run, no server)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import params_for
from reportsamples import sample, write_samples

from tasks import summary, versioning
from tasks.text import md


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
    stages = dict.fromkeys(("ingest", "clean", "dedup", "shard", "base", "train"), "skipped (up to date)")
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
        f"**train**: warm start #2 from {'ab' * 6} (the champion then): {md('7 new photos')}",
    ]
    assert summary.train_start(params.paths.reports) == {"warm_start": warm}
    (params.paths.reports / "train.json").unlink()
    assert summary.warm_start_markdown(params.paths.reports) == []
    assert summary.train_start(params.paths.reports) == {"warm_start": None}


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


def test_class_names_and_reasons_reach_the_summary_as_text(tmp_path: Path):
    """A class named like HTML, a backtick or a `|` must not become markup in Prefect's artifact."""
    from markdown_it import MarkdownIt

    params = reports(tmp_path)
    hostile = ['"><img src=x onerror=alert(1)>', "a|b `c` *d*"]
    shard = json.loads((params.paths.reports / "shard.json").read_text())
    rename = dict(zip(shard["class_names"], hostile, strict=True))
    shard["class_names"] = hostile
    shard["counts"] = {s: {rename[c]: n for c, n in per.items()} for s, per in shard["counts"].items()}
    (params.paths.reports / "shard.json").write_text(json.dumps(shard))
    metrics = json.loads((params.paths.reports / "metrics.json").read_text())
    (params.paths.reports / "metrics.json").write_text(json.dumps({**metrics, "roc_auc": None}))
    stages = dict.fromkeys(versioning.STAGES, "ran (1.0s)")
    text = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    page = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert "<img" not in page and "<code>" not in page and "<em>" not in page
    shard_table = page.split("<table>")[2]
    header = shard_table.split("</tr>")[0]
    assert header.count("<th>") == 3 and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in header
    assert "ROC AUC n/a" in text
