"""The quality flags on real photos: how many each flag marks, the measures behind them, and their cost.

python -m bench.flags            (about 5 minutes of one core here; writes bench/results/flags.json)

Every file of petimages-sample and petimages-16k is judged by clean's own check (the check of one file
that the clean stage runs, with params.yaml's clean, shard and dedup settings), in this one process, and
the shipped `clean.flags` limits are applied as clean applies them (clean.parquet's `flags` column). For
each collection the results file holds the photos kept, each flag's count and share, the extremes of each
measure among the kept photos (with the file that has it) and the median entropy. The cost: the CPU time
of the whole check of a file and of the quality measures alone (taken again on the photo as the shard
stage stores it), per photo, over the first COST_PHOTOS photos of the sample. docs/reports.md shows the
table `python -m bench.tables` renders from it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from PIL import Image

from bench.common import PETIMAGES_16K, RESULTS, ROOT, SAMPLE, measured, source_files, write_result
from tasks import clean
from tasks.core.params import load_params
from tasks.photos import images

COLLECTIONS = {"petimages-sample": SAMPLE, "petimages-16k": PETIMAGES_16K}
COST_PHOTOS = 1000  # photos of the sample whose check and measures are timed one by one
# The measure of each flag, and whether the flag marks the low end of it (False: the high end).
LOW_END = {"grey_std": True, "grey_p99": True, "grey_p05": False, "sharpness": True, "entropy": True}


def judge(folder: Path, settings: images.CheckSettings) -> list[dict]:
    """clean.parquet's rows for every file of a collection, as the clean stage writes them."""
    rows = []
    for path in source_files(folder):
        check, _ = images.check_file(path, None, settings)
        rows.append({"path": path.relative_to(folder).as_posix(), **check.record()})
    for row in rows:
        row["label"] = row["path"].split("/", 1)[0]
    return rows


def summary(rows: list[dict], limits: object) -> dict:
    """Counts and shares per flag, and the extremes of each measure, among the kept photos."""
    df = clean.table(rows, limits)
    kept = df[df["status"] == "kept"]
    per_flag = {flag: int(hits.sum()) for flag, hits in clean.flagged(df, limits).items()}
    extremes = {}
    for column, low in LOW_END.items():
        at = kept[column].idxmin() if low else kept[column].idxmax()
        extremes[column] = {"value": float(kept.at[at, column]), "path": kept.at[at, "path"], "low_end": low}
    return {
        "files": len(df),
        "kept": len(kept),
        "per_flag": per_flag,
        "any": int((kept["flags"] != "").sum()),
        "extremes": extremes,
        "entropy_median": float(kept["entropy"].median()),
    }


def cost(folder: Path, settings: images.CheckSettings) -> dict:
    """CPU milliseconds per photo: the whole check of the file, and the quality measures alone."""
    checks, measures = [], []
    for path in source_files(folder)[:COST_PHOTOS]:
        start = time.process_time()
        _, shard_jpeg = images.check_file(path, None, settings)
        checks.append(time.process_time() - start)
        if shard_jpeg is None:
            continue
        rgb = Image.open(io.BytesIO(shard_jpeg)).convert("RGB")
        start = time.process_time()
        images.measure_quality(rgb)
        measures.append(time.process_time() - start)
    return {
        "photos": len(checks),
        "check_ms_median": round(1000 * statistics.median(checks), 3),
        "measures_ms_median": round(1000 * statistics.median(measures), 3),
        "clock": "time.process_time, one photo at a time, one process",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.flags", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    settings = clean.check_settings(params)
    limits = params.clean.flags
    started = time.monotonic()
    result: dict = {
        "benchmark": "flags",
        "limits": limits.model_dump(mode="json"),
        "max_side": settings.max_side,
        "collections": {},
    }
    for name, folder in COLLECTIONS.items():
        result["collections"][name] = summary(judge(folder, settings), limits)
        print(f"{name}: {result['collections'][name]['any']} flagged", flush=True)
    result["cost"] = cost(SAMPLE, settings)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    result["measured"] = measured()
    write_result(RESULTS / "flags.json", result)
    return result


if __name__ == "__main__":
    main()
