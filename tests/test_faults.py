"""Faults: kill -9 mid-stage, Ctrl-C, a full disk while writing shards. Nothing lost, nothing corrupt."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import imagegen
import numpy as np
import pandas as pd
import pytest
import yaml
from commands import wait_for, wait_while_running
from conftest import make_workspace, tool_env

from tasks.history import versioning

pytestmark = pytest.mark.slow

STAGES = (*versioning.DATA_STAGES, "train")
# A stopped stage ends within this long (flows.stops: STOP_GRACE_S at most, plus a loaded machine's slack).
STOPS_WITHIN_S = 30
PARAMS = {
    "runner": {"chunk_size": 25, "workers": 2},
    "train": {"epochs": 3, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0},
    "evaluate": {"min_accuracy": 0.0},
}
DATA_OUTPUTS = [
    "data/interim/ingest.parquet",
    "data/interim/clean.parquet",
    "data/interim/dedup.parquet",
    "data/interim/split.parquet",
    "data/processed/dataset_info.json",
    "reports/clean.json",
    "reports/dedup.json",
    "reports/shard.json",
]


def stage(ws: Path, name: str, api: str, *extra: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", f"flows.{name}", *extra],
        cwd=ws,
        env=tool_env(api),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Enough photos (and bytes) that every stage takes a few seconds.
    return imagegen.make_dataset(tmp_path_factory.mktemp("faults") / "source", per_class=200, size=(320, 240))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path, prefect_server: str) -> Path:
    """The same workspace, never interrupted."""
    ws = make_workspace(tmp_path_factory.mktemp("reference") / "ws", source, **PARAMS)
    for name in STAGES:
        stage(ws, name, prefect_server)
    return ws


def kill_when(ws: Path, name: str, api: str, ready: Callable[[], bool], timeout: float = 300) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"flows.{name}"],
        cwd=ws,
        env=tool_env(api),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Shard's moment (its temporary folder) lasts a fraction of a second: look often.
    wait_while_running(proc, ready, timeout, f"{name} reached the point to kill it", every=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_no_half_written_outputs(ws: Path) -> None:
    """Whatever carries a final name is complete."""
    for rel in DATA_OUTPUTS:
        p = ws / rel
        if p.exists():
            pd.read_parquet(p) if p.suffix == ".parquet" else json.loads(p.read_text())
    info = ws / "data/processed/dataset_info.json"
    if info.exists():
        from tasks.core.fileio import sha256_file

        for split in json.loads(info.read_text())["splits"].values():
            for s in split["shards"]:
                assert sha256_file(ws / "data/processed" / s["file"]) == s["sha256"]


def assert_same_as(ws: Path, reference: Path) -> None:
    for rel in DATA_OUTPUTS:
        assert (ws / rel).read_bytes() == (reference / rel).read_bytes(), rel
    for shard in sorted((reference / "data/processed").glob("*.tfrecord-*")):
        assert (ws / "data/processed" / shard.name).read_bytes() == shard.read_bytes()
    raw = sorted(p.relative_to(reference) for p in (reference / "data/raw").rglob("*") if p.is_file())
    assert sorted(p.relative_to(ws) for p in (ws / "data/raw").rglob("*") if p.is_file()) == raw


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.jpg")) if folder.exists() else 0


def cached_checks(ws: Path) -> int:
    import sqlite3

    db = ws / ".pawflow/cache/photos.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=0.1) as con:
            return con.execute("SELECT COUNT(*) FROM checks").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


KILL_POINTS = {
    "ingest": lambda ws: count_files(ws / "data/raw") >= 50,
    "clean": lambda ws: cached_checks(ws) >= 50,
    "shard": lambda ws: any(p.name.startswith(".processed.tmp-") for p in (ws / "data").iterdir()),
}


@pytest.mark.parametrize("victim", ["ingest", "clean", "shard"])
def test_kill_9_mid_stage_then_rerun_gives_identical_outputs(
    victim: str, tmp_path: Path, source: Path, reference: Path, prefect_server: str
):
    ws = make_workspace(tmp_path / "ws", source, **PARAMS)
    for name in STAGES[: STAGES.index(victim)]:
        stage(ws, name, prefect_server)
    kill_when(ws, victim, prefect_server, lambda: KILL_POINTS[victim](ws))
    assert_no_half_written_outputs(ws)
    for name in STAGES[STAGES.index(victim) : STAGES.index("shard") + 1]:
        stage(ws, name, prefect_server)
    assert_same_as(ws, reference)
    leftovers = [p for p in ws.rglob("*") if ".tmp-" in p.name and ".pawflow" not in p.parts]
    assert leftovers == []


def test_kill_9_mid_training_restarts_cleanly(
    tmp_path: Path, source: Path, reference: Path, prefect_server: str
):
    import keras

    ws = make_workspace(tmp_path / "ws", source, **PARAMS)
    for name in STAGES[:-1]:
        stage(ws, name, prefect_server)
    epoch_log = ws / ".pawflow/cache/train/dvclive/plots/metrics/train/loss.tsv"
    kill_when(
        ws, "train", prefect_server, lambda: epoch_log.exists() and len(epoch_log.read_text().split()) > 2
    )
    assert not (ws / "models/model.keras").exists()  # nothing half-written under the final name
    stage(ws, "train", prefect_server)
    ours = keras.saving.load_model(ws / "models/model.keras").get_weights()
    theirs = keras.saving.load_model(reference / "models/model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))  # same seed, same model
    assert json.loads((ws / "reports/train.json").read_text())["epochs_run"] == 3


class Stage:
    """A stage process started with its stderr read as it comes (the flow run's id is taken from it)."""

    def __init__(self, ws: Path, name: str, api: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"flows.{name}", *extra],
            cwd=ws,
            env=tool_env(api),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.run_id: list[str] = []
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if found := re.search(r"/runs/flow-run/([0-9a-f-]{36})", line):
                self.run_id.append(found.group(1))
                self.started.set()

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for_chunks(self, progress_key: str) -> None:
        """Until the flow's own code runs (its progress artifact exists) and a chunk has finished while the
        per-photo cache is held (cache_held): the flow's main thread, which alone stores verdicts, is then
        waiting for that lock, or for the other chunks; a signal is handled in either wait. A state, not
        a time: a signal sent while Prefect's engine is still starting the run can be swallowed by it."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            ArtifactFilterKey,
            TaskRunFilter,
            TaskRunFilterFlowRunId,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        assert self.started.wait(300), self.err[-3000:]
        with get_client(sync_client=True) as client:
            wanted = ArtifactFilter(
                key=ArtifactFilterKey(any_=[progress_key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[self.run_id[0]]),
            )
            wait_for(lambda: client.read_artifacts(artifact_filter=wanted), 120, f"{progress_key} artifact")
            done = TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[self.run_id[0]]),
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED])),
            )
            wait_for(lambda: client.read_task_runs(task_run_filter=done), 120, "a chunk to finish")
        assert self.proc.poll() is None, self.err[-3000:]

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return code


@contextmanager
def cache_held(ws: Path) -> Iterator[None]:
    """The per-photo cache's write lock, held: clean cannot record a verdict, so it cannot finish, and
    a signal reaches a running stage on any machine, however fast."""
    import sqlite3

    db = sqlite3.connect(ws / ".pawflow/cache/photos.sqlite", timeout=60, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_ctrl_c_exits_cleanly_with_a_message(tmp_path: Path, source: Path, prefect_server: str):
    ws = make_workspace(tmp_path / "ws", source, **PARAMS)
    stage(ws, "ingest", prefect_server)
    with cache_held(ws):
        clean = Stage(ws, "clean", prefect_server)
        clean.wait_for_chunks("clean-progress")
        clean.proc.send_signal(signal.SIGINT)
    assert clean.finish(timeout=120) == 130, clean.err[-3000:]
    assert "interrupted" in clean.err and "Traceback" not in clean.err
    # Nothing half-written: no table, or (when Prefect's engine swallowed the KeyboardInterrupt and the
    # run went on; the exit code still says interrupted) a whole one, a verdict for every file.
    out = ws / "data/interim/clean.parquet"
    assert not out.exists() or len(pd.read_parquet(out)) == len(
        pd.read_parquet(ws / "data/interim/ingest.parquet")
    )


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_stopped_cleanly(ws: Path, pids: list[int]) -> None:
    """The workspace free, no process of the run left, no temporary name with a final one beside it."""
    from flows.lock import lock_holder

    assert lock_holder(ws) is None
    deadline = time.monotonic() + 10
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if running(p)]
    assert_no_half_written_outputs(ws)


def test_sigterm_stops_a_stage_in_seconds_and_an_orphaned_stage_stops_by_itself(
    tmp_path: Path, source: Path, prefect_server: str
):
    """`kill PID` (or systemctl stop) of a data stage whose pool workers are mid-chunk: exit 143 with one
    message within seconds, its workers ended. Then `dvc repro` killed under a training stage: the
    stage, orphaned, notices and stops in seconds (it went on training for minutes)."""
    import psutil

    ws = make_workspace(
        tmp_path / "ws", source, **{**PARAMS, "runner": {**PARAMS["runner"], "kind": "processes"}}
    )
    stage(ws, "ingest", prefect_server)
    with cache_held(ws):  # the workers cannot finish their chunk
        clean = Stage(ws, "clean", prefect_server)
        clean.wait_for_chunks("clean-progress")
        workers = [p.pid for p in psutil.Process(clean.proc.pid).children(recursive=True)]
        assert workers
        signalled = time.monotonic()
        clean.proc.send_signal(signal.SIGTERM)
        code = clean.finish(timeout=60)
        took = time.monotonic() - signalled
    assert code == 143, clean.err[-3000:]
    assert took < STOPS_WITHIN_S, took
    assert clean.err.count("pawflow clean: terminated (SIGTERM)") == 1 and "Traceback" not in clean.err
    assert not (ws / "data/interim/clean.parquet").exists()
    assert_stopped_cleanly(ws, [clean.proc.pid, *workers])

    for name in ("clean", "dedup", "shard", "check", "base"):
        stage(ws, name, prefect_server)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["epochs"] = 1000  # minutes of training, unless it stops
    params["train"]["early_stopping_patience"] = 1000  # and early stopping must not end it first
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # SHELL unset, as in a CI job or a systemd unit: DVC runs the stage as `/bin/sh -c CMD`, and dash
    # forks (it does not exec), so a shell stays between DVC and the stage and outlives a killed DVC.
    env = {key: value for key, value in tool_env(prefect_server).items() if key != "SHELL"}
    dvc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "train"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    epoch_log = ws / ".pawflow/cache/train/dvclive/plots/metrics/train/loss.tsv"
    wait_while_running(
        dvc,
        lambda: epoch_log.exists() and len(epoch_log.read_text().split()) > 4,
        300,
        "two epochs",
        dvc.stdout.read,
    )
    (train,) = [p for p in psutil.Process(dvc.pid).children(recursive=True) if "flows.train" in p.cmdline()]
    dvc.kill()  # DVC gone at once (kill -9, or a SIGTERM to it alone): nothing tells its stage
    dvc.wait()
    killed = time.monotonic()
    psutil.wait_procs([train], timeout=60)
    assert time.monotonic() - killed < STOPS_WITHIN_S
    out = dvc.stdout.read()  # the stage kept writing to DVC's pipe until it ended
    assert out.count(f"pawflow train: stopped: the process that started it (pid {dvc.pid}: ") == 1, out[
        -3000:
    ]
    assert "Traceback" not in out
    assert not (ws / "models/model.keras").exists()  # DVC removed it before the run; never half-written
    assert_stopped_cleanly(ws, [train.pid])


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MB tmpfs (a real ENOSPC); needs root, like CI on this machine."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def failed_on_a_full_disk(ws: Path, name: str, api: str, *extra: str) -> str:
    """Run a stage that must fail for want of room: exit 1, one message saying so, no traceback."""
    out = subprocess.run(
        [sys.executable, "-m", f"flows.{name}", *extra],
        cwd=ws,
        env=tool_env(api),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.count(f"pawflow {name} failed: no space left") == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return out.stderr


def test_disk_full_while_writing_shards(tmp_path: Path, small_disk: Path, prefect_server: str):
    """A real full disk under shard (its shards), clean (the per-photo cache's SQLite: "database or disk
    is full") and train (DVCLive's metrics, checkpoints, TensorBoard events in its scratch folder)."""
    source = imagegen.make_dataset(tmp_path / "source", per_class=30, size=(256, 192))
    cache = {"cache": "data/.cache"}  # the per-photo cache and training's scratch folder on the small disk
    ws = make_workspace(tmp_path / "ws", source, **PARAMS, paths=cache)
    for held in (ws / "data").iterdir():  # what the workspace keeps in data/ (the exclude list) moves too
        shutil.move(held, small_disk / held.name)
    (ws / "data").rmdir()
    (ws / "data").symlink_to(small_disk)
    for name in STAGES:
        stage(ws, name, prefect_server)
    info_before = (ws / "data/processed/dataset_info.json").read_bytes()
    shards = {p.name: p.read_bytes() for p in (ws / "data/processed").glob("*.tfrecord-*")}
    model = (ws / "models/model.keras").read_bytes()
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - sum(len(s) for s in shards.values()) // 2))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["shard"]["jpeg_quality"] = 97  # bigger shards, written beside the current ones
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run(
        [sys.executable, "-m", "flows.shard"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 1
    assert "no space left while writing" in out.stderr and "Traceback" not in out.stderr
    assert (ws / "data/processed/dataset_info.json").read_bytes() == info_before
    assert {p.name: p.read_bytes() for p in (ws / "data/processed").glob("*.tfrecord-*")} == shards
    assert (ws / "models/model.keras").read_bytes() == model
    assert not [p for p in small_disk.iterdir() if ".tmp-" in p.name]
    filler.unlink()
    stage(ws, "shard", prefect_server)

    clean_table = (ws / "data/interim/clean.parquet").read_bytes()
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * free)  # not a byte left
    err = failed_on_a_full_disk(ws, "clean", prefect_server, "--refresh")
    assert f"while writing {ws / 'data/.cache/photos.sqlite'}" in err or "data/.cache/photos.sqlite" in err
    assert (ws / "data/interim/clean.parquet").read_bytes() == clean_table
    err = failed_on_a_full_disk(ws, "train", prefect_server, "--refresh")
    assert "data/.cache/train" in err
    assert (ws / "models/model.keras").read_bytes() == model
    assert not [p for p in ws.rglob("*") if ".tmp-" in p.name and ".cache" not in p.parts]
    filler.unlink()
    stage(ws, "clean", prefect_server)
    assert (ws / "data/interim/clean.parquet").read_bytes() == clean_table


def test_a_prefect_server_killed_under_a_stage_ends_it_in_seconds_with_one_message(
    tmp_path: Path, source: Path, prefect_server: str
):
    """Its Prefect server killed mid-training, a stage used to train on, then retry its API calls for
    minutes and fail with tracebacks. It stops within seconds of the server's end: exit 1, one message
    naming the API and what to run, the workspace free, nothing half-written."""
    from flows.server import start_server, stop_server
    from flows.stops import API_LOST_S

    ws = make_workspace(tmp_path / "ws", source, **{**PARAMS, "train": {**PARAMS["train"], "epochs": 1000}})
    for name in STAGES[:-1]:
        stage(ws, name, prefect_server)
    server, api = start_server(tmp_path / "throwaway-prefect")  # not the session's: this one is killed
    try:
        train = Stage(ws, "train", api)
        epoch_log = ws / ".pawflow/cache/train/dvclive/plots/metrics/train/loss.tsv"
        wait_while_running(
            train.proc,
            lambda: epoch_log.exists() and len(epoch_log.read_text().split()) > 4,
            300,
            "two epochs",
            lambda: train.err,
        )
        server.kill()
        server.wait()
        killed = time.monotonic()
        code = train.finish(timeout=300)
        took = time.monotonic() - killed
    finally:
        stop_server(server)
    assert code == 1, train.err[-3000:]
    assert API_LOST_S <= took < API_LOST_S + STOPS_WITHIN_S, took
    assert train.err.count(f"pawflow train failed: the Prefect API at {api} stopped answering") == 1
    assert train.err.count("What to do: Run again") == 1
    assert "Traceback" not in train.err and "ConnectError" not in train.err
    assert not (ws / "models/model.keras").exists()
    assert_stopped_cleanly(ws, [train.proc.pid])
