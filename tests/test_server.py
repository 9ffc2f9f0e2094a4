"""The background Prefect server that stage processes share: when it counts as idle, and that it stops."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from commands import wait_while_running

from flows import server
from flows.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".pawflow").mkdir()
    return tmp_path / ".pawflow" / "prefect"


def test_a_running_stage_keeps_the_server_busy(project: Path):
    project.mkdir()
    assert server._idle(project, idle_s=0)  # nothing ran, nothing runs
    LOCK_FILE.write_text(f"pid {os.getpid()}: python -m flows.train")
    assert not server._idle(project, idle_s=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    LOCK_FILE.write_text(f"pid {int(dead.stdout)}: python -m flows.train")  # killed run
    assert server._idle(project, idle_s=0)
    LOCK_FILE.write_text("")  # released
    (project / "last-used").touch()
    assert not server._idle(project, idle_s=60)
    old = time.time() - 120
    os.utime(project / "last-used", (old, old))
    assert server._idle(project, idle_s=60)


def valid_params() -> str:
    """A params.yaml in the current folder that the light preflight passes; returns its text."""
    for label in ("Cat", "Dog"):
        (Path("photos") / label).mkdir(parents=True)
        for i in range(5):  # the check wants two class folders, each with enough files for every split
            (Path("photos") / label / f"{i}.jpg").write_bytes(b"x")
    params = (
        (ROOT / "params.yaml")
        .read_text()
        .replace("source: ../shared/datasets/petimages-sample", "source: photos")
    )
    Path("params.yaml").write_text(params)
    Path("data").mkdir()
    Path("data/exclude.txt").write_text("")
    return params


def test_a_stage_process_without_an_api_uses_it(project: Path, monkeypatch: pytest.MonkeyPatch):
    started = []
    monkeypatch.setattr(server, "ensure_background", lambda: started.append(1) or "http://x/api")
    refreshed = []
    monkeypatch.setattr("prefect.context.refresh_global_settings_context", lambda: refreshed.append(1))
    params = valid_params()
    cases = [
        ({"PREFECT_API_URL": "http://mine/api"}, False),
        ({"PAWFLOW_BACKGROUND_SERVER": "0"}, False),
        ({}, True),
    ]
    for env, uses in cases:
        for key in ("PREFECT_API_URL", "PAWFLOW_BACKGROUND_SERVER"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        started.clear()
        refreshed.clear()
        server.use_background_server()
        assert bool(started) == uses == bool(refreshed), env  # Prefect's settings read the new URL
        assert (os.environ.get("PREFECT_API_URL") == "http://x/api") == uses
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # Bad params: the stage says so in one message, before any server starts.
    Path("params.yaml").write_text(params.replace("source: photos", "source: missing"))
    started.clear()
    server.use_background_server()
    assert not started and "PREFECT_API_URL" not in os.environ


def test_importing_flows_starts_nothing(project: Path, monkeypatch: pytest.MonkeyPatch):
    # As `python -m flows.shard` imports it: only the entry point's explicit call starts a server.
    started = []
    monkeypatch.setattr(server, "ensure_background", lambda: started.append(1) or "http://x/api")
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "flows.shard"])
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    valid_params()  # a stage would start one here
    import flows

    importlib.reload(flows)
    assert not started and "PREFECT_API_URL" not in os.environ


@pytest.mark.slow
def test_a_stage_process_without_an_api_runs_in_the_background_server(tmp_path: Path):
    # The stage imports Prefect before its entry point points it at the server: the flow run, its log
    # lines and its events must all reach that server (not a temporary one of Prefect's own).
    from commands import wait_for
    from conftest import tool_env
    from workspace import workspace

    ws, _ = workspace(tmp_path, per_class=6)
    env = tool_env()
    env.pop("PREFECT_API_URL")  # the session's server: a stage run by hand or by dvc repro has none

    def py(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=ws, env=env, capture_output=True, text=True)

    out = py("-m", "flows.ingest")
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        assert "starting a background Prefect server" in out.stdout
        url = json.loads((ws / ".pawflow/prefect/background.json").read_text())["url"]

        def api(path: str, body: dict) -> list[dict]:
            return requests.post(f"{url}{path}", json=body, timeout=10).json()

        runs = api("/flow_runs/filter", {"flow_runs": {"name": {"like_": "ingest-"}}})
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        run_id = runs[0]["id"]
        logs = api("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        assert any("Finished in state Completed" in line["message"] for line in logs), logs
        resource = {"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}
        events = wait_for(lambda: api("/events/filter", resource).get("events"), 30, "the run's events")
        assert "prefect.flow-run.Completed" in {e["event"] for e in events}
    finally:
        stopped = py("-m", "flows.server", "stop")
        assert stopped.stdout.strip() == "stopped", stopped.stderr


@pytest.mark.slow
def test_the_background_server_stops_by_itself_when_idle(project: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.server", "serve", "--home", str(project), "--idle", "1"], env=env
    )
    try:
        wait_while_running(
            proc, (project / "background.json").exists, server.HEALTH_TIMEOUT_S, "background.json"
        )
        state = json.loads((project / "background.json").read_text())
        assert state["pid"] == proc.pid
        assert proc.wait(timeout=60) == 0  # idle: it stopped its server and exited
        assert not (project / "background.json").exists()
        assert not server.healthy(state["url"])
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_server_dies_with_the_run_that_started_it_even_on_kill_9(tmp_path: Path):
    # `pawflow run` starts a server for its stages; killed -9 (or crashed), it cannot stop it itself.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from flows.server import start_server\n"
        "proc, url = start_server(Path(sys.argv[1]))\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "home")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFECT_API_URL": ""},
    )
    server_pid = int(run.stdout.readline())
    run.kill()  # SIGKILL: no atexit, no finally
    run.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(server_pid, 9)
        pytest.fail("the Prefect server outlived the process that started it")


def test_the_view_at_link_opens_the_runs_page_in_the_ui(prefect_server: str):
    # The session's server is started by flows.server.start_server, as the background server is.
    import re

    from browser import dom_of
    from prefect import flow

    from flows.pipeline import run_url

    @flow(name="ui-link-check")
    def tiny() -> int:
        return 1

    state = tiny(return_state=True)
    run_id = state.state_details.flow_run_id
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        name = client.read_flow_run(run_id).name
    url = run_url(str(run_id))
    assert url == f"{prefect_server.removesuffix('/api')}/runs/flow-run/{run_id}"
    dom = dom_of(url)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title and f"Flow Run: {name}" in title.group(1), (title, dom[:2000])
    assert "404" not in title.group(1)
