"""flows/clean.py in-process: every defect its reason, raw untouched, progress without log noise, the
reject guard, photos that change after ingest, fuzzed photos."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import time
from pathlib import Path

import imagegen
import numpy as np
import pandas as pd
import pytest
from dataflows import run
from test_images import SETTINGS

from flows.clean import clean_flow, quiet_task_runs
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks.photos.datasetinfo import DatasetInfo
from tasks.photos.images import check_bytes

pytestmark = pytest.mark.usefixtures("prefect_server")


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
    # refresh: every photo decoded again (the workspace's verdicts are cached: see the next test)
    state = clean_flow(params=chunked, refresh=True, return_state=True)
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


def test_cached_verdicts_cost_no_task_run_and_new_photos_only_theirs(built, tmp_path: Path):
    """A night with new photos: the verdicts in the cache are read in one look-up, the new photos alone
    go to task runs (one per chunk of them), and the result is what a run with nothing cached gives."""
    from conftest import drain_prefect_workers, params_for
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    params, source = built
    work, grown = tmp_path / "work", tmp_path / "grown"
    shutil.copytree(params.paths.raw.parent.parent, work)  # its cache holds every verdict of source
    shutil.copytree(source, grown)
    for i in range(7):
        (grown / "Dog" / f"new-{i}.jpg").write_bytes(imagegen.jpeg(4242 + i))
    p = params_for(work, grown, clean={"max_reject_fraction": 0.5}, runner={"chunk_size": 5})
    assert ingest_flow(params=p, return_state=True).is_completed()

    def chunk_runs(refresh: bool) -> tuple[int, bytes]:
        state = clean_flow(params=p, refresh=refresh, return_state=True)
        assert state.is_completed(), state.message
        drain_prefect_workers()
        with get_client(sync_client=True) as c:
            runs = c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        return sum(r.name.startswith("check-photos") for r in runs), (
            p.paths.interim / "clean.parquet"
        ).read_bytes()

    assert chunk_runs(refresh=False)[0] == 2  # 7 new photos, chunks of 5
    again, table = chunk_runs(refresh=False)
    assert again == 0
    everything, from_scratch = chunk_runs(refresh=True)
    assert everything == -(-len(pd.read_parquet(p.paths.interim / "ingest.parquet")) // 5)
    assert table == from_scratch


@pytest.mark.slow  # ~4 s: keeps make test-fast under 3 min
def test_too_many_rejects_fail_clearly_without_outputs(tmp_path: Path, make_params):
    src = tmp_path / "junk"
    for cls in ("Cat", "Dog"):
        (src / cls).mkdir(parents=True)
        for i in range(5):
            (src / cls / f"{i}.jpg").write_text("not a photo")
        (src / cls / "ok.jpg").write_bytes(imagegen.jpeg(1 if cls == "Cat" else 2))
    (src / "Dog" / "tiny.jpg").write_bytes(imagegen.jpeg(3, (20, 20)))
    params = make_params(src)
    assert ingest_flow(params=params, return_state=True).is_completed()
    state = clean_flow(params=params, return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    page = params.paths.reports / "rejected.html"
    assert "85% of 13 files were rejected" in err.what and "not_an_image (10)" in err.what
    # The first five rejected files by path, each with its reason, then how many more, then the page.
    named = [line for line in err.what.splitlines() if line.startswith("  ")]
    assert named[0] == "  Cat/0.jpg: not_an_image (text/HTML data)"  # the detail, else what the reason means
    assert [line.split(":")[0] for line in named[:5]] == [f"  Cat/{i}.jpg" for i in range(5)]
    assert all(": not_an_image (" in line for line in named[:5])
    assert named[5] == "  ... and 6 more" and f"Every rejected file is shown in {page}." in err.what
    assert not (params.paths.interim / "clean.parquet").exists()
    assert not (params.paths.reports / "clean.json").exists()
    # The page shows every rejected file: the one that decodes with a picture, the others with why not.
    from browser import image_status

    html = page.read_text()
    for i in range(5):
        assert f"Cat/{i}.jpg" in html and f"Dog/{i}.jpg" in html
    assert image_status(page) == [("Dog/tiny.jpg", True)]

    # The next run that passes removes the page (it described the failure).
    shutil.rmtree(src / "Cat")
    shutil.rmtree(src / "Dog")
    imagegen.make_dataset(src, per_class=20)
    relaxed = make_params(src, clean={"max_reject_fraction": 0.5})
    # The junk left the source: accepted, as the guard asks, since it is most of the collection.
    assert ingest_flow(params=relaxed, accept_removals=True, return_state=True).is_completed()
    assert clean_flow(params=relaxed, return_state=True).is_completed()
    assert not page.exists() and (relaxed.paths.reports / "clean.json").exists()


def test_files_that_vanish_or_change_after_ingest(dataset: Path, make_params):
    params = make_params(dataset)
    run(params, ingest_flow)
    (params.paths.raw / "Cat" / "cat.1.jpg").unlink()
    (params.paths.raw / "Dog" / "dog.2.jpg").write_bytes(imagegen.jpeg(31337))
    run(params, clean_flow)
    clean = pd.read_parquet(params.paths.interim / "clean.parquet").set_index("path")
    assert clean.at["Cat/cat.1.jpg", "reason"] == "missing"
    assert clean.at["Dog/dog.2.jpg", "reason"] == "changed_since_ingest"


def test_an_environment_failure_leaves_no_cached_verdict(dataset: Path, make_params):
    """Clean where data/raw cannot be seen (as on a worker without the shared folder) fails, saying so; once
    it can be seen, clean succeeds without the cache being deleted: neither the per-photo cache nor a cache
    of chunk results kept a verdict that came from the machine rather than from the photos."""
    params = make_params(dataset)
    run(params, ingest_flow)
    hidden = params.paths.raw.with_name("raw-hidden")
    params.paths.raw.rename(hidden)
    state = clean_flow(params=params, return_state=True)
    assert state.is_failed()
    assert "missing (40)" in state.message and "40 of them could not be read" in state.message
    hidden.rename(params.paths.raw)
    run(params, clean_flow)
    clean = pd.read_parquet(params.paths.interim / "clean.parquet")
    assert len(clean) == 40 and (clean["status"] == "kept").all()


def mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Random bit flips, truncations and inserted bytes of real JPEG and PNG encodings."""
    rng = np.random.default_rng(seed)
    bases = [imagegen.jpeg(i, (96, 72)) for i in range(4)]
    bases += [imagegen.encode(imagegen.photo(10 + i, (80, 64)), "PNG") for i in range(3)]
    bases += [imagegen.encode(imagegen.photo(20, (64, 64)), "WEBP", quality=80)]
    out = []
    for k in range(count):
        data = bytearray(bases[k % len(bases)])
        op = k % 3
        if op == 0:
            for pos in rng.integers(0, len(data), size=rng.integers(1, 24)):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 120)), dtype=np.uint8).tobytes()
        out.append((f"m{k:04d}.{'jpg' if k % len(bases) < 4 else 'png'}", bytes(data)))
    return out


@pytest.mark.slow
def test_fuzz_2000_mutated_photos(tmp_path: Path, make_params):
    """No crash, no hang (every file within the per-file limit), every file classified, and every kept
    photo decodes with TensorFlow in the training input pipeline."""
    from tasks import train

    files = mutations(seed=2026, count=2000)
    slowest = 0.0
    for _, data in files:
        started = time.monotonic()
        check_bytes(data, SETTINGS)
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < SETTINGS.timeout_s

    src = tmp_path / "fuzz"
    for i, (name, data) in enumerate(files):
        folder = src / ("Cat" if i % 2 else "Dog")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    params = make_params(src, clean={"max_reject_fraction": 1.0, "min_side": 8}, dedup={"max_distance": 0})
    run(params, ingest_flow, clean_flow, dedup_flow, shard_flow)
    clean = pd.read_parquet(params.paths.interim / "clean.parquet")
    assert len(clean) == 2000 and set(clean["status"]) <= {"kept", "rejected"}
    assert (clean[clean["status"] == "rejected"]["reason"] != "").all()
    kept = int((clean["status"] == "kept").sum())
    assert 0 < kept < 2000  # the mix really exercises both sides
    info = DatasetInfo.read(params.paths.processed)
    decoded = 0
    for split in ("train", "val", "test"):
        ds = train.make_dataset(
            train.split_files(params.paths.processed, info, split),
            num_classes=2,
            image_size=32,
            batch_size=64,
        )
        decoded += sum(int(x.shape[0]) for x, _ in ds)
    dedup = pd.read_parquet(params.paths.interim / "dedup.parquet")
    assert decoded == int((dedup["status"] == "kept").sum()) > 0


def test_a_full_disk_under_the_cache_fails_the_stage_with_one_message_and_exit_1(
    dataset: Path,
    make_params,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
):
    """SQLite's "database or disk is full" while clean records its verdicts: no traceback anywhere (the
    task runs' logs included), one message naming the cache file and its file system, exit 1, no
    output written."""
    from contextlib import nullcontext

    from flows import common
    from tasks.photos import store

    params = make_params(dataset)
    run(params, ingest_flow)
    # The cache may not grow by a page: SQLite then fails as on a full disk (SQLITE_FULL).
    monkeypatch.setattr(store, "SCHEMA", store.SCHEMA + "PRAGMA max_page_count = 1;")
    monkeypatch.setattr(common, "run_lock", nullcontext)
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        code = common.stage_main("clean", clean_flow, argv=["--refresh"], load=lambda path: params)
    out = capfd.readouterr()
    err = out.out + out.err
    assert code == 1, err
    assert "Traceback" not in err and not [r for r in caplog.records if r.exc_info]  # Prefect's logs too
    db = store.store_path(params.paths.cache)
    said = f"pawflow clean failed: no space left while writing {db} (database or disk is full)"
    assert err.count(said) == 1
    assert err.count("What to do: Free space on the file system at") == 1
    assert not (params.paths.interim / "clean.parquet").exists()
    assert not (params.paths.reports / "clean.json").exists()
