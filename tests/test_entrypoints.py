"""The three entry points leave one state: dvc repro, the Prefect pipeline, and its deployments.

Every test works in a fresh workspace (a copy of the project) on generated photos, with a 1-epoch
32-pixel model, against the session's Prefect server.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagegen
import pytest
import yaml
from commands import dvc, py, ran, sh, start_holding_the_workspace, wait_for
from conftest import make_workspace, tool_env
from PIL import Image, ImageEnhance
from workspace import FAST, assert_up_to_date, history, workspace

pytestmark = pytest.mark.slow


def test_prefect_run_leaves_what_dvc_repro_leaves(tmp_path: Path, prefect_server: str):
    ws, _ = workspace(tmp_path)
    first = py(ws, "-m", "flows.pipeline", api=prefect_server)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Concurrency limits" not in first.stderr  # no global limit taken outside a deployment
    closing = first.stdout.strip().splitlines()[-3:]
    assert closing[0].startswith("test accuracy ") and "gate: promoted" in closing[0]
    assert closing[1] == f"report: {ws / 'reports/evaluation.html'}"
    assert closing[2].startswith("try it: pawflow predict ")
    assert_up_to_date(ws, prefect_server)
    run = history(ws)[-1]
    assert run["entry"] == "prefect" and all(v.startswith("ran") for v in run["stages"].values())
    assert run["dvc_lock"]["train"]["models/model.keras"] and run["metrics"]["accuracy"] is not None
    assert run["pushed"] and (tmp_path / "remote").exists()

    again = py(ws, "-m", "flows.pipeline", api=prefect_server)
    assert again.returncode == 0
    run2 = history(ws)[-1]
    assert all(v.startswith("skipped") for v in run2["stages"].values()) and run2["no_new_data"]
    assert "Skipped('up to date in dvc.lock'" in again.stderr
    assert run2["seconds"] < run["seconds"] / 2
    # In the Prefect UI: runs named after the entry point and date, stages after themselves, and a stage
    # left as it was named so (its state is Completed "Skipped": Prefect has no skipped state type).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    with get_client(sync_client=True) as c:
        pipelines = [r for r in c.read_flow_runs() if r.name.startswith("local-")]
        last = max(pipelines, key=lambda r: r.start_time)
        tasks = {
            t.name: t.state_name
            for t in c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [last.id]}))
        }
        first_run = min(pipelines, key=lambda r: r.start_time)
        stage_runs = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False))
        )
    assert len(pipelines) >= 2 and re.fullmatch(r"local-\d{4}-\d\d-\d\d-\d{4}", last.name)
    assert tasks["ingest (skipped: up to date in dvc.lock)"] == "Skipped"
    assert tasks["train (skipped: up to date in dvc.lock)"] == "Skipped"
    assert {"ingest", "clean", "train", "evaluate"} <= {r.name for r in stage_runs}, first_run.name

    # A fresh clone gets exactly this data, these shards and this model from the remote.
    sh(ws, "git", "add", "-A", api=prefect_server)
    sh(ws, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run", api=prefect_server)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    pulled = dvc(clone, "pull", api=prefect_server)
    assert pulled.returncode == 0, pulled.stderr
    for rel in (
        "models/model.keras",
        "models/champion/model.keras",
        "data/interim/dedup.parquet",
        "data/processed/dataset_info.json",
        "data/raw/Cat/cat.3.jpg",
    ):
        assert (clone / rel).read_bytes() == (ws / rel).read_bytes(), rel
    shards = sorted((ws / "data/processed").glob("*.tfrecord-*"))
    assert shards and all((clone / "data/processed" / s.name).read_bytes() == s.read_bytes() for s in shards)


def test_dvc_repro_first_then_prefect_does_nothing_new(tmp_path: Path, prefect_server: str):
    ws, source = workspace(tmp_path)
    repro = dvc(ws, "repro", api=prefect_server)
    assert repro.returncode == 0, repro.stderr[-3000:]
    lock = (ws / "dvc.lock").read_text()
    run = py(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server)
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(v.startswith("skipped") for v in history(ws)[-1]["stages"].values())
    assert (ws / "dvc.lock").read_text() == lock

    # A second fresh workspace on the same photos, while another process keeps a core busy, records
    # the same dvc.lock byte for byte: every output, the model included, has the same md5.
    other = make_workspace(tmp_path / "ws2", source, **FAST)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        again = dvc(other, "repro", api=prefect_server)
    finally:
        busy.kill()
        busy.wait()
    assert again.returncode == 0, again.stderr[-3000:]
    assert (other / "dvc.lock").read_text() == lock


def test_make_run_entry_point_records_and_pushes(tmp_path: Path, prefect_server: str):
    ws, _ = workspace(tmp_path)
    out = sh(ws, str(Path(sys.executable).parent / "pawflow"), "run", api=prefect_server)
    assert out.returncode == 0, out.stderr[-3000:]
    run = history(ws)[-1]
    assert run["entry"] == "dvc repro" and run["stages"]["train"] == "ran" and run["pushed"]
    closing = out.stdout.strip().splitlines()[-3:]  # accuracy and gate, the report, the command to try
    assert closing[0].startswith("test accuracy ") and "; gate: " in closing[0], out.stdout[-2000:]
    assert closing[1] == f"report: {ws / 'reports/evaluation.html'}"
    assert closing[2].startswith("try it: pawflow predict ")
    assert_up_to_date(ws, prefect_server)
    # Every stage process (train and evaluate import TensorFlow) starts without TensorFlow's start-up lines.
    for line in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert line not in out.stderr, out.stderr[-3000:]
    # The run is a version (refs/pawflow/runs/<id>), with its facts; the user's HEAD and index untouched.
    from tasks.history import runstore

    (version,) = runstore.versions(ws)
    assert run["version"] == version.commit and version.id == run["run_id"]
    assert version.facts["entry"] == "pawflow run" and version.facts["trained"]["warm_start"] is False
    assert sh(ws, "git", "rev-list", "--count", "HEAD", api=prefect_server).stdout.strip() == "1"
    assert f"recorded as run {version.id}" in out.stdout
    again = sh(ws, str(Path(sys.executable).parent / "pawflow"), "run", api=prefect_server)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert all(v.startswith("skipped") for v in history(ws)[-1]["stages"].values())
    assert len(runstore.versions(ws)) == 1 and history(ws)[-1]["version"] is None  # nothing changed

    # --epochs is written into params.yaml (dvc.lock agrees), and --warm-start fine-tunes the champion
    # when train has to run (epochs shape no model): the pipeline's choice of models/base.
    warm = sh(
        ws,
        str(Path(sys.executable).parent / "pawflow"),
        "run",
        "--epochs",
        "2",
        "--warm-start",
        api=prefect_server,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "params.yaml: train.epochs 1 -> 2" in warm.stdout and "models/base: the champion" in warm.stdout
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["epochs"] == 2
    assert json.loads((ws / "reports/train.json").read_text())["warm_start"]["count"] == 1
    run = history(ws)[-1]
    assert {s for s, v in run["stages"].items() if v == "ran"} == {"base", "train", "evaluate"}
    assert_up_to_date(ws, prefect_server)


def test_nightly_retraining_picks_up_new_photos_only(tmp_path: Path, prefect_server: str):
    ws, source = workspace(tmp_path)
    assert py(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server).returncode == 0
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    before = sum(s["examples"] for s in info["splits"].values())
    model_before = (ws / "models/model.keras").read_bytes()

    for i in range(30):
        cls = "Cat" if i % 2 else "Dog"
        (source / cls / f"new.{i}.jpg").write_bytes(imagegen.jpeg(700_000 + i))
    second = py(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server)
    assert second.returncode == 0, second.stderr[-3000:]
    run = history(ws)[-1]
    assert all(run["stages"][s].startswith("ran") for s in ("ingest", "clean", "shard", "train", "evaluate"))
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(s["examples"] for s in info["splits"].values()) == before + 30
    assert (ws / "models/model.keras").read_bytes() != model_before
    gate = json.loads((ws / "reports/gate.json").read_text())
    assert gate["decision"] in ("promoted", "rejected") and gate["p_value"] is not None  # compared

    third = py(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server)
    assert third.returncode == 0
    assert history(ws)[-1]["no_new_data"] and "no new data" in third.stderr


def test_dvc_exp_run_and_show(tmp_path: Path, prefect_server: str):
    ws, _ = workspace(tmp_path)
    assert dvc(ws, "repro", api=prefect_server).returncode == 0
    sh(ws, "git", "add", "-A", api=prefect_server)
    sh(
        ws,
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "baseline",
        api=prefect_server,
    )
    exp = dvc(ws, "exp", "run", "-S", "train.epochs=2", api=prefect_server)
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert "Running stage 'train'" in exp.stdout and "Running stage 'ingest'" not in exp.stdout
    show = dvc(ws, "exp", "show", "--csv", api=prefect_server)
    assert show.returncode == 0
    rows = list(csv.DictReader(io.StringIO(show.stdout)))
    assert {r["train.epochs"] for r in rows} >= {"1", "2"}
    assert all(r["accuracy"] for r in rows)


def test_two_runs_at_once_never_interleave(tmp_path: Path, prefect_server: str):
    ws, _ = workspace(tmp_path)
    first = start_holding_the_workspace(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server)
    second = py(ws, "-m", "flows.pipeline", "--no-push", api=prefect_server)
    stage = py(ws, "-m", "flows.clean", api=prefect_server)
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-3000:]
    for refused in (second, stage):
        assert refused.returncode != 0
        assert "another pawflow run is using this workspace" in refused.stderr
    assert_up_to_date(ws, prefect_server)


def cancel_a_run_mid_training(ws: Path, serve: subprocess.Popen, api: str) -> None:
    """Cancel in the UI (`prefect flow-run cancel ID`) while a deployment's run trains: the run ends
    Cancelled within seconds, its process gone, the workspace free, the finished stages' outputs and
    records as they were, nothing half-written."""
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.lock import lock_holder
    from tasks.history import versioning

    kept = ["models/model.keras", *(str(p.relative_to(ws)) for p in (ws / "data").rglob("*.*"))]
    before = {rel: (ws / rel).read_bytes() for rel in kept if (ws / rel).is_file()}
    recorded = versioning.lock_stages(ws)  # what dvc.lock says of each stage's outputs
    run = run_deployment("pipeline/manual", parameters={"epochs": 1000}, timeout=0)
    epoch_log = ws / ".pawflow/cache/train/dvclive/plots/metrics/train/loss.tsv"
    wait_for(lambda: epoch_log.exists() and len(epoch_log.read_text().split()) > 4, 300, "training")
    engine = psutil.Process(serve.pid).children(recursive=True)
    assert engine and lock_holder(ws)  # the run's process holds the workspace
    cancelled = time.monotonic()
    out = sh(ws, str(Path(sys.executable).parent / "prefect"), "flow-run", "cancel", str(run.id), api=api)
    assert out.returncode == 0, out.stdout + out.stderr

    def final():
        with get_client(sync_client=True) as c:
            state = c.read_flow_run(run.id).state
        return state if state.is_final() else None

    state = wait_for(final, 120, "the cancelled run to end")
    took = time.monotonic() - cancelled
    assert state.is_cancelled(), state
    assert took < 30, took
    psutil.wait_procs(engine, timeout=30)
    assert not psutil.Process(serve.pid).children(recursive=True)  # no process of the run left
    assert lock_holder(ws) is None
    assert {rel: (ws / rel).read_bytes() for rel in before} == before
    now = versioning.lock_stages(ws)
    assert all(now[s]["outs"] == recorded[s]["outs"] for s in versioning.STAGES)  # train not recorded
    assert not [p for p in ws.rglob("*") if ".tmp-" in p.name and ".pawflow" not in p.parts]


def test_deployments_served_and_run_from_the_cli(tmp_path: Path, prefect_server: str):
    from prefect.client.orchestration import get_client

    ws, _ = workspace(tmp_path, train={**FAST["train"], "epochs": 3})
    env = tool_env(prefect_server)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (the server writes to it until stopped)
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "pawflow"), "serve"],
        cwd=ws,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def deployments() -> bool:
            with get_client(sync_client=True) as c:
                names = {d.name for d in c.read_deployments()}
            return {"manual", "retrain-nightly"} <= names

        wait_for(deployments, 120, "pawflow serve to register its deployments", every=1)
        prefect = str(Path(sys.executable).parent / "prefect")
        started = time.monotonic()
        first = sh(
            ws,
            prefect,
            "deployment",
            "run",
            "pipeline/manual",
            "--watch",
            "--param",
            "epochs=1",
            api=prefect_server,
        )
        first_s = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
        assert "Completed" in first.stdout
        with get_client(sync_client=True) as c:
            manual = c.read_deployment_by_name("pipeline/manual")
            runs = c.read_flow_runs()
        assert manual.parameters["epochs"] is None and "warm_start" in manual.parameters  # not {}
        assert any(re.fullmatch(r"manual-\d{4}-\d\d-\d\d-\d{4}", r.name) for r in runs)
        assert "epochs: 1" in (ws / "params.yaml").read_text()  # the override is recorded for DVC
        assert (ws / "reports/evaluation.html").exists()
        assert_up_to_date(ws, prefect_server)

        started = time.monotonic()
        second = sh(ws, prefect, "deployment", "run", "pipeline/manual", "--watch", api=prefect_server)
        second_s = time.monotonic() - started
        assert second.returncode == 0
        assert all(v.startswith("skipped") for v in history(ws)[-1]["stages"].values())
        assert second_s < first_s

        cancel_a_run_mid_training(ws, serve, prefect_server)

        failing = sh(  # also shows the cancelled run gave its place back (the workspace's concurrency slot)
            ws,
            prefect,
            "deployment",
            "run",
            "pipeline/manual",
            "--watch",
            "--param",
            f"source={tmp_path / 'missing'}",
            api=prefect_server,
        )
        assert failing.returncode != 0
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
        log.close()
    with get_client(sync_client=True) as c:
        nightly = c.read_deployment_by_name("pipeline/retrain-nightly")
    assert not nightly.paused
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
    assert all(s.active for s in nightly.schedules)


def test_dvc_repro_data_stages(tmp_path: Path, prefect_server: str):
    source = imagegen.make_dataset(tmp_path / "source", per_class=20)
    (source / "Cat" / "Thumbs.db").write_bytes(imagegen.OLE2_MAGIC + bytes(512))
    # A near duplicate at perceptual distance 2 of dog.2 (lower contrast, recompressed).
    near = ImageEnhance.Contrast(Image.open(source / "Dog" / "dog.2.jpg")).enhance(0.9)
    (source / "Dog" / "dog.2 edited.jpg").write_bytes(imagegen.encode(near, "JPEG", quality=60))
    ws = make_workspace(tmp_path / "ws", source)

    first = dvc(ws, "repro", "shard", api=prefect_server)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran(first.stdout) == ["check", "ingest", "clean", "audit", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 40
    assert json.loads((ws / "reports/dedup.json").read_text())["near_duplicates"] == 1
    clean = json.loads((ws / "reports/clean.json").read_text())
    assert clean["per_reason"] == {"not_an_image": 1}

    again = dvc(ws, "repro", "shard", api=prefect_server)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout
    # The data stages are up to date; train and evaluate were never asked for.
    status = dvc(ws, "status", "shard", api=prefect_server)
    assert "up to date" in status.stdout, status.stdout

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dedup"]["max_distance"] = 0  # the edited copy is no longer a duplicate
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(ws, "repro", "shard", api=prefect_server)
    assert changed.returncode == 0, changed.stderr
    assert ran(changed.stdout) == ["check", "dedup", "shard"]  # check: params.yaml changed
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 41

    # The quality flags' limits: clean re-judges from its cache, data.html is redrawn, the shards stay.
    assert clean["per_flag"]["blurry"] > 0  # imagegen's smooth blobs: many read as soft
    params["clean"]["flags"]["blurry_sharpness"] = 0  # off
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    page = (ws / "reports/data.html").read_bytes()
    flags = dvc(ws, "repro", "shard", api=prefect_server)
    assert flags.returncode == 0, flags.stderr
    assert ran(flags.stdout) == ["check", "clean", "dedup"], flags.stdout
    assert json.loads((ws / "reports/clean.json").read_text())["per_flag"]["blurry"] == 0
    assert (ws / "reports/data.html").read_bytes() != page

    for i in range(3):
        (source / "Dog" / f"new.{i}.jpg").write_bytes(imagegen.jpeg(50_000 + i))
    grown = dvc(ws, "repro", "shard", api=prefect_server)
    assert ran(grown.stdout) == ["ingest", "clean", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 44
    # What a run copied is run history, not a tracked output (reports/ingest.json lists what raw holds).
    runs = [json.loads(line) for line in (ws / "reports/runs.jsonl").read_text().splitlines()]
    assert [r for r in runs if r.get("stage") == "ingest"][-1]["copied"] == 3
    assert "copied" not in json.loads((ws / "reports/ingest.json").read_text())


def test_a_source_of_non_images_is_refused_with_the_files_named_and_the_last_reports_kept(
    tmp_path: Path, prefect_server: str
):
    """`pawflow run` (make run) after a good run, on a source of 7 files that are not photos (the old
    photos' removal accepted: the collection follows the source): exit 1, a
    short transcript whose message names the files and the page that shows them, and the last good
    clean report, verdicts and data report still in place."""
    ws, _ = workspace(tmp_path, per_class=5)
    good = dvc(ws, "repro", "dedup", api=prefect_server)
    assert good.returncode == 0, good.stderr[-3000:]
    kept = {rel: (ws / rel).read_bytes() for rel in ("reports/clean.json", "data/interim/clean.parquet")}
    kept["reports/data.html"] = (ws / "reports/data.html").read_bytes()

    junk = tmp_path / "junk"
    for label, name, data in (
        ("Cat", "Thumbs.db", b"\xd0\xcf\x11\xe0" + bytes(600)),
        ("Cat", "notes.txt", b"cats\n"),
        ("Cat", "empty.jpg", b""),
        ("Cat", "page.jpg", b"<html><body>404</body></html>"),
        ("Dog", "readme.md", b"readme.md\n"),
        ("Dog", "Thumbs.db", b"\xd0\xcf\x11\xe0" + bytes(700)),
        ("Dog", "data.csv", b"a,b\n1,2\n"),
    ):
        (junk / label).mkdir(parents=True, exist_ok=True)
        (junk / label / name).write_bytes(data)
    out = sh(
        ws,
        str(Path(sys.executable).parent / "pawflow"),
        "run",
        "--no-push",
        "--accept-removals",  # the collection follows the source: the 10 photos leave, as asked
        "--source",
        str(junk),
        api=prefect_server,
    )
    transcript = out.stdout + out.stderr
    assert out.returncode == 1, transcript[-3000:]
    page = ws / "reports/rejected.html"
    assert transcript.count("Every rejected file is shown in reports/rejected.html.") == 1, transcript
    assert transcript.count("all 7 files were rejected") == 1, transcript  # not Prefect's copy too
    assert "  Cat/Thumbs.db: not_an_image" in transcript and "... and 2 more" in transcript
    assert transcript.count("What to do") == 1 and "Traceback" not in transcript
    # From the clean stage's start: its progress line, the message (13 lines) and DVC's and pawflow's one line
    # each (ingest, which passed, logs its summary table before it).
    assert len(out.stderr.split("for flow 'clean'", 1)[1].strip().splitlines()) <= 16, out.stderr
    for rel, data in kept.items():
        assert (ws / rel).read_bytes() == data, rel  # the last good run's reports and verdicts
    html = page.read_text()
    assert all(f"{label}/{name}" in html for label, name in (("Cat", "notes.txt"), ("Dog", "data.csv")))
