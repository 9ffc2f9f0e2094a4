"""flows/service.py: the runs a dead `pawflow serve` left Running are closed when it starts again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from commands import wait_for
from conftest import ROOT, make_workspace
from httpserver import Receiver

from flows import service
from flows.lock import workspace_lock


def test_another_serve_of_the_workspace_is_found_by_its_folder(tmp_path: Path):
    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    ws.mkdir()
    elsewhere.mkdir()
    # what a console script's process looks like: python .../pawflow serve
    fake = tmp_path / "bin" / "pawflow"
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(60)\n")
    assert service.other_serve(ws) is None
    proc = subprocess.Popen([sys.executable, str(fake), "serve"], cwd=elsewhere)
    try:
        wait_for(lambda: "serve" in psutil.Process(proc.pid).cmdline(), 10, "the process to start")
        assert service.other_serve(ws) is None  # serving another folder
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.Popen([sys.executable, str(fake), "serve"], cwd=ws)
    try:
        wait_for(lambda: "serve" in psutil.Process(proc.pid).cmdline(), 10, "the process to start")
        assert service.other_serve(ws) == f"pid {proc.pid}: {sys.executable} {fake} serve"
        assert service.why_not_now(ws) and "another `pawflow serve`" in (service.why_not_now(ws) or "")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_night_left_running_by_a_dead_serve_is_crashed_its_slots_freed_recorded_and_alerted(
    tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
):
    """A restart killed `pawflow serve` mid-night: the run stays Running and holds its deployment's slot
    and the workspace's, so the next night waits for ever (AwaitingConcurrencySlot). The next `pawflow
    serve` marks it crashed (and its running stage), frees the slots, records it and alerts."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Pending, Running

    from flows.cli import deployments
    from flows.pipeline import CONCURRENCY_LIMIT

    @task
    def stage_task() -> None: ...

    @flow
    def stage() -> None: ...

    with Receiver() as hook:
        pipeline = {**yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"], "alert_url": hook.url}
        ws = make_workspace(tmp_path / "ws", tmp_path / "source", pipeline=pipeline)
        monkeypatch.chdir(ws)  # where `pawflow serve` runs, and the run history's folder
        for d in deployments(ws / "params.yaml"):
            d.apply()
        with get_client(sync_client=True) as c:
            nightly = c.read_deployment_by_name("pipeline/retrain-nightly")
            c.upsert_global_concurrency_limit_by_name(CONCURRENCY_LIMIT, limit=1)
            left = c.create_flow_run_from_deployment(nightly.id)
            assert c.set_flow_run_state(left.id, Pending()).state.is_pending()  # takes the deployment's slot
            c.set_flow_run_state(left.id, Running())
            step = c.create_task_run(stage_task, flow_run_id=left.id, dynamic_key="train")
            sub = c.create_flow_run(stage, parent_task_run_id=step.id, state=Running())
            # the workspace's slot, taken by the run's process with a lease that nobody renews any more
            c.increment_concurrency_slots_with_lease([CONCURRENCY_LIMIT], 1, "concurrency", 300)
            queued = c.create_flow_run_from_deployment(nightly.id)
            waiting = c.set_flow_run_state(queued.id, Pending()).state
            assert waiting is not None and waiting.name == "AwaitingConcurrencySlot", waiting

            with workspace_lock(ws):  # a run holds the workspace: it may be the left one, nothing touched
                assert service.close_left_runs(c, ws, CONCURRENCY_LIMIT) == []
            assert c.read_flow_run(left.id).state.is_running()

            (closed,) = service.close_left_runs(c, ws, CONCURRENCY_LIMIT)
            assert c.read_flow_run(left.id).state.is_crashed()
            assert c.read_flow_run(sub.id).state.is_crashed()
            assert c.read_global_concurrency_limit_by_name(CONCURRENCY_LIMIT).active_slots == 0
            assert c.set_flow_run_state(queued.id, Pending()).state.is_pending()  # the next night goes on
            c.set_flow_run_state(queued.id, Cancelled())  # gives its slot back for the tests after this one
            assert service.close_left_runs(c, ws, CONCURRENCY_LIMIT) == []  # once

    assert closed["outcome"] == "failed" and closed["entry"] == "retrain-nightly"
    assert closed["flow_run_id"] == str(left.id) and "serving process ended" in closed["error"]
    (line,) = [json.loads(x) for x in (ws / "reports/runs.jsonl").read_text().splitlines()]
    assert line["run"] == closed
    (sent,) = hook.received
    assert sent["event"] == "run_failed" and sent["run_id"] == closed["id"]
    assert str(left.id) in sent["link"]
