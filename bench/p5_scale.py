"""P5: the real collection, petimages-16k (15,989 photos, 180 x 180), through `dvc repro shard` from
scratch (a fresh workspace: cold caches, no Prefect server running), as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import stagesplit
from bench.common import PETIMAGES_16K, WORK, image_files, link_files, run, run_stamped, save, workspace
from tasks.reports.reports import DEDUP, SHARD

MAX_SECONDS = 300
MAX_RSS_MB = 1536


def stop_background_server(ws: Path) -> None:
    """The workspace's background Prefect server, stopped (the next run starts cold, as a night does)."""
    run([sys.executable, "-m", "flows.server", "stop"], ws, check=False)


def main() -> tuple[dict, Path, Path]:
    source = WORK / "p5-source"
    if source.exists():
        import shutil

        shutil.rmtree(source)
    photos = link_files(image_files(PETIMAGES_16K), PETIMAGES_16K, source)
    ws = workspace("p5", source)
    t, lines = run_stamped([sys.executable, "-m", "dvc", "repro", "shard"], ws)
    stop_background_server(ws)
    split = stagesplit.split(lines, t.seconds)
    assert {"ingest", "clean", "dedup", "shard"} <= split["stages"].keys(), split
    dedup, shard = DEDUP.read(ws / "reports"), SHARD.read(ws / "reports")
    ok = t.seconds <= MAX_SECONDS and t.peak_rss_mb <= MAX_RSS_MB
    result = save(
        5,
        f"{len(photos):,} real photos (petimages-16k) ingest -> shard in {t.seconds:.0f}s, peak "
        f"{t.peak_rss_mb:.0f} MB",
        "<= 5 minutes and <= 1.5 GB peak memory on 2 cores",
        ok,
        seconds=t.seconds,
        peak_rss_mb=t.peak_rss_mb,
        photos=len(photos),
        kept_after_dedup=dedup["kept"],
        duplicates=dedup["duplicate"],
        examples=shard["examples"],
        shards=shard["shards"],
        where_the_seconds_went=stagesplit.summary(split),
        by_stage=split,
        notes="dvc repro shard in a fresh workspace (cold caches, the background Prefect server started by "
        "the first stage process); source: hard links to ../shared/datasets/petimages-16k under "
        "bench/work. Peak memory is the largest process of the tree (wait4 ru_maxrss). by_stage: from the "
        "time-stamped output lines (bench/stagesplit.py).",
    )
    return result, ws, source
