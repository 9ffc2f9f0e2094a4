"""flows/common.py: the progress artifact, the task runners, the code part of cache keys, summaries and the
stage entry point."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from commands import wait_for
from conftest import ROOT, shipped
from dataflows import DATA_FILES
from prefect import flow

from flows import common
from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks.core.errors import PawflowError
from tasks.history import versioning


def test_progress_artifact_outside_a_flow_run_does_nothing(monkeypatch: pytest.MonkeyPatch):
    import prefect.artifacts

    def refuse(*args, **kwargs):
        raise AssertionError("no API call outside a flow run")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", refuse)
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", refuse)
    update = common.progress_artifact("x-progress", "x", 10)
    update(5)
    update(10, description="done")


def read_progress(flow_run_id, key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        return c.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )


def test_progress_artifact_reaches_100_in_at_most_one_update_per_percent(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch
):
    import prefect.artifacts

    real = prefect.artifacts.update_progress_artifact
    calls: list[float] = []

    def counted(artifact_id, progress, description=None, client=None):
        calls.append(progress)
        return real(artifact_id, progress, description=description)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", counted)

    @flow
    def work() -> None:
        update = common.progress_artifact("test-progress", "units done", 1000)
        for done in range(1, 1001):
            update(done)
        update(1000, description="1,000 of 1,000 units")

    state = work(return_state=True)
    assert state.is_completed()
    assert calls == [float(p) for p in range(1, 101)] + [100.0]
    (artifact,) = read_progress(state.state_details.flow_run_id, "test-progress")
    assert artifact.type == "progress" and float(artifact.data) == 100.0
    assert artifact.description == "1,000 of 1,000 units"


def test_a_refused_progress_update_warns_once_and_the_run_goes_on(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    import prefect.artifacts

    calls: list[float] = []

    def refused(artifact_id, progress, description=None, client=None):
        calls.append(progress)
        raise RuntimeError("API unavailable")

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", refused)

    @flow
    def work() -> int:
        update = common.progress_artifact("test-refused", "units", 10)
        for done in range(1, 11):
            update(done)
        return 10

    with caplog.at_level(logging.WARNING, logger="flows.common"):
        state = work(return_state=True)
    assert state.is_completed() and state.result() == 10
    assert calls == [10.0]
    assert [r.getMessage() for r in caplog.records if r.name == "flows.common"] == [
        "progress artifact 'test-refused' not updated: API unavailable"
    ]


@pytest.mark.slow
def test_a_missing_source_stops_the_ingest_stage_before_any_flow_or_server(tmp_path):
    """`python -m flows.ingest` (a stage as dvc repro runs it, or by hand): a wrong ingest.source is bad
    usage, exit 2 with one message, before Prefect starts a server or a flow run."""
    text = (ROOT / "params.yaml").read_text()
    assert "../shared/datasets/petimages-sample" in text
    typo = text.replace("../shared/datasets/petimages-sample", "petimages-smaple")
    (tmp_path / "params.yaml").write_text(typo)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "flows.ingest"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("ingest.source 'petimages-smaple' does not exist") == 1, out.stderr[-2000:]
    assert out.stderr.count("What to do") == 1 and "\\n" not in out.stderr
    assert "server" not in out.stdout + out.stderr and "Flow run" not in out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_every_task_runner_gives_the_same_outputs(built, tmp_path: Path, kind: str):
    """threads (default), processes and a 2-worker Dask LocalCluster map the same per-photo work (under
    Dask the stage's own tasks run in threads: the chunks go to the cluster as plain functions)."""
    from conftest import params_for

    from flows.common import task_runner

    params, source = built
    other = params_for(
        tmp_path / kind,
        source,
        clean={"max_reject_fraction": 0.5},
        runner={"kind": kind, "workers": 2, "chunk_size": 16},
    )
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    runner = task_runner(other.runner)  # dask: the chunks go to the cluster, the rest runs on threads
    assert isinstance(runner, {"processes": ProcessPoolTaskRunner, "dask": ThreadPoolTaskRunner}[kind])
    for stage_flow in (ingest_flow, clean_flow, dedup_flow, shard_flow):
        state = stage_flow.with_options(task_runner=task_runner(other.runner))(
            params=other, return_state=True
        )
        assert state.is_completed(), state.message
    for rel in DATA_FILES:
        assert (params.paths.raw.parent / rel).read_bytes() == (other.paths.raw.parent / rel).read_bytes(), (
            rel
        )


def test_code_cache_key_imports_a_module_not_loaded_yet():
    """A stage process may compute a cache key before the task has imported the module it names."""
    from flows.common import CodeOf

    sys.modules.pop("tabnanny", None)
    key = CodeOf(modules=("tabnanny",)).compute_key(None, {}, {})
    assert key and "tabnanny" in sys.modules
    assert CodeOf(modules=("tabnanny",)).compute_key(None, {}, {}) == key


def test_summary_table_cells_are_written_for_a_person():
    cells = [1234567, 0.9229888888888889, 173.5, 602.0, None, float("nan"), True, False, "pawnet"]
    assert [common.cell(v) for v in cells] == [
        "1,234,567",
        "0.923",
        "173.5",
        "602",
        "n/a",
        "n/a",
        "yes",
        "no",
        "pawnet",
    ]
    text = common.render_table("t", ["", "value"], [["files", 4007], ["p", None], ["auc", 0.92298]])
    assert "4,007" in text and "n/a" in text and "0.923" in text and "None" not in text


@pytest.mark.usefixtures("prefect_server")
def test_flow_runs_are_named_after_the_entry_point_and_the_date(monkeypatch: pytest.MonkeyPatch):
    import re
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from prefect.context import FlowRunContext

    from flows.common import pipeline_run_name, stage_run_name

    @flow(name="train", flow_run_name=stage_run_name)
    def stage() -> str:
        return FlowRunContext.get().flow_run.name

    @flow(name="pipeline", flow_run_name=pipeline_run_name)
    def pipeline() -> tuple[str, str]:
        return FlowRunContext.get().flow_run.name, stage()

    for key in ("DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(key, raising=False)
    outer, inner = pipeline()  # real runs: the names Prefect records
    assert re.fullmatch(r"local-\d{4}-\d\d-\d\d-\d{4}", outer) and inner == "train"  # a subflow: the stage

    # A standalone stage run (the context stubbed): the entry point that started it, then its start (UTC).
    scheduled = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    run = SimpleNamespace(parent_task_run_id=None, expected_start_time=scheduled)
    monkeypatch.setattr(
        FlowRunContext, "get", lambda: SimpleNamespace(flow=SimpleNamespace(name="train"), flow_run=run)
    )
    assert stage_run_name() == "train-2026-12-05-0400"
    monkeypatch.setenv("DVC_STAGE", "train")
    assert stage_run_name() == "dvc-repro-train-2026-12-05-0400"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert stage_run_name() == "dvc-exp-train-2026-12-05-0400"


@pytest.mark.usefixtures("prefect_server")
def test_dvc_push_is_retried_then_fails_with_its_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from flows.pipeline import dvc_push

    calls = []

    def flaky(root: Path) -> int:
        calls.append(root)
        if len(calls) < 2:
            raise PawflowError("dvc push failed: connection reset", "Check the remote.")
        return 3

    monkeypatch.setattr(versioning, "push", flaky)

    @flow
    def push_once(retries: int) -> int:
        return dvc_push.with_options(retries=retries, retry_delay_seconds=0)(tmp_path)

    assert push_once(1) == 3 and len(calls) == 2  # one failure, retried
    calls.clear()
    state = push_once(0, return_state=True)
    assert state.is_failed() and "connection reset" in state.message


def test_a_user_error_reaches_the_terminal_once():
    """The entry point prints a PawflowError in full; Prefect's one-line copy of the failed state is
    kept off the console (still sent to the API for the UI)."""
    from prefect.states import Completed

    @common.friendly
    def body() -> None:
        raise PawflowError("clean: all 7 files were rejected.\n  Cat/notes.txt: not_an_image", "Fix it.")

    state = body()

    def shown(message: str) -> bool:
        record = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, message, None, None)
        return common._UserErrorOnce().filter(record)

    assert not shown(f"Finished in state {state}")
    assert shown("Finished in state Failed('a crash: not a message for a person')")
    assert shown(f"Finished in state {Completed()}") and shown("Beginning flow run 'x' for flow 'clean'")


def test_summary_tables_show_class_names_as_they_are():
    """rich reads `[bold]` in a cell as markup and raised MarkupError on a class folder named `[/]x`."""
    text = common.render_table(
        "shard", ["split", "[/]x", "[bold]Dog"], [["train", 3, 1_000], ["[red]", "", ""]]
    )
    assert "[/]x" in text and "[bold]Dog" in text and "[red]" in text and "1,000" in text


@pytest.mark.parametrize(
    ("signame", "code", "says"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_stage_stopped_where_the_stop_was_swallowed_exits_with_its_code(
    signame: str, code: int, says: str, prefect_server: str, monkeypatch, capsys
):
    """SIGINT raises KeyboardInterrupt; SIGTERM, while a flow runs, Prefect's TerminationSignal (its
    handler replaces the stage's). Either swallowed, the run goes on and completes: the stage still
    exits with the stop's code and says so."""
    import signal

    @flow
    def swallows(params, refresh: bool = False) -> None:
        try:
            os.kill(os.getpid(), getattr(signal, signame))
            for _ in range(1000):
                pass
        except BaseException:
            pass  # as Prefect's engine does under load: the run goes on and completes

    from contextlib import nullcontext
    from types import SimpleNamespace

    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.setattr(common, "run_lock", nullcontext)
    monkeypatch.setattr(common, "tidy_workspace", lambda params: [])
    monkeypatch.setattr(common, "task_runner", lambda runner: ThreadPoolTaskRunner())
    got = common.stage_main("clean", swallows, argv=[], load=lambda path: SimpleNamespace(runner=None))
    assert got == code
    assert capsys.readouterr().err.count(f"pawflow clean: {says}") == 1


@pytest.mark.timeout(120)
def test_a_stopped_flow_does_not_wait_for_the_chunks_its_threads_are_working_on(prefect_server: str):
    """Prefect's thread pool waits for every running task when its flow ends; a stopped run's does not:
    its chunks leave at their next photo (tasks.core.stopping), so the run ends now, not after the chunk."""
    import time

    from prefect import task

    from tasks.core import stopping

    working = []

    @task
    def chunk() -> None:
        working.append(True)
        for _ in range(3000):  # ~30 s of photos unless the run stops
            stopping.check()
            time.sleep(0.01)

    futures = []

    @flow(task_runner=common.task_runner(shipped("runner", kind="threads", workers=2, chunk_size=1)))
    def stopped() -> None:
        futures.extend(chunk.submit() for _ in range(2))
        wait_for(lambda: len(working) == 2, 30, "both chunks to start", every=0.05)
        assert not any(f.state.is_final() for f in futures)
        raise KeyboardInterrupt  # what Ctrl-C raises in the flow's main thread

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stopped()
    assert time.monotonic() - started < 10
    assert stopping.requested()
    for f in futures:  # the chunks left too, at their next photo
        with pytest.raises(stopping.Stopped):
            f.wait(timeout=10)
    stopping.clear()


def test_a_full_disk_that_no_writer_of_ours_names_is_still_one_message(
    prefect_server: str, caplog: pytest.LogCaptureFixture
):
    """A library's own write that finds the disk full (here a task's, without a file name, as Prefect
    persisting a result fails): no traceback in the task's log, the run Failed with one message naming
    the file systems the stage writes to."""
    import errno

    from prefect import task

    from tasks.core.fileio import NoSpace

    @task
    def writes() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @flow
    @common.friendly
    def stage(params=None, refresh: bool = False) -> None:
        writes()

    common.quiet_user_errors()
    with caplog.at_level(logging.INFO):
        state = stage(return_state=True)
    assert state.is_failed()
    err = common.error_of(state)
    assert isinstance(err, NoSpace) and err.exit_code == 1
    assert "no space left on a disk this stage writes to (No space left on device)" in err.what
    failed = [r for r in caplog.records if "Task run failed with exception" in r.getMessage()]
    assert failed and not [r for r in caplog.records if r.exc_info]  # said, without a traceback
