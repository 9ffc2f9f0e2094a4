"""tasks.reports.summary: the pipeline run's summary artifact, from the stage reports (no flow run, no
server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import params_for
from reportsamples import sample, write_samples

from tasks.core.text import md
from tasks.core.text import md as escaped
from tasks.history import versioning
from tasks.reports import summary


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
    assert "**clean**: 40 files: 38 kept" in md and "earlier run" not in md


def test_numbers_of_a_skipped_stage_are_marked_as_an_earlier_runs(tmp_path: Path):
    params = reports(tmp_path)
    stages = dict.fromkeys(
        ("ingest", "clean", "audit", "dedup", "shard", "base", "train"), "skipped (up to date)"
    )
    stages["evaluate"] = "ran (3.0s)"
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "**clean** (from an earlier run: up to date in dvc.lock): 40 files" in md
    assert "**train** (from an earlier run: up to date in dvc.lock): trained from scratch" in md
    assert "**test accuracy** 84.3 % on 600 photos" in md and "**gate**: Promoted: " in md
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


def test_numbers_are_written_for_a_person(tmp_path: Path):
    params = params_for(tmp_path, tmp_path / "photos")
    write_samples(
        params.paths.reports,
        clean={"files": 4007, "kept": 4002, "rejected": 5, "per_reason": {"not_an_image": 5}},
        metrics={"roc_auc": 0.9229888888888889, "ece": 0.024156950083409692, "accuracy": 0.85},
        gate={"p_value": None},
    )
    stages = dict.fromkeys(versioning.STAGES, "ran (1.0s)")
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "**clean**: 4,007 files: 4,002 kept, 5 rejected (not_an_image 5); of the kept, 2 flagged" in md
    assert "(blurry 1, dark 1, low_information 1)" in md
    assert "**test accuracy** 85.0 % on 600 photos: F1 84.0 %, ROC AUC 0.923, ECE 0.024" in md
    assert "**gate**: Promoted: there is no champion yet" in md
    for raw in ("0.9229888", "None", "p=", "0.024156"):
        assert raw not in md, raw
    assert "file://" not in md
    write_samples(params.paths.reports, metrics={"roc_auc": None})
    md = summary.pipeline_markdown(params.paths.reports, stages, False, versioning.STAGES)
    assert "ROC AUC n/a" in md


def test_the_evaluation_artifact_carries_the_figures_and_pictures():
    import base64
    import re

    import imagegen

    from tasks.evaluate import Mistake, Scored
    from tasks.model import gate

    metrics = sample("metrics.json")
    decision = {
        **gate.decide(np.array([True] * 17 + [False] * 3), None, 0.8, 0.05),
        "model_sha256": "ab" * 32,
    }
    png = imagegen.encode(imagegen.photo(1, (40, 30)), "PNG")
    thumb = imagegen.jpeg(2, (64, 48))
    mistakes = [Mistake(f"Cat/{i}.jpg", "Cat", "Dog", 0.97, 64, 48, thumb) for i in range(12)]
    scored = Scored(
        "ab" * 32, "cd" * 32, (("test-0.tfrecord", "ef" * 32, 600),), (("Cat", 300), ("Dog", 300))
    )
    run = {"code": "0123abc", "evaluated": "2026-12-05 03:00 UTC"}
    md = summary.evaluation_markdown(
        metrics, decision, True, {"confusion": png, "roc": png}, mistakes, scored, run
    )
    assert md.startswith("## Evaluation: promoted\n\nPromoted: there is no champion yet")
    assert "| accuracy | 84.3 % (506 of 600 photos) |" in md and "| ROC AUC | 0.900 |" in md
    assert "| test accuracy | ≥ 80.0 % (evaluate.min_accuracy) | 85.0 % | passed |" in md
    assert "| Cat | 84.0 % | 84.0 % | 84.0 % | 300 |" in md
    assert f"model sha256 `{'ab' * 32}`" in md and "code 0123abc, evaluated 2026-12-05 03:00 UTC" in md
    pictures = re.findall(r"!\[([^\]]*)\]\(data:image/(png|jpeg);base64,([^)]*)\)", md)
    assert [alt for alt, kind, _ in pictures if kind == "png"] == ["confusion", "roc"]
    jpegs = [b for _, kind, b in pictures if kind == "jpeg"]
    assert len(jpegs) == summary.MARKDOWN_MISTAKES and base64.b64decode(jpegs[0]) == thumb
    assert (
        f"{escaped('Cat/0.jpg')}: Cat, taken for Dog (97 % sure)" in md
        and "(8 of 12; the report shows all)" in md
    )
    assert "file://" not in md and "None" not in md


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
