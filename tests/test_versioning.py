"""tasks.history.versioning against the DVC it drives: the two private details of DVC it relies on, pinned.

DVC has no public API for either: refreshing a Repo whose lock this process holds (`Repo._reset`), and
telling which process runs a stage under `dvc repro` (the `.dvc/tmp/rwlock` file). An upgrade that
changes one fails here, with DVC's version in the message, rather than as a run that acts on a stale
dvc.yaml or starts beside a stage that `dvc repro` is running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dvc
import pytest

from tasks.core.errors import PawflowError
from tasks.history import versioning

# The DVC whose internals tasks/history/versioning.py was written against (requirements.lock's).
DVC_CHECKED = "3.67.1"
UPGRADE = f"DVC {dvc.__version__} (tasks/history/versioning.py was checked against DVC {DVC_CHECKED})"
STAGE_A = "stages:\n  a:\n    cmd: echo a > a.txt\n    outs:\n      - a.txt\n"
STAGE_B = "  b:\n    cmd: echo b > b.txt\n    outs:\n      - b.txt\n"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=ws, env=env, check=True)
    (ws / "dvc.yaml").write_text(STAGE_A)
    monkeypatch.chdir(ws)  # DVC reads stage names relative to the current folder, like the pipeline
    return ws


def test_each_call_through_a_held_lock_sees_the_workspace_afresh(repo: Path):
    """DVC caches its graph of stages in the Repo (`Repo.index`) and drops it with `Repo._reset()` each
    time it takes its lock; a run holds that lock throughout, so versioning._repo drops it at each call."""
    with versioning.dvc_lock(repo):
        with versioning._repo(repo) as held:
            assert [s.name for s in held.index.stages] == ["a"]
        (repo / "dvc.yaml").write_text(STAGE_A + STAGE_B)  # a run writes params.yaml and dvc.lock too
        try:
            with versioning._repo(repo) as held:
                names = sorted(s.name for s in held.index.stages)
        except AttributeError as err:
            pytest.fail(f"{UPGRADE}: Repo._reset, which tasks.history.versioning._repo calls, is gone: {err}")
        assert names == ["a", "b"], f"{UPGRADE}: a held Repo keeps its old graph of stages after _reset()"
        assert versioning.stage_status(repo, "b")  # never run
        (repo / "b.txt").write_text("b\n")
        versioning.commit_stage(repo, "b")
        assert versioning.stage_status(repo, "b") == {}
        (repo / "b.txt").write_text("changed\n")
        assert versioning.stage_status(repo, "b"), f"{UPGRADE}: a held Repo misses a changed output"


def test_a_stage_that_dvc_is_running_is_seen_with_its_pid_and_command(repo: Path):
    """versioning._busy reads `.dvc/tmp/rwlock`, where DVC records the stage it is running (its deps
    and outs, pid and command): written here by DVC itself, running a stage whose command waits."""
    from dvc.repo import Repo

    (repo / "dvc.yaml").write_text(
        "stages:\n  a:\n    cmd: while [ ! -e go ]; do sleep 0.05; done; echo a > a.txt\n    outs:\n"
        "      - a.txt\n"
    )
    seen: list[str | None] = []

    def watch() -> None:  # while DVC runs the stage in this thread's parent
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            who = versioning._busy(repo)
            if who:
                seen.append(who)
            time.sleep(0.05)
        (repo / "go").touch()  # let the stage end, seen or not

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with Repo(str(repo)) as dvc_repo:
            dvc_repo.reproduce("a")
    finally:
        (repo / "go").touch()
        watcher.join()
    assert seen, f"{UPGRADE}: no stage found in .dvc/tmp/rwlock while `dvc repro` ran one"
    assert seen[0].startswith(f"pid {os.getpid()}: "), f"{UPGRADE}: .dvc/tmp/rwlock read as {seen[0]!r}"
    assert versioning._busy(repo) is None  # released when the stage ended


def test_a_stage_dvc_cannot_record_is_one_message_naming_the_file(repo: Path):
    """A dependency deleted before its stage is recorded: DVC's error becomes one message, no traceback."""
    (repo / "dvc.yaml").write_text(
        "stages:\n  c:\n    cmd: cat in.txt > c.txt\n    deps:\n      - in.txt\n    outs:\n      - c.txt\n"
    )
    (repo / "c.txt").write_text("c\n")
    with pytest.raises(PawflowError) as info:
        versioning.commit_stage(repo, "c")
    assert "recording stage c in dvc.lock failed" in str(info.value) and "in.txt" in str(info.value)
    assert info.value.fix and "git checkout" in info.value.fix
