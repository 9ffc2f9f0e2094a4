"""flows/common.py's progress helper: a Prefect progress artifact any stage can update."""

from __future__ import annotations

import logging
import os

import pytest
from prefect import flow

from flows import common


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
    import subprocess
    import sys

    from conftest import ROOT

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
