"""The data flows in-process on generated photos: outputs, reasons, round trip and determinism."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import imagegen
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.clean import clean_flow, quiet_task_runs
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks.params import Params

pytestmark = pytest.mark.usefixtures("prefect_server")

DATA_FILES = [
    "interim/ingest.parquet",
    "interim/clean.parquet",
    "interim/dedup.parquet",
    "interim/split.parquet",
    "processed/dataset_info.json",
]


def messy_source(root: Path) -> Path:
    """20 photos per class plus every defect, awkward valid photos and duplicates."""
    imagegen.make_dataset(root, per_class=20)
    for name, (data, _) in imagegen.defects().items():
        (root / "Cat" / name).write_bytes(data)
    for name, (data, _) in imagegen.awkward_valid().items():
        (root / "Dog" / name).write_bytes(data)
    (root / "Dog" / "copy of dog.1.jpg").write_bytes((root / "Dog" / "dog.1.jpg").read_bytes())
    img = Image.open(root / "Dog" / "dog.2.jpg")
    (root / "Dog" / "dog.2 small.jpg").write_bytes(imagegen.encode(img.resize((44, 37)), "JPEG", quality=70))
    (root / "Cat" / "stolen dog.jpg").write_bytes((root / "Dog" / "dog.3.jpg").read_bytes())
    return root


def run_data_stages(params: Params, refresh: bool = False) -> None:
    for flow in (ingest_flow, clean_flow, dedup_flow, shard_flow):
        state = flow(params=params, refresh=refresh, return_state=True)
        assert state.is_completed(), state.message


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_server: str):
    from conftest import params_for

    root = tmp_path_factory.mktemp("flows")
    source = messy_source(root / "source")
    params = params_for(root / "work", source, clean={"max_reject_fraction": 0.5})
    run_data_stages(params)
    return params, source


def test_clean_gives_every_defect_its_reason(built):
    params, _ = built
    clean = pd.read_parquet(params.paths.interim / "clean.parquet").set_index("path")
    for name, (_, reason) in imagegen.defects().items():
        assert (clean.at[f"Cat/{name}", "status"], clean.at[f"Cat/{name}", "reason"]) == ("rejected", reason)
    for name, (_, step) in imagegen.awkward_valid().items():
        assert clean.at[f"Dog/{name}", "status"] == "kept"
        assert step in clean.at[f"Dog/{name}", "normalised"]
    report = json.loads((params.paths.reports / "clean.json").read_text())
    assert report["rejected"] == len(imagegen.defects())
    assert {r["path"] for r in report["rejected_files"]} == {f"Cat/{n}" for n in imagegen.defects()}


def test_raw_files_are_never_modified(built):
    params, source = built
    for p in source.rglob("*"):
        if p.is_file():
            assert (params.paths.raw / p.relative_to(source)).read_bytes() == p.read_bytes()


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
    assert "`Cat/stolen dog.jpg` (label Cat)" in artifact.data and "data.html" in artifact.data


MESSAGE = "Finished in state Completed()"


def record(level: int, task_name: str | None) -> logging.LogRecord:
    rec = logging.LogRecord("prefect.task_runs", level, __file__, 1, MESSAGE, (), None)
    if task_name is not None:
        rec.task_name = task_name
    return rec


def test_quiet_task_runs_drops_only_the_named_tasks_info_lines():
    logger = logging.getLogger("prefect.task_runs")
    before = list(logger.filters)
    try:
        quiet_task_runs("chunky")
        quiet_task_runs("chunky")  # idempotent: one filter for a name
        mine = [f for f in logger.filters if f not in before]
        assert len(mine) == 1
        assert not logger.filter(record(logging.INFO, "chunky"))
        assert logger.filter(record(logging.ERROR, "chunky"))  # a failed chunk is still reported
        assert logger.filter(record(logging.WARNING, "chunky"))
        assert logger.filter(record(logging.INFO, "other-task"))
        assert logger.filter(record(logging.INFO, None))
    finally:
        logger.filters[:] = before


def test_clean_shows_progress_without_a_log_line_per_chunk(built, monkeypatch: pytest.MonkeyPatch):
    from conftest import drain_prefect_workers, params_for
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    import flows.clean

    params, source = built
    chunked = params_for(
        params.paths.raw.parent.parent, source, clean={"max_reject_fraction": 0.5}, runner={"chunk_size": 5}
    )
    # The terminal bar (tqdm draws it on a terminal only): drawn here into a buffer, every update.
    drawn = io.StringIO()
    real_tqdm = flows.clean.tqdm
    forced = {"disable": False, "file": drawn, "mininterval": 0, "miniters": 1}
    monkeypatch.setattr(flows.clean, "tqdm", lambda *a, **kw: real_tqdm(*a, **{**kw, **forced}))
    state = clean_flow(params=chunked, return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    drain_prefect_workers()
    with get_client(sync_client=True) as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        (progress,) = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["clean-progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    files = len(pd.read_parquet(params.paths.interim / "ingest.parquet"))
    assert files > 10 * 5  # more than ten chunks
    assert any("Beginning flow run" in log.message for log in logs)  # the run's logs did arrive
    assert [log.message for log in logs if log.task_run_id is not None] == []  # none per chunk
    assert float(progress.data) == 100.0
    assert progress.description == f"clean: {files:,} of {files:,} files checked"
    # Counts and an ETA as the chunks finish ("clean:  40%|████   | 20/50 [00:01<00:01, 15.2file/s]").
    frames = re.findall(rf"clean: +\d+%\|[^|]*\| (\d+)/{files} \[\d\d:\d\d<\d\d:\d\d", drawn.getvalue())
    assert len({int(n) for n in frames}) > 10 and int(frames[-1]) == files, drawn.getvalue()[-500:]


def test_shards_round_trip_through_tf_data(built):
    import tensorflow as tf

    from tasks import tfrecord

    params, source = built
    info = json.loads((params.paths.processed / "dataset_info.json").read_text())
    assert info["class_names"] == ["Cat", "Dog"]
    seen = {}
    for split, meta in info["splits"].items():
        files = [params.paths.processed / s["file"] for s in meta["shards"]]
        assert [f.name for f in files] == [f"{split}.tfrecord-00000-of-00001"]
        for ex in tfrecord.read(files):
            path = ex["path"].numpy().decode()
            pixels = tf.io.decode_jpeg(ex["image/encoded"], channels=3).numpy()
            assert (
                info["class_names"][int(ex["label"])]
                == ex["label/name"].numpy().decode()
                == path.split("/")[0]
            )
            assert pixels.shape[:2] == (int(ex["image/height"]), int(ex["image/width"]))
            seen[path] = split
            if path.startswith(("Cat/cat.", "Dog/dog.")) and " " not in path:
                original = np.asarray(Image.open(source / path).convert("RGB"), dtype=float)
                assert np.abs(original - pixels).mean() < 6  # JPEG re-encoding tolerance
    dd = pd.read_parquet(params.paths.interim / "dedup.parquet")
    assert set(seen) == set(dd[dd["status"] == "kept"]["path"])
    counts = sum(sum(c.values()) for c in info["counts"].values())
    assert counts == len(seen)


def test_same_inputs_give_byte_identical_outputs(built, tmp_path: Path):
    from conftest import params_for

    params, source = built
    other = params_for(
        tmp_path / "work2",
        source,
        clean={"max_reject_fraction": 0.5},
        runner={"kind": "threads", "workers": 1, "chunk_size": 7},
    )
    run_data_stages(other)
    for rel in DATA_FILES:
        a = (params.paths.raw.parent / rel).read_bytes()
        b = (other.paths.raw.parent / rel).read_bytes()
        assert a == b, rel
    page = (params.paths.reports / "data.html").read_bytes()
    assert page == (other.paths.reports / "data.html").read_bytes()
    shards = sorted(p.name for p in params.paths.processed.glob("*.tfrecord-*"))
    assert shards and shards == sorted(p.name for p in other.paths.processed.glob("*.tfrecord-*"))
    for name in shards:
        assert (params.paths.processed / name).read_bytes() == (other.paths.processed / name).read_bytes()


def test_refresh_recomputes_to_the_same_bytes(built):
    params, _ = built
    before = {rel: (params.paths.raw.parent / rel).read_bytes() for rel in DATA_FILES}
    run_data_stages(params, refresh=True)
    assert before == {rel: (params.paths.raw.parent / rel).read_bytes() for rel in DATA_FILES}


def test_too_many_rejects_fail_clearly_without_outputs(tmp_path: Path, make_params):
    src = tmp_path / "junk"
    for cls in ("Cat", "Dog"):
        (src / cls).mkdir(parents=True)
        for i in range(5):
            (src / cls / f"{i}.jpg").write_text("not a photo")
        (src / cls / "ok.jpg").write_bytes(imagegen.jpeg(1 if cls == "Cat" else 2))
    params = make_params(src)
    assert ingest_flow(params=params, return_state=True).is_completed()
    state = clean_flow(params=params, return_state=True)
    assert state.is_failed()
    assert "83% of 12 files were rejected" in state.message and "not_an_image (10)" in state.message
    assert not (params.paths.interim / "clean.parquet").exists()
    assert not (params.paths.reports / "clean.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_every_task_runner_gives_the_same_outputs(built, tmp_path: Path, kind: str):
    """threads (default), processes and a 2-worker Dask LocalCluster map the same per-photo work."""
    from conftest import params_for

    from flows.common import task_runner

    params, source = built
    other = params_for(
        tmp_path / kind,
        source,
        clean={"max_reject_fraction": 0.5},
        runner={"kind": kind, "workers": 2, "chunk_size": 16},
    )
    runner = task_runner(other.runner)
    assert type(runner).__name__ == {"processes": "ProcessPoolTaskRunner", "dask": "DaskTaskRunner"}[kind]
    for flow in (ingest_flow, clean_flow, dedup_flow, shard_flow):
        state = flow.with_options(task_runner=task_runner(other.runner))(params=other, return_state=True)
        assert state.is_completed(), state.message
    for rel in DATA_FILES:
        assert (params.paths.raw.parent / rel).read_bytes() == (other.paths.raw.parent / rel).read_bytes(), (
            rel
        )


def test_code_cache_key_imports_a_module_not_loaded_yet():
    """A stage process may compute a cache key before the task has imported the module it names."""
    import sys

    from flows.common import CodeOf

    sys.modules.pop("tabnanny", None)
    key = CodeOf(modules=("tabnanny",)).compute_key(None, {}, {})
    assert key and "tabnanny" in sys.modules
    assert CodeOf(modules=("tabnanny",)).compute_key(None, {}, {}) == key
