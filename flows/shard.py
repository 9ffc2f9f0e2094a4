"""shard: split train/val/test without leakage and write deterministic TFRecord shards."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import chunks, friendly, publish, record_stage_run, stage_main, stage_run_name
from flows.mapping import figures, map_chunks
from tasks import clean, shard
from tasks.core.fileio import write_parquet
from tasks.core.params import Params
from tasks.photos.datasetinfo import DatasetInfo
from tasks.photos.images import CheckSettings
from tasks.reports.reports import SHARD, ShardReport


@task(name="assign-splits")
def assign_splits(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, shard.SplitStats]:
    """Every kept photo and duplicate gets a split; the ledger keeps earlier assignments stable."""
    return shard.assign_splits(params.paths.interim, params.shard.split.as_dict(), params.shard.salt)


@task(name="prepare-images", cache_policy=NO_CACHE, persist_result=False)
def prepare_images(items: list[tuple[str, str]], settings: CheckSettings, raw: Path) -> clean.Judged:
    """Normalised JPEGs that the cache lacks (clean makes them; a deleted cache is rebuilt here); the flow
    stores them."""
    return clean.judge_items(items, settings, raw)


@task(name="write-shards")
def write_shards(
    plans: list[shard.Planned], sizes: dict[str, int], params: Params, fp: str, info: DatasetInfo
) -> DatasetInfo:
    """Write the shards that are not reused into a fresh folder beside the reused ones (hard links to the
    same files), then swap it in with dataset_info.json."""
    p = params.paths
    return shard.write_shards(plans, sizes, p.processed, p.cache, params.shard.shard_bytes, fp, info)


@flow(name="shard", flow_run_name=stage_run_name, log_prints=True)
@friendly
def shard_flow(params: Params, refresh: bool = False) -> ShardReport:
    """Split, then write TFRecord shards and data/processed/dataset_info.json."""
    started = time.monotonic()
    log = get_run_logger()
    rows, ledger, stats = assign_splits(params)
    if stats.ledger_reset:
        log.warning("shard.split or shard.salt changed: the split was made again from scratch")
    if stats.moved_photos:
        log.warning(
            "%d photo(s) changed split because new photos joined their duplicate groups", stats.moved_photos
        )
    examples = shard.kept_examples(rows, params.shard.split.as_dict())
    settings = clean.check_settings(params)
    fp = clean.settings_fingerprint(settings)
    class_names = sorted(examples["label"].unique().tolist())
    info = shard.dataset_info(examples, class_names, params.shard)
    plans = shard.plan(examples, params.paths.processed, params.shard.salt, fp, class_names)
    if refresh:  # --refresh: write every shard again (same bytes) instead of reusing the last run's
        for p in plans:
            p.files = None
    # Only photos of shards to be written need their normalised image: reused shards read nothing.
    parts = [p.part for p in plans if p.files is None]
    todo = pd.concat(parts, ignore_index=True) if parts else examples.iloc[:0]
    reused = sum(len(p.files) for p in plans if p.files is not None)
    log.info("shard: %d shard file(s) reused unchanged; writing the shards of %d photo(s)", reused, len(todo))
    missing = [] if not refresh else list(zip(todo["path"], todo["sha256"], strict=True))
    missing = missing or shard.missing_thumbs(todo, params.paths.cache, fp)
    mapped = None
    if missing:
        log.info("preparing %d normalised image(s) missing from the cache", len(missing))
        parts = chunks(missing, params.runner.chunk_size)
        raw = params.paths.raw.absolute()  # a worker resolves a relative path against its own folder
        samples = [raw / p[0][0] for p in parts]
        with map_chunks(
            params, "shard", parts, prepare_images, clean.judge_items, samples, settings=settings, raw=raw
        ) as run:
            for n, finished in enumerate(run, 1):
                judged: clean.Judged = finished.result
                clean.store_judged(params.paths.cache, judged)  # this process alone writes the cache
                on = f" on {finished.worker}" if finished.worker else ""
                log.info(
                    "shard: chunk %d of %d prepared%s (%d image(s)); %d of %d chunk(s) done",
                    finished.index + 1,
                    len(parts),
                    on,
                    len(judged.thumbs),
                    n,
                    len(parts),
                )
                judged.thumbs = {}
        mapped = figures(run, params)
    sizes = shard.thumb_sizes(todo, params.paths.cache, fp)
    info = write_shards(plans, sizes, params, fp, info)
    write_parquet(
        params.paths.interim / shard.LEDGER,
        ledger,
        metadata=shard.ledger_meta(params.shard.split.as_dict(), params.shard.salt),
    )
    rep = shard.report(info)
    SHARD.write(params.paths.reports, rep)
    # How this run met the ledger depends on the runs before it: run history, not a tracked output.
    record_stage_run(
        params, "shard", {"split_stability": asdict(stats), **({"runner": mapped} if mapped else {})}
    )
    table = [
        [
            split,
            *(info.counts[split][c] for c in info.class_names),
            info.splits[split].examples,
            len(info.splits[split].shards),
        ]
        for split in shard.SPLITS
    ]
    table.append(["seconds", *([""] * len(info.class_names)), f"{time.monotonic() - started:.1f}", ""])
    publish("shard", "shard: photos per split", ["split", *info.class_names, "total", "shards"], table)
    return rep


if __name__ == "__main__":
    sys.exit(stage_main("shard", shard_flow))
