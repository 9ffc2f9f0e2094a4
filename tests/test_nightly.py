"""tasks/history/nightly.py: the end of every run (history, versions, restore, retention, alerts), and the
nightly service end to end: five nights through `pawflow serve` and `prefect deployment run`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import imagegen
import pytest
import yaml
from commands import dvc, sh, wait_for
from conftest import ROOT, params_for, shipped, tool_env
from httpserver import Receiver
from reportsamples import write_samples
from workspace import workspace

from tasks.core.fileio import sha256_file
from tasks.history import nightly, runstore

PAWFLOW = str(Path(sys.executable).parent / "pawflow")
PREFECT = str(Path(sys.executable).parent / "prefect")


# --------------------------------------------------------------------------- the pure parts


def write_reports(params, accuracy: float = 0.84331, decision: str = "promoted") -> None:
    reports = params.paths.reports
    write_samples(
        reports, metrics={"accuracy": accuracy}, gate={"decision": decision, "reason": "better than 0.8"}
    )
    (reports / "evaluation.html").write_text("<html></html>")


def test_closing_lines_after_a_run(tmp_path: Path):
    params = params_for(tmp_path, tmp_path / "photos")
    write_reports(params)
    (params.paths.models / "champion").mkdir(parents=True)
    (params.paths.models / "champion" / "model.keras").write_bytes(b"k")
    lines = nightly.closing_lines(tmp_path, params).splitlines()
    assert lines == [
        "test accuracy 0.8433 on 600 photos; gate: promoted (better than 0.8)",
        f"report: {params.paths.reports / 'evaluation.html'}",
        f"try it: pawflow predict PHOTO_OR_FOLDER   (default model: {params.paths.models / 'champion'})",
    ]


def test_closing_lines_say_what_is_missing(tmp_path: Path):
    params = params_for(tmp_path, tmp_path / "photos")
    lines = nightly.closing_lines(tmp_path, params).splitlines()
    assert len(lines) == 3
    assert lines[0] == "no test accuracy yet (the evaluate stage has not run)"
    assert lines[1].startswith("report: not written yet")
    assert f"--model {params.paths.models / 'model.keras'}" in lines[2]


def test_history_is_the_versions_plus_the_local_runs_that_recorded_none(tmp_path: Path, monkeypatch):
    from tasks.core.params import load_params

    params = load_params(ROOT / "params.yaml")
    history = tmp_path / params.pipeline.history
    history.parent.mkdir(parents=True)
    ended = {"finished": "2026-12-05T03:01:00+00:00", "entry": "prefect"}
    lines = [
        {
            "finished": "2026-12-03T03:00:30+00:00",
            "stage": "ingest",
            "copied": 3,
        },  # a stage's line: not a run
        {
            **ended,
            "run_id": "20261203-030000",
            "run": {"id": "20261203-030000", "outcome": "completed"},
            "version": "c3",
        },
        {**ended, "run_id": "20261202-030000", "run": {"id": "20261202-030000"}, "version": "c2"},  # gc'd
        {**ended, "run_id": "20261204-030000", "run": {"id": "20261204-030000", "no_new_data": True}},
        {**ended, "run_id": "20261205-030000", "run": {"id": "20261205-030000", "outcome": "failed"}},
        {"run_id": "20261206-030000", "run": {"id": "20261206-030000"}},  # not a line pawflow writes
    ]
    history.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    recorded = [
        runstore.Version("20261203-030000", "c3", "t3", {"id": "20261203-030000", "test_accuracy": 0.8})
    ]
    monkeypatch.setattr(runstore, "is_repo", lambda root: True)
    monkeypatch.setattr(runstore, "versions", lambda root: recorded)
    got = nightly.history(tmp_path, params)
    assert [f["id"] for f in got] == [
        "20261205-030000",
        "20261204-030000",
        "20261203-030000",
        "20261202-030000",
    ]
    assert got[3] == {"id": "20261202-030000", "version": "c2", "restorable": False}
    assert got[2] == {"id": "20261203-030000", "test_accuracy": 0.8, "version": "c3", "restorable": True}
    assert not got[0]["restorable"] and not got[1]["restorable"]
    assert nightly.history(tmp_path, None) == [got[2]]  # a clone without runs.jsonl: the versions


def test_collection_diff_says_what_moved_between_two_runs():
    a = {"id": "1", "photos": {"total": 10, "per_class": {"Cat": 5, "Dog": 5}}, "champion_sha256": "a" * 64}
    b = {
        "id": "2",
        "photos": {"total": 14, "per_class": {"Cat": 5, "Dog": 7, "Bird": 2}},
        "champion_sha256": "b" * 64,
        "gate": "rejected",
        "gate_reason": "worse",
        "stages": {"evaluate": "ran"},
    }
    text = nightly.collection_diff(a, b).splitlines()
    assert text == [
        "photos: 10 -> 14",
        "  Bird: 0 -> 2 (+2)",
        "  Dog: 5 -> 7 (+2)",
        f"champion: {'a' * 12} -> {'b' * 12}",
        "gate of 2: The champion was kept: worse.",
    ]


def test_a_failing_webhook_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture):
    params = type("P", (), {})()
    params.pipeline = shipped("pipeline", alert_url="http://127.0.0.1:9/hook", alert_timeout_s=2)
    facts = {"id": "1", "outcome": "failed", "error": "boom", "entry": "retrain-nightly"}
    with caplog.at_level(logging.WARNING):
        assert nightly.alert(params, facts, None, logging.getLogger("t")) == []
    assert "alert run_failed: the run failed: boom" in caplog.text
    assert "not delivered to pipeline.alert_url" in caplog.text
    with Receiver() as hook:
        params.pipeline = shipped("pipeline", alert_url=hook.url)
        (sent,) = nightly.alert(params, facts, None, logging.getLogger("t"))
        assert hook.received == [sent] and sent["event"] == "run_failed"


# --------------------------------------------------------------------------- five nights, served


def set_evaluate(ws: Path, **values: float) -> None:
    data = yaml.safe_load((ws / "params.yaml").read_text())
    data["evaluate"].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def history_json(ws: Path, api: str) -> list[dict]:
    out = sh(ws, PAWFLOW, "history", "--json", api=api)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def cache_object(ws: Path, commit: str, out_path: str) -> Path:
    """The DVC cache file of one output of a recorded run (from its dvc.lock)."""
    lock = yaml.safe_load(runstore.show(ws, commit, "dvc.lock"))
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == out_path:
                return Path(out["md5"][:2]) / out["md5"][2:]
    raise AssertionError(f"{out_path} not in {commit}'s dvc.lock")


@pytest.mark.slow
def test_five_nights_served_recorded_restored_alerted_and_collected(tmp_path: Path, prefect_server: str):
    from browser import dom_of
    from prefect.client.orchestration import get_client

    api = prefect_server
    with Receiver() as hook:
        pipeline = {**yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]}
        pipeline.update(alert_url=hook.url, keep_runs=1)
        ws, source = workspace(tmp_path, per_class=12, pipeline=pipeline)
        sh(ws, "git", "add", "-A", api=api)  # the remote's configuration is the user's, committed
        sh(ws, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "remote", api=api)
        log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (the server writes to it until stopped)
        serve = subprocess.Popen(
            [PAWFLOW, "serve"],
            cwd=ws,
            env=tool_env(api),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:

            def registered() -> bool:
                with get_client(sync_client=True) as c:
                    return {"retrain-nightly", "retrain-full"} <= {d.name for d in c.read_deployments()}

            wait_for(registered, 120, "pawflow serve to register its deployments")

            def night(deployment: str) -> subprocess.CompletedProcess:
                return sh(ws, PREFECT, "deployment", "run", f"pipeline/{deployment}", "--watch", api=api)

            # 1: the first night trains from scratch and promotes (a gate that takes any model).
            assert night("retrain-nightly").returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
            first = {p: (ws / p).read_bytes() for p in runstore.VERIFIED}
            # 2: the weekly full retrain, with new photos and a gate no model passes.
            for i in range(4):
                (source / ("Cat", "Dog")[i % 2] / f"night2.{i}.jpg").write_bytes(imagegen.jpeg(800_000 + i))
            set_evaluate(ws, min_accuracy=1.0, min_robust_accuracy=1.0)
            assert night("retrain-full").returncode == 0
            # 3: nothing new: quiet.
            assert night("retrain-nightly").returncode == 0
            # 4: the source is unreachable.
            source.rename(tmp_path / "away")
            assert night("retrain-nightly").returncode != 0
            (tmp_path / "away").rename(source)
            # 5: only damaged files arrive: nothing to train on, but clean's reports change (a version).
            for i in range(4):
                (source / ("Cat", "Dog")[i % 2] / f"night5.{i}.jpg").write_bytes(b"damaged " * (i + 1))
            assert night("retrain-nightly").returncode == 0
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
            log.close()

        # Every run in the history, newest first, with what happened.
        runs = history_json(ws, api)
        assert [r["entry"] for r in runs] == ["retrain-nightly"] * 3 + ["retrain-full", "retrain-nightly"]
        damaged, failed, quiet, second, first_run = runs
        assert first_run["promoted"] and first_run["new_photos"] == 24 and first_run["version"]
        assert first_run["trained"] == {"warm_start": False, "count": 0, "epochs": 1}
        assert second["new_photos"] == 4 and second["new_per_class"] == {"Cat": 2, "Dog": 2}
        assert second["gate"] == "rejected" and not second["trained"]["warm_start"]
        assert quiet["no_new_data"] and quiet["version"] is None
        assert failed["outcome"] == "failed" and "does not exist" in failed["error"]
        assert damaged["rejected_new_count"] == 4 and damaged["new_files"] == 4 and damaged["trained"] is None
        assert damaged["version"] and damaged["champion_sha256"] == first_run["champion_sha256"]
        for r in runs:
            assert {"id", "started", "new_photos", "test_accuracy", "gate", "model_sha256"} <= r.keys() or (
                r["outcome"] == "failed"
            )
        table = sh(ws, PAWFLOW, "history", api=api).stdout.splitlines()
        assert len(table) == 6 and "FAILED" in table[2] and "no new data" in table[3]
        detail = sh(ws, PAWFLOW, "history", second["id"], api=api).stdout
        assert "arrived: 4 (+2 Cat, +2 Dog)" in detail and "gate: The champion was kept:" in detail

        # Alerts: the kept champion, the unreachable source, the damaged batch; none for the quiet night.
        events = [(m["event"], m["run_id"]) for m in hook.received]
        assert events == [
            ("champion_kept", second["id"]),
            ("run_failed", failed["id"]),
            ("data_quality", damaged["id"]),
        ], hook.received
        assert all(m["text"] and m["link"] and m["reason"] for m in hook.received)

    # Following a run from the terminal: its epoch lines, and its outcome as the exit code.
    out = sh(ws, PAWFLOW, "logs", second["flow_run_id"], api=api)
    assert out.returncode == 0 and "| epoch 1/1: " in out.stdout, out.stdout[-2000:]
    out = sh(ws, PAWFLOW, "logs", failed["flow_run_id"], api=api)
    assert out.returncode == 1 and "does not exist" in out.stdout
    # The printed link opens the run's page.
    assert "<title>Flow Run: " in dom_of(second["flow_run_url"])

    # Retention (keep_runs 1): the last run and every champion kept; night 2's version and its data gone
    # (the run itself stays in the local history, no longer restorable).
    assert [v.id for v in runstore.versions(ws)] == [damaged["id"], first_run["id"]]
    assert [r["restorable"] for r in runs] == [True, False, False, False, True]
    # night 2's manifest is no other kept run's (its model is: the last run still holds it, not promoted)
    gone = cache_object(ws, second["version"], "data/interim/ingest.parquet")
    assert not (ws / ".dvc/cache/files/md5" / gone).exists()
    assert not (tmp_path / "remote/files/md5" / gone).exists()
    kept = cache_object(ws, first_run["version"], "models/model.keras")
    assert (ws / ".dvc/cache/files/md5" / kept).exists() and (tmp_path / "remote/files/md5" / kept).exists()

    # A kept run restores byte for byte after the collection, even from the remote alone.
    shutil.rmtree(ws / ".dvc/cache")
    out = sh(ws, PAWFLOW, "restore", first_run["id"], api=api)
    assert out.returncode == 0, out.stderr
    assert {p: (ws / p).read_bytes() for p in runstore.VERIFIED} == first
    assert {p: sha256_file(ws / p) for p in runstore.VERIFIED} == first_run["sha256"]
    assert "up to date" in dvc(ws, "status", "train", "evaluate", api=api).stdout
    # A change of the user's own is refused in one message, before anything is written.
    (ws / "dvc.yaml").write_text((ws / "dvc.yaml").read_text() + "\n# mine\n")
    out = sh(ws, PAWFLOW, "restore", damaged["id"], api=api)
    assert out.returncode == 2 and "dvc.yaml" in out.stderr and out.stderr.count("What to do") == 1
    assert {p: (ws / p).read_bytes() for p in runstore.VERIFIED} == first
    # The dropped run is gone.
    out = sh(ws, PAWFLOW, "restore", second["id"], api=api)
    assert out.returncode == 2 and "no recorded run" in out.stderr
    (ws / "dvc.yaml").write_text((ws / "dvc.yaml").read_text().removesuffix("\n# mine\n"))
    # ... and so is a restore while a run holds the workspace.
    from flows.lock import workspace_lock

    with workspace_lock(ws):
        out = sh(ws, PAWFLOW, "restore", damaged["id"], api=api)
    assert out.returncode == 2 and "another pawflow run is using this workspace" in out.stderr

    # Two runs compared: the params that changed between them, and their metrics.
    out = sh(ws, PAWFLOW, "diff", first_run["id"], damaged["id"], api=api)
    assert out.returncode == 0 and "evaluate.min_accuracy" in out.stdout and "photos: 24 -> 32" in out.stdout
    page = tmp_path / "history.html"
    assert sh(ws, PAWFLOW, "history", "--html", str(page), api=api).returncode == 0
    assert "<svg" in page.read_text() and page.read_text().count("<tr>") == 6

    # A clone that fetches the refs sees the same runs and restores them from the remote.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    subprocess.run(["git", "fetch", "-q", "origin", runstore.REFSPEC], cwd=clone, check=True)
    assert [r["id"] for r in history_json(clone, api)] == [damaged["id"], first_run["id"]]
    out = sh(clone, PAWFLOW, "restore", first_run["id"], api=api)
    assert out.returncode == 0 and "pulled from the default remote" in out.stdout, out.stderr
    assert {p: (clone / p).read_bytes() for p in runstore.VERIFIED} == first


def test_the_local_history_is_cut_to_the_kept_runs(tmp_path: Path):
    path = tmp_path / "runs.jsonl"
    lines = []
    for day in range(1, 7):
        rid = f"2026120{day}-030000"
        lines += [
            {"stage": "ingest", "finished": rid},
            {"finished": rid, "entry": "prefect", "run": {"id": rid}},
        ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert nightly.prune_history(path, 10, set()) == 0 and len(path.read_text().splitlines()) == 12
    removed = nightly.prune_history(path, 2, {"20261202-030000"})  # run 2: a kept champion's version
    left = [json.loads(x) for x in path.read_text().splitlines()]
    assert removed == 7
    assert [x["run"]["id"] if "run" in x else x["stage"] for x in left] == [
        "20261202-030000",
        "ingest",
        "20261205-030000",
        "ingest",
        "20261206-030000",
    ]
