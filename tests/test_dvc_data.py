"""End to end through the real entry point: `dvc repro` of the data stages in a fresh workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagegen
import pytest
import yaml
from conftest import make_workspace, tool_env
from PIL import Image, ImageEnhance

pytestmark = pytest.mark.slow


def dvc(ws: Path, *args: str, api_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, env=tool_env(api_url), capture_output=True, text=True
    )


def ran(out: str) -> list[str]:
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_data_stages(tmp_path: Path, prefect_server: str):
    source = imagegen.make_dataset(tmp_path / "source", per_class=20)
    (source / "Cat" / "Thumbs.db").write_bytes(imagegen.OLE2_MAGIC + bytes(512))
    # A near duplicate at perceptual distance 2 of dog.2 (lower contrast, recompressed).
    near = ImageEnhance.Contrast(Image.open(source / "Dog" / "dog.2.jpg")).enhance(0.9)
    (source / "Dog" / "dog.2 edited.jpg").write_bytes(imagegen.encode(near, "JPEG", quality=60))
    ws = make_workspace(tmp_path / "ws", source)

    first = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran(first.stdout) == ["check", "ingest", "clean", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 40
    assert json.loads((ws / "reports/dedup.json").read_text())["near_duplicates"] == 1
    clean = json.loads((ws / "reports/clean.json").read_text())
    assert clean["per_reason"] == {"not_an_image": 1}

    again = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout
    # The data stages are up to date; train and evaluate were never asked for.
    status = dvc(ws, "status", "shard", api_url=prefect_server)
    assert "up to date" in status.stdout, status.stdout

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dedup"]["max_distance"] = 0  # the edited copy is no longer a duplicate
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert changed.returncode == 0, changed.stderr
    assert ran(changed.stdout) == ["check", "dedup", "shard"]  # check: params.yaml changed
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 41

    for i in range(3):
        (source / "Dog" / f"new.{i}.jpg").write_bytes(imagegen.jpeg(50_000 + i))
    grown = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert ran(grown.stdout) == ["ingest", "clean", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 44
    # What a run copied is run history, not a tracked output (reports/ingest.json lists what raw holds).
    runs = [json.loads(line) for line in (ws / "reports/runs.jsonl").read_text().splitlines()]
    assert [r for r in runs if r.get("stage") == "ingest"][-1]["copied"] == 3
    assert "copied" not in json.loads((ws / "reports/ingest.json").read_text())


def test_bad_input_is_one_clear_error_without_traceback(tmp_path: Path, prefect_server: str):
    ws = make_workspace(tmp_path / "ws", tmp_path / "does-not-exist")
    out = subprocess.run(
        [sys.executable, "-m", "flows.ingest"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "does not exist" in out.stderr and "Set ingest.source" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (ws / "data" / "interim" / "ingest.parquet").exists()

    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nbogus: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "flows.clean"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "bogus: unknown key" in out.stderr and "Traceback" not in out.stderr


def test_dvc_views_show_the_model_metrics_in_one_screen_and_each_plot_once(tmp_path: Path):
    """`dvc metrics show` / `dvc plots show` on the files the stages write (made up here, not trained)."""
    ws = make_workspace(tmp_path / "ws", tmp_path / "source")
    reports = ws / "reports"
    counts = {"files": 4007, "kept": 4002, "per_reason": {"not_an_image": 5}, "source": "a long string " * 9}
    for name in ("ingest", "clean", "dedup", "shard", "train"):
        (reports / f"{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (reports / f"{name}.json").write_text(json.dumps(counts))
    per_class = {c: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 300} for c in ("Cat", "Dog")}
    metrics = {"accuracy": 0.8433, "f1_macro": 0.84, "roc_auc": 0.92, "ece": 0.04, "per_class": per_class}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    (reports / "gate.json").write_text(json.dumps({"decision": "promoted", "reason": "no champion yet " * 5}))
    (reports / "scores.json").write_text(json.dumps({**metrics, "per_class": None, "gate": "promoted"}))
    for split in ("train", "eval"):
        for m in ("loss", "accuracy"):
            tsv = reports / "train/plots/metrics" / split / f"{m}.tsv"
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{m}\n0\t0.7\n1\t0.5\n")
    (reports / "train/metrics.json").write_text(json.dumps({"train": {"loss": 0.5}, "step": 1}))
    (reports / "plots").mkdir()
    (reports / "plots/confusion.csv").write_text("actual,predicted\nCat,Cat\nCat,Dog\nDog,Dog\n")
    (reports / "plots/roc.csv").write_text("fpr,tpr,threshold\n0,0,1\n0.5,1,0.5\n1,1,0\n")
    (reports / "plots/precision_recall.csv").write_text("recall,precision,threshold\n1,0.5,0.1\n0.5,1,0.9\n")
    (reports / "plots/calibration.csv").write_text("bin,confidence,accuracy,count\n5,0.5,0.5,2\n9,1,1,1\n")

    shown = dvc(ws, "metrics", "show", api_url=None)
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.strip().splitlines()
    assert header.split() == ["Path", "accuracy", "ece", "f1_macro", "gate", "roc_auc"]
    assert row.split()[0] == "reports/scores.json" and "promoted" in row
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80

    plots = dvc(ws, "plots", "show", "--json", api_url=None)
    assert plots.returncode == 0, plots.stderr
    drawn = json.loads(plots.stdout)["data"]
    curves = "reports/train/plots/metrics"
    training = [f"{curves}/{s}/{m}.tsv" for s in ("eval", "train") for m in ("accuracy", "loss")]
    tests = ["Confusion matrix (test)", "ROC (test)", "Precision-recall (test)", "Calibration (test)"]
    assert sorted(drawn) == sorted(training + tests)  # once each; no CSV drawn as its own line plot
    assert all(len(v) == 1 for v in drawn.values())
    # The confusion matrix as a matrix (DVC's confusion template: rect marks), every other plot as lines.
    marks = {name: json.dumps(v[0]["content"]) for name, v in drawn.items()}
    assert '"rect"' in marks["Confusion matrix (test)"] and '"line"' not in marks["Confusion matrix (test)"]
    assert all('"line"' in m for name, m in marks.items() if name != "Confusion matrix (test)")
