"""clean: decode every ingested file fully; keep and normalise good photos, reject the rest with a reason."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from flows.common import (
    chunks,
    friendly,
    progress_artifact,
    publish,
    record_stage_run,
    stage_main,
    stage_run_name,
)
from flows.mapping import figures, map_chunks
from tasks import clean, dedup
from tasks.core.errors import PawflowError
from tasks.core.fileio import read_parquet, write_bytes, write_parquet
from tasks.core.params import Params
from tasks.photos.images import CheckSettings
from tasks.reports import datareport
from tasks.reports.reports import CLEAN, CleanReport

CHECK_TASK = "check-photos"


class _QuietTaskRuns(logging.Filter):
    """Drops the INFO lines ("Finished in state Completed()") of the named tasks' runs; problems pass."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "task_name", None) not in self.names


def quiet_task_runs(*names: str) -> None:
    """No per-run INFO lines for tasks mapped over many chunks (a progress bar says more); idempotent.

    Call it in the flow and in the task's body: with the processes runner the task engine logs in the
    worker process, which only the task's own code reaches.
    """
    logger = logging.getLogger("prefect.task_runs")
    have = set().union(*(f.names for f in logger.filters if isinstance(f, _QuietTaskRuns)))
    if not set(names) <= have:
        logger.addFilter(_QuietTaskRuns(frozenset(names) - have))


# Not cached by Prefect: the per-photo cache (tasks/photos/store.py) is the one cache of verdicts, and it
# never keeps an environment verdict (a file this machine could not read). A cache of whole chunks would keep
# them: the flow hands out only the photos the per-photo cache lacks, so a chunk seen twice is one whose
# verdicts were not cacheable.
@task(name=CHECK_TASK, cache_policy=NO_CACHE, persist_result=False)
def check_photos(items: list[tuple[str, str]], settings: CheckSettings, raw: Path) -> clean.Judged:
    """Decode and judge a chunk of photos; the flow stores what may be cached."""
    quiet_task_runs(CHECK_TASK)  # this process may be a worker of the processes runner
    return clean.judge_items(items, settings, raw)


def rejected_page(df: pd.DataFrame, params: Params, page: Path) -> None:
    """The rejected files as data.html shows them (thumbnails where they decode, the reason of each),
    for a collection clean refused: dedup, which writes data.html, never runs then. reports/clean.json,
    data.html and the parquets keep describing the last run that passed (DVC outputs with persist)."""
    report = datareport.build(
        df,
        pd.DataFrame(columns=dedup.COLUMNS),
        params.paths.raw,
        params.clean.formats,
        params.clean.max_pixels,
        params.dedup.max_distance,
        params.clean.flags,
    )
    write_bytes(page, datareport.render_html(report).encode("utf-8"))


@flow(name="clean", flow_run_name=stage_run_name, log_prints=True)
@friendly
def clean_flow(params: Params, refresh: bool = False) -> CleanReport:
    """A verdict for every ingested file: clean.parquet and reports/clean.json."""
    started = time.monotonic()
    manifest = read_parquet(params.paths.interim / "ingest.parquet")
    items = list(zip(manifest["path"], manifest["sha256"], strict=True))
    settings = clean.check_settings(params)
    # One chunk is one task run: the bar and the progress artifact count photos, not chunk lines.
    quiet_task_runs(CHECK_TASK)
    progress = progress_artifact("clean-progress", "clean: files checked", len(items))
    # Verdicts the cache holds are read in one look-up; only the other files go to task runs (one per
    # chunk), so a night with a few new photos pays a task run per chunk of them, not per chunk of all.
    stored, todo = ([], items) if refresh else clean.stored_verdicts(items, settings, params.paths.cache)
    if stored:
        print(f"clean: {len(stored):,} verdict(s) from the cache, {len(todo):,} file(s) to decode")
    parts = chunks(todo, params.runner.chunk_size)
    raw = params.paths.raw.absolute()  # a worker resolves a relative path against its own folder
    rows = stored
    done = len(stored)
    progress(done)
    with (
        map_chunks(
            params,
            "clean",
            parts,
            check_photos,
            clean.judge_items,
            [raw / p[0][0] for p in parts],
            settings=settings,
            raw=raw,
        ) as run,
        tqdm(total=len(items), initial=done, desc="clean", unit="file", disable=None, leave=False) as bar,
    ):
        for finished in run:
            judged: clean.Judged = finished.result
            clean.store_judged(params.paths.cache, judged)  # this process alone writes the cache
            rows += judged.rows
            judged.thumbs = {}  # stored: not held until the end of the run
            done += len(judged.rows)
            bar.update(len(judged.rows))
            progress(done)
    progress(done, description=f"clean: {done:,} of {len(items):,} files checked")
    record_stage_run(params, "clean", {"runner": figures(run, params)})
    df = clean.table(rows, params.clean.flags)
    page = params.paths.reports / clean.REJECTED_PAGE
    try:
        clean.guard(df, params.clean.max_reject_fraction, page)
    except PawflowError:
        rejected_page(df, params, page)  # before the message that names it
        raise
    page.unlink(missing_ok=True)  # it described a run that failed: this one passed
    rep = clean.report(df)
    write_parquet(params.paths.interim / "clean.parquet", df)
    CLEAN.write(params.paths.reports, rep)
    rows_out = [*clean.summary_rows(rep), ["seconds", f"{time.monotonic() - started:.1f}"]]
    publish("clean", "clean: verdicts per file", ["", "count"], rows_out)
    return rep


if __name__ == "__main__":
    sys.exit(stage_main("clean", clean_flow))
