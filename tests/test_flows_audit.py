"""flows/audit.py with dedup and shard in-process: a batch the champion contradicts is quarantined, held
out of the shards, never audited again, and trained on once released (the scores are given: no
TensorFlow; tests/test_collection.py runs the real champion end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import imagegen
import pandas as pd
import pytest
from dataflows import run

from flows.audit import audit_flow, main
from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks import audit
from tasks.photos import quarantine
from tasks.photos.datasetinfo import DatasetInfo
from tasks.reports.reports import AUDIT

pytestmark = pytest.mark.usefixtures("prefect_server")
OTHER = {"Cat": "Dog", "Dog": "Cat"}


def fake_champion(models: Path) -> None:
    (models / "champion").mkdir(parents=True)
    (models / "champion" / "model.keras").write_bytes(b"a model")
    (models / "champion" / "champion.json").write_text(
        json.dumps({"metrics": {"accuracy": 0.95, "examples": 200}})
    )


def swapped_names(prefix: str):
    """A scorer whose champion contradicts every photo named prefix* (and agrees with the rest)."""

    def score(champ, photos: pd.DataFrame, raw: Path, tf_settings) -> pd.DataFrame:
        wrong = photos["path"].str.split("/").str[1].str.startswith(prefix)
        predicted = [OTHER[lbl] if w else lbl for lbl, w in zip(photos["label"], wrong, strict=True)]
        return photos.assign(predicted=predicted, confidence=0.99)[audit.SCORED_COLUMNS]

    return score


def examples(params) -> int:
    return sum(s.examples for s in DatasetInfo.read(params.paths.processed).splits.values())


@pytest.mark.slow
def test_a_contradicted_batch_is_held_out_until_released(tmp_path: Path, make_params, monkeypatch):
    source = imagegen.make_dataset(tmp_path / "source", per_class=10)
    params = make_params(source, audit={"min_photos": 6})
    run(params, ingest_flow, clean_flow, audit_flow, dedup_flow, shard_flow)
    assert AUDIT.read(params.paths.reports) == audit.initial()  # no champion: nothing audited
    assert examples(params) == 20
    fake_champion(params.paths.models)
    monkeypatch.setattr(audit, "score", swapped_names("bad."))
    for i in range(8):  # a night whose every label is contradicted
        (source / ("Cat" if i % 2 else "Dog") / f"bad.{i}.jpg").write_bytes(imagegen.jpeg(800 + i))
    run(params, ingest_flow, clean_flow, audit_flow, dedup_flow, shard_flow)
    rep = AUDIT.read(params.paths.reports)
    assert rep["tripped"] and rep["new_photos"] == rep["quarantined"] == rep["contradicted"] == 8
    (batch,) = quarantine.read(params.paths.interim).held_batches()
    assert batch.id == rep["batch"] and len(batch.photos) == 8
    assert examples(params) == 20  # held out of every split
    dd = pd.read_parquet(params.paths.interim / "dedup.parquet")
    assert (dd["status"] == "quarantined").sum() == 8
    page = (params.paths.reports / "data.html").read_text()
    assert f"batch {batch.id}: 8 photos held" in page and "champion: Cat (99.0%)" in page

    # The next night: good photos arrive and the batch is released (its labels were checked). The good
    # photos are audited, the released batch is not (trusted), and both are split.
    for i in range(6):
        (source / ("Cat" if i % 2 else "Dog") / f"good.{i}.jpg").write_bytes(imagegen.jpeg(900 + i))
    q, _ = quarantine.release(quarantine.read(params.paths.interim), [batch.id[:6]])
    quarantine.write(params.paths.interim, q)
    run(params, ingest_flow, clean_flow, audit_flow, dedup_flow, shard_flow)
    rep = AUDIT.read(params.paths.reports)
    assert not rep["tripped"] and rep["new_photos"] == 6 and rep["disagreements"] == 0
    assert examples(params) == 34 and quarantine.read(params.paths.interim).held() == set()
    ledger = pd.read_parquet(params.paths.interim / "split.parquet")
    assert sorted(set(ledger["arrival"])) == [0, 1]  # the released batch arrives when it is released


def test_dvc_repros_command_writes_empty_outputs_and_keeps_existing_ones(tmp_path: Path, monkeypatch):
    import yaml

    ws = tmp_path / "ws"
    ws.mkdir()
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(ws)
    assert main([]) == 0
    assert AUDIT.read(ws / "reports") == audit.initial()
    held = quarantine.add(
        quarantine.Quarantine(),
        quarantine.new_batch(
            pd.DataFrame({"path": ["Cat/a.jpg"], "label": ["Cat"], "sha256": ["a" * 64]}), "why"
        ),
    )
    quarantine.write(ws / "data/interim", held)
    assert main([]) == 0  # never audits: the quarantine stays as it is
    assert quarantine.read(ws / "data/interim") == held
