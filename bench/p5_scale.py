"""P5: 25,000 photos (built from the sample so that dedup keeps them) through ingest -> shard."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench import synth
from bench.common import SAMPLE, WORK, run, save, workspace

PHOTOS = 25_000


def main() -> tuple[dict, Path, Path]:
    source = WORK / "p5-source"
    shutil.rmtree(source, ignore_errors=True)
    synth.make(SAMPLE, source, PHOTOS, seed=5)
    ws = workspace("p5", source)
    t = run([sys.executable, "-m", "dvc", "repro", "shard"], ws)
    dedup = json.loads((ws / "reports/dedup.json").read_text())
    shard = json.loads((ws / "reports/shard.json").read_text())
    ok = t.seconds <= 300 and t.peak_rss_mb <= 1536
    result = save(
        5,
        f"{PHOTOS:,} photos ingest -> shard in {t.seconds:.0f}s, peak {t.peak_rss_mb:.0f} MB",
        "<= 5 minutes and <= 1.5 GB peak memory on 2 cores",
        ok,
        seconds=t.seconds,
        peak_rss_mb=t.peak_rss_mb,
        photos=PHOTOS,
        kept_after_dedup=dedup["kept"],
        duplicates=dedup["duplicate"],
        examples=shard["examples"],
        shards=shard["shards"],
        notes="dvc repro shard in a fresh workspace (4 stage processes, one Prefect server); peak memory is "
        "the largest process of the tree (wait4 ru_maxrss).",
    )
    return result, ws, source
