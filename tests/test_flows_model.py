"""train and evaluate in-process on a generated 40-photo dataset through the real shards; predict."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import imagegen
import pytest

from flows.clean import clean_flow
from flows.cli import main as pawflow
from flows.dedup import dedup_flow
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from flows.train import train_flow
from tasks.params import Params

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST_TRAIN = {"epochs": 1, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0}
TRAIN_OUTPUTS = [
    "models/model.keras",
    "models/model.json",
    "reports/train.json",
    "reports/train/metrics.json",
    "reports/train/plots/metrics/train/loss.tsv",
    "reports/tensorboard",
]
EVAL_OUTPUTS = [
    "reports/metrics.json",
    "reports/gate.json",
    "reports/scores.json",
    "reports/evaluation.html",
    "reports/misclassified.png",
    "reports/plots/confusion.csv",
    "reports/plots/roc.csv",
    "reports/plots/precision_recall.csv",
    "reports/plots/calibration.csv",
    "models/champion/champion.json",
]


def run(params: Params, *flows, refresh: bool = False) -> list[dict]:
    out = []
    for flow in flows:
        state = flow(params=params, refresh=refresh, return_state=True)
        assert state.is_completed(), state.message
        out.append(state.result())
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_server: str):
    from conftest import params_for

    root = tmp_path_factory.mktemp("model")
    source = imagegen.make_dataset(root / "source", per_class=20)
    params = params_for(root / "work", source, train=FAST_TRAIN, evaluate={"min_accuracy": 0.0})
    run(params, ingest_flow, clean_flow, dedup_flow, shard_flow, train_flow, evaluate_flow)
    return params


def ws(params: Params) -> Path:
    return params.paths.raw.parent.parent


def test_every_output_is_written(trained: Params):
    for rel in TRAIN_OUTPUTS + EVAL_OUTPUTS:
        assert (ws(trained) / rel).exists(), rel
    card = json.loads((ws(trained) / "models/model.json").read_text())
    assert card["class_names"] == ["Cat", "Dog"] and card["image_size"] == 32
    report = json.loads((ws(trained) / "reports/train.json").read_text())
    assert report["epochs_run"] == 1 and report["best_epoch"] == 1
    assert report["device"].startswith("cpu") and report["tensorflow"]["onednn_max_isa"] == "AVX2"
    # This run's figures are in the run history, not in the tracked report.
    assert not {"train_images_per_s", "peak_rss_mb", "wall_time_s"} & set(report)
    runs = [json.loads(line) for line in trained.pipeline.history.read_text().splitlines()]
    figures = [r for r in runs if r.get("stage") == "train"][-1]
    assert figures["train_images_per_s"] > 0 and 0 < figures["peak_rss_mb"] < 4096


def test_metrics_and_report(trained: Params):
    m = json.loads((ws(trained) / "reports/metrics.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss", "ece"):
        assert isinstance(m[key], float), key
    assert set(m["per_class"]) == {"Cat", "Dog"}
    info = json.loads((ws(trained) / "data/processed/dataset_info.json").read_text())
    assert m["examples"] == info["splits"]["test"]["examples"]
    assert sum(map(sum, m["confusion_matrix"])) == m["examples"]
    assert m["robust_examples"] == m["examples"] and 0 <= m["robust_accuracy"] <= 1
    # `dvc metrics show` reads this one: the headline numbers of metrics.json and the gate's decision
    scores = json.loads((ws(trained) / "reports/scores.json").read_text())
    gate = json.loads((ws(trained) / "reports/gate.json").read_text())
    headline = {k: m[k] for k in ("accuracy", "f1_macro", "roc_auc", "ece")}
    assert scores == {**headline, "gate": gate["decision"]}
    page = (ws(trained) / "reports/evaluation.html").read_text()
    assert "Robustness slice" in page and "mirror image" in page  # evaluate.tta is on by default
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, opens offline
    images = [s.split('"')[0] for s in page.split('src="data:image/png;base64,')[1:]]
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


def test_first_model_is_promoted_and_gate_recorded(trained: Params):
    gate = json.loads((ws(trained) / "reports/gate.json").read_text())
    assert gate["promoted"] and gate["p_value"] is None and "no champion yet" in gate["reason"]
    champion = ws(trained) / "models/champion"
    assert (champion / "model.keras").read_bytes() == (ws(trained) / "models/model.keras").read_bytes()
    card = json.loads((ws(trained) / "models/model.json").read_text())
    assert json.loads((champion / "model.json").read_text()) == {**card, "tta": trained.evaluate.tta}
    assert "challenger_robust_accuracy" in gate and gate["min_robust_accuracy"] == 0.0


def test_second_evaluation_compares_with_the_champion(trained: Params):
    (gate,) = run(trained, evaluate_flow)
    assert gate["gate"]["p_value"] == 1.0  # the same model: no disagreements
    assert gate["gate"]["challenger_wins"] == gate["gate"]["challenger_losses"] == 0


def test_cached_training_rewrites_every_output(trained: Params):
    """A Prefect cache hit must not stand in for files that are gone (DVC deletes outputs first)."""
    before = (ws(trained) / "models/model.keras").read_bytes()
    for rel in TRAIN_OUTPUTS:
        p = ws(trained) / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    state = train_flow(params=trained, return_state=True)
    assert state.is_completed()
    for rel in TRAIN_OUTPUTS:
        assert (ws(trained) / rel).exists(), rel
    assert (ws(trained) / "models/model.keras").read_bytes() == before


def test_five_classes_train_and_evaluate(tmp_path: Path):
    from conftest import params_for

    source = imagegen.make_dataset(
        tmp_path / "five", per_class=8, classes=("ant", "bee", "cow", "doe", "elk")
    )
    params = params_for(tmp_path / "work", source, train=FAST_TRAIN, evaluate={"min_accuracy": 0.0})
    *_, result = run(params, ingest_flow, clean_flow, dedup_flow, shard_flow, train_flow, evaluate_flow)
    assert set(result["metrics"]["per_class"]) == {"ant", "bee", "cow", "doe", "elk"}
    assert len(result["metrics"]["confusion_matrix"]) == 5


def test_predict_good_corrupt_and_directory(trained: Params, tmp_path: Path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(imagegen.jpeg(1, (120, 90)))
    (photos / "nested" / "b.png").write_bytes(imagegen.encode(imagegen.photo(2, (80, 80)), "PNG"))
    (photos / "nested" / "broken.jpg").write_bytes(imagegen.truncated_jpeg(3))
    (photos / "bomb.png").write_bytes(imagegen.png_header_only(30_000, 30_000))
    monkeypatch.chdir(ws(trained))
    code = pawflow(
        [
            "predict",
            str(photos),
            str(photos / "a.jpg"),
            "--csv",
            "--model",
            str(ws(trained) / "models/champion"),
        ]
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 1  # some files could not be labelled
    by_name = {Path(r["path"]).name: r for r in rows}
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "bomb.png", "b.png", "broken.jpg", "a.jpg"]
    for name in ("a.jpg", "b.png"):
        assert by_name[name]["label"] in {"Cat", "Dog"} and 0.5 <= float(by_name[name]["confidence"]) <= 1
        assert by_name[name]["error"] == ""
    assert by_name["broken.jpg"]["label"] == "" and by_name["broken.jpg"]["error"].startswith("truncated")
    assert by_name["bomb.png"]["error"].startswith("decompression_bomb")


def test_predict_without_a_model_is_a_clear_error(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(tmp_path), "--model", str(tmp_path / "none")]) == 2
    assert "--model " + str(tmp_path / "none") + ": the path does not exist" in capsys.readouterr().err
