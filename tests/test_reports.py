"""tasks/reports/reports.py: every stage report's contract refuses a missing or unknown key (naming it), and
the reports the stage code writes on generated photos match their contracts, byte for byte as json.dumps."""

from __future__ import annotations

import json
from pathlib import Path

import dataflows
import numpy as np
import pandas as pd
import pytest
from conftest import params_for
from reportsamples import SAMPLES, sample

from tasks import clean, dedup, evaluate, ingest, shard
from tasks.core.errors import PawflowError
from tasks.core.fileio import dumps_json
from tasks.core.params import Params
from tasks.core.status import Decision
from tasks.model import gate
from tasks.reports.reports import CLEAN, DEDUP, GATE, INGEST, METRICS, REPORTS, SCORES, SHARD, TRAIN, Report

BY_NAME = {r.name: r for r in REPORTS}


def test_every_report_has_a_sample_that_its_contract_accepts(tmp_path: Path):
    assert set(BY_NAME) == set(SAMPLES)
    for name, report in BY_NAME.items():
        report.write(tmp_path, sample(name))
        assert (tmp_path / name).read_bytes() == dumps_json(sample(name)).encode()
        assert report.read(tmp_path) == sample(name)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_missing_key_is_refused_and_named(name: str, tmp_path: Path):
    report = BY_NAME[name]
    for key in SAMPLES[name]:
        if key in ("robust_accuracy", "robust_examples"):  # optional: not measured without a slice
            continue
        broken = sample(name)
        del broken[key]
        with pytest.raises(PawflowError, match=f"missing key '{key}'") as err:
            report.write(tmp_path, broken)
        assert name in str(err.value) and "bug in pawflow" in str(err.value)
        assert not (tmp_path / name).exists()  # nothing written


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_an_unknown_key_is_refused_and_named(name: str, tmp_path: Path):
    with pytest.raises(PawflowError, match="unknown key 'surprise'"):
        BY_NAME[name].write(tmp_path, sample(name, surprise=1))
    assert not (tmp_path / name).exists()


def test_keys_of_nested_parts_are_named_with_their_path(tmp_path: Path):
    broken = sample("clean.json")
    broken["per_label"]["Cat"]["dropped"] = 0
    del broken["rejected_files"][1]["detail"]
    with pytest.raises(PawflowError) as err:
        CLEAN.write(tmp_path, broken)
    assert "unknown key 'per_label.Cat.dropped'" in str(err.value)
    assert "missing key 'rejected_files.1.detail'" in str(err.value)


def test_wrong_types_are_refused():
    with pytest.raises(PawflowError, match="'files': Input should be a valid integer"):
        CLEAN.check(sample("clean.json", files=True))  # a bool is not a count
    with pytest.raises(PawflowError, match="'decision': Input should be 'promoted' or 'rejected'"):
        GATE.check(sample("gate.json", decision="maybe"))
    with pytest.raises(PawflowError, match="kind"):
        DEDUP.check(
            sample(
                "dedup.json",
                groups=[
                    {
                        **SAMPLES["dedup.json"]["groups"][0],
                        "duplicates": [{"path": "x", "kind": "similar", "distance": 3}],
                    }
                ],
            )
        )


def test_reading_a_broken_or_missing_report_is_one_message_naming_the_file_and_key(tmp_path: Path):
    assert TRAIN.read_if_written(tmp_path) is None
    with pytest.raises(PawflowError, match=r"train\.json cannot be read"):
        TRAIN.read(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(sample("metrics.json", extra_metric=1.0)))
    with pytest.raises(PawflowError) as err:
        METRICS.read_if_written(tmp_path)
    text = str(err.value)
    assert str(tmp_path / "metrics.json") in text and "unknown key 'extra_metric'" in text
    assert "dvc repro -f evaluate" in text
    (tmp_path / "gate.json").write_text("{not json")
    with pytest.raises(PawflowError, match=r"gate\.json is not a valid evaluate report"):
        GATE.read(tmp_path)


def test_read_gives_typed_values(tmp_path: Path):
    GATE.write(tmp_path, sample("gate.json"))
    assert GATE.read(tmp_path)["decision"] is Decision.PROMOTED
    SCORES.write(tmp_path, sample("scores.json", gate="rejected"))
    assert SCORES.read(tmp_path)["gate"] is Decision.REJECTED


def stage_reports(work: Path) -> dict[Report, dict]:
    """ingest -> shard through tasks/ on the messy generated source: each stage's report."""
    src = dataflows.messy_source(work / "source")
    params = params_for(work / "w", src)
    p = params.paths
    listing = ingest.resolve(params.ingest, p.cache / "downloads", progress=False)
    result = ingest.sync(listing.entries, p.raw, {})
    manifest, _ = ingest.manifest(p.raw, {}, progress=False)
    items = list(zip(manifest["path"], manifest["sha256"], strict=True))
    settings = clean.check_settings(params)
    checked = clean.table(clean.check_items(p.raw, items, settings, p.cache), params.clean.flags)
    dd = dedup.find_duplicates(dedup.kept_photos(checked), params.dedup.max_distance)
    p.interim.mkdir(parents=True)
    dd.to_parquet(p.interim / "dedup.parquet")
    rows, _, _ = shard.assign_splits(p.interim, params.shard.split.as_dict(), params.shard.salt)
    examples = shard.kept_examples(rows, params.shard.split.as_dict())
    fp = clean.settings_fingerprint(settings)
    names = sorted(examples["label"].unique().tolist())
    info = shard.dataset_info(examples, names, params.shard)
    plans = shard.plan(examples, p.processed, params.shard.salt, fp, names)
    todo = pd.concat([q.part for q in plans], ignore_index=True)
    sizes = shard.thumb_sizes(todo, p.cache, fp)
    info = shard.write_shards(plans, sizes, p.processed, p.cache, params.shard.shard_bytes, fp, info)
    return {
        INGEST: ingest.report(listing, result, manifest, "mirror"),
        CLEAN: clean.report(checked),
        DEDUP: dedup.report(dd),
        SHARD: shard.report(info),
    }


def test_the_data_stages_reports_match_their_contracts(tmp_path: Path):
    reps = stage_reports(tmp_path)
    assert reps[CLEAN]["rejected"] > 0 and reps[DEDUP]["duplicate"] > 0 and reps[DEDUP]["conflict"] > 0
    assert reps[INGEST]["skipped"] or reps[INGEST]["files"]  # the messy source reached every stage
    for report, rep in reps.items():
        report.write(tmp_path / "reports", rep)
        assert (tmp_path / "reports" / report.name).read_bytes() == dumps_json(rep).encode()
        assert report.read(tmp_path / "reports") == rep


def test_evaluate_reports_match_their_contracts_and_validation_changes_nothing(tmp_path: Path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    test = evaluate.Predictions(probs, np.array([0, 1, 1, 1]), list("abcd"))
    for robust in (None, evaluate.Predictions(probs[[0, 2, 2, 2]], np.array([0, 1, 1, 1]), list("abcd"))):
        m = evaluate.compute_metrics(test, ["Cat", "Dog"], 5, robust)
        METRICS.write(tmp_path, m)
        assert METRICS.read(tmp_path) == m
    right = np.array([True] * 9 + [False])
    for champion, robust in ((None, None), (right, right), (~right, None)):
        decision = {**gate.decide(right, champion, 0.5, 0.05, robust, 0.5), "model_sha256": "cd" * 32}
        GATE.write(tmp_path, decision)
        assert GATE.read(tmp_path) == decision
        SCORES.write(tmp_path, evaluate.scores(m, decision))
        assert SCORES.read(tmp_path) == evaluate.scores(m, decision)
    with pytest.raises(PawflowError, match="missing key 'model_sha256'"):
        GATE.check(gate.decide(right, None, 0.5, 0.05))  # the flow adds which model it is about


def test_train_and_evaluate_reports_of_a_real_run_read_back_equal(trained: Params):
    """train.json, metrics.json, gate.json and scores.json as the flows wrote them (through their
    contracts): read typed, each equals the plain JSON, and the bytes are json.dumps's of it."""
    reports = trained.paths.reports
    for report in (TRAIN, METRICS, GATE, SCORES):
        data = report.path(reports).read_bytes()
        plain = json.loads(data)
        assert report.read(reports) == plain
        assert dumps_json(plain).encode() == data
    assert GATE.read(reports)["decision"] is Decision.PROMOTED  # min_accuracy 0: the first model passes
