"""flows/dedup.py in-process: exact and near duplicates, label conflicts, the data-quality report."""

from __future__ import annotations

import pandas as pd
import pytest

from flows.dedup import dedup_flow
from tasks.core.text import md

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_dedup_finds_exact_near_and_conflicts(built):
    params, _ = built
    dd = pd.read_parquet(params.paths.interim / "dedup.parquet").set_index("path")
    # byte-identical: the tie is broken by path, so "copy of ..." (sorted first) is the one kept
    assert dd.at["Dog/dog.1.jpg", "kind"] == "exact"
    assert dd.at["Dog/dog.1.jpg", "duplicate_of"] == "Dog/copy of dog.1.jpg"
    assert dd.at["Dog/dog.2 small.jpg", "kind"] == "near"
    assert dd.at["Dog/dog.2 small.jpg", "duplicate_of"] == "Dog/dog.2.jpg"
    assert dd.at["Cat/stolen dog.jpg", "status"] == dd.at["Dog/dog.3.jpg", "status"] == "conflict"


def test_dedup_writes_the_data_quality_report_and_artifact(built):
    from conftest import drain_prefect_workers
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    params, _ = built
    state = dedup_flow(params=params, return_state=True)
    assert state.is_completed(), state.message
    page = (params.paths.reports / "data.html").read_text()
    for name in ("truncated.jpg", "tiny.jpg", "strip.jpg", "corrupt.png"):  # drawn
        assert f'<img alt="Cat/{name}" src="data:image/jpeg;base64,' in page
    for name in ("Thumbs.db", "empty.jpg", "bomb.png"):  # listed
        assert f"<tr><td>Cat/{name}</td>" in page
    assert '<img alt="Dog/dog.2 small.jpg"' in page and '<img alt="Cat/stolen dog.jpg"' in page
    drain_prefect_workers()
    with get_client(sync_client=True) as c:
        (artifact,) = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["data-quality"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
        links = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert f"{md('Cat/stolen dog.jpg')} (label Cat)" in artifact.data and "data.html" in artifact.data
    # pictures travel inside the artifact (the UI cannot open a file:// link to the page)
    assert "](data:image/jpeg;base64," in artifact.data and "file://" not in artifact.data
    assert [a.key for a in links if "file://" in str(a.data)] == []  # nor in a link artifact
