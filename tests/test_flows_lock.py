"""flows/lock.py: the run lock (pawflow's workspace lock with DVC's repo lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from flows.lock import LOCK_FILE, lock_holder, run_lock, workspace_lock
from tasks.core.errors import PawflowError
from tasks.history import versioning

DVC_YAML = "stages:\n  a:\n    cmd: echo a > a.txt\n    outs:\n      - a.txt\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=ws, env=env, check=True)
    (ws / "dvc.yaml").write_text(DVC_YAML)
    return ws


def in_another_process(ws: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # ~4 s: keeps make test-fast under 3 min
def test_a_run_holds_dvcs_lock_so_dvc_and_a_second_run_are_refused(repo: Path, monkeypatch):
    monkeypatch.chdir(repo)  # DVC reads stage names relative to the current folder, like the pipeline
    with run_lock(repo):
        assert versioning.stage_status(repo, "a")  # DVC calls of this run go through the held lock
        assert "pid" in (lock_holder(repo) or "")
        dvc = in_another_process(repo, "from dvc.cli import main; raise SystemExit(main(['repro']))")
        assert dvc.returncode != 0 and "Unable to acquire lock" in dvc.stderr
        second = in_another_process(
            repo,
            "from pathlib import Path; from flows.lock import run_lock\nwith run_lock(Path('.')): pass",
        )
        assert second.returncode != 0 and "another pawflow run is using this workspace" in second.stderr
    assert not (repo / "a.txt").exists()  # the refused dvc repro ran nothing
    with run_lock(repo):  # released
        pass


def test_a_stage_that_dvc_repro_is_running_refuses_a_run(repo: Path):
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(exist_ok=True)
    rwlock.write_text(json.dumps({"write": {"a.txt": {"pid": os.getpid(), "cmd": "dvc repro a"}}}))
    busy = r"is running a stage in this workspace \(pid \d+: dvc repro a\)"
    with pytest.raises(PawflowError, match=busy), run_lock(repo):
        pass
    assert lock_holder(repo) is None  # refused before it took the workspace lock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    rwlock.write_text(json.dumps({"write": {"a.txt": {"pid": int(dead.stdout), "cmd": "dvc repro a"}}}))
    with run_lock(repo):  # a killed dvc's entry does not block
        pass


def test_a_stage_command_started_by_dvc_takes_only_the_workspace_lock(
    repo: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.setenv("DVC_STAGE", "a")
    with run_lock(repo):
        with versioning.dvc_lock(repo):  # DVC's lock is its parent's to take back: left free
            pass
        with pytest.raises(PawflowError, match="another pawflow run"), workspace_lock(repo):
            pass


def test_a_killed_runs_lock_file_does_not_block_the_next(repo: Path):
    (repo / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    (repo / LOCK_FILE).write_text("pid 999999: python -m flows.pipeline")  # left by kill -9
    assert lock_holder(repo) is None
    with run_lock(repo):
        assert lock_holder(repo).startswith(f"pid {os.getpid()}")
