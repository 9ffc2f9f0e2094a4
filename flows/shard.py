"""shard: split train/val/test without leakage and write deterministic TFRecord shards."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image
from prefect import flow, get_run_logger, task
from tqdm import tqdm

from flows.clean import check_settings
from flows.common import chunks, friendly, publish, stage_main
from tasks import clean, shard, store
from tasks import tfrecord as tfr
from tasks.errors import PawflowError
from tasks.fileio import atomic_dir, parquet_metadata, read_parquet, sha256_file, write_json, write_parquet
from tasks.images import CheckSettings
from tasks.params import Params

LEDGER = "split.parquet"
FETCH_BATCH = 256


@task(name="assign-splits")
def assign_splits(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, shard.SplitStats]:
    """Every non-conflict photo gets a split; the ledger keeps earlier assignments stable."""
    dd = read_parquet(params.paths.interim / "dedup.parquet")
    fractions = params.shard.split.as_dict()
    path = params.paths.interim / LEDGER
    ledger = None
    reset = False
    if path.exists():
        if shard.ledger_matches(parquet_metadata(path), fractions, params.shard.salt):
            ledger = read_parquet(path)
        else:
            reset = True
    rows, new_ledger, stats = shard.assign(dd, ledger, fractions, params.shard.salt)
    stats.ledger_reset = reset
    return rows, new_ledger, stats


@task(name="prepare-images")
def prepare_images(items: list[tuple[str, str]], settings: CheckSettings, raw: Path, cache_dir: Path) -> int:
    """Normalised JPEGs that the cache lacks (clean makes them; a deleted cache is rebuilt here)."""
    return len(clean.check_items(raw, items, settings, cache_dir, refresh=True))


def _missing_thumbs(kept: pd.DataFrame, cache_dir: Path, fp: str) -> list[tuple[str, str]]:
    keys = {clean.cache_key(s, fp): (p, s) for p, s in zip(kept["path"], kept["sha256"], strict=True)}
    with store.connect(cache_dir) as con:
        have = {k for batch in shard.iter_batches(list(keys), 10_000) for k in store.get_thumbs(con, batch)}
    return [v for k, v in keys.items() if k not in have]


@task(name="write-shards")
def write_shards(examples: pd.DataFrame, params: Params, fp: str) -> dict:
    """Write every split's shards into a fresh folder, then swap it in with dataset_info.json."""
    s = params.shard
    class_names = sorted(examples["label"].unique().tolist())
    index = {c: i for i, c in enumerate(class_names)}
    info: dict = {
        "class_names": class_names,
        "num_classes": len(class_names),
        "image": {"encoding": "jpeg", "channels": 3, "max_side": s.max_side, "jpeg_quality": s.jpeg_quality},
        "features": {name: desc for name, (_, desc) in tfr.SCHEMA.items()},
        "split_fractions": s.split.as_dict(),
        "counts": shard.counts_table(examples, class_names),
        "splits": {},
    }
    with store.connect(params.paths.cache) as con, atomic_dir(params.paths.processed) as out:
        bar = tqdm(total=len(examples), desc="shard", unit="photo", leave=False)
        for split in shard.SPLITS:
            parts = shard.plan_shards(examples, split, s.shard_bytes, s.salt)
            files = []
            for k, part in enumerate(parts):
                name = shard.shard_name(split, k, len(parts))
                records = []
                for batch in shard.iter_batches(list(part.itertuples()), FETCH_BATCH):
                    thumbs = store.get_thumbs(con, [clean.cache_key(r.sha256, fp) for r in batch])
                    for r in batch:
                        jpeg = thumbs[clean.cache_key(r.sha256, fp)]
                        width, height = Image.open(io.BytesIO(jpeg)).size
                        records.append(
                            tfr.serialize(jpeg, height, width, index[r.label], r.label, r.sha256, r.path)
                        )
                    bar.update(len(batch))
                n = tfr.write(out / name, records)
                files.append(
                    {
                        "file": name,
                        "examples": n,
                        "bytes": (out / name).stat().st_size,
                        "sha256": sha256_file(out / name),
                    }
                )
            info["splits"][split] = {"examples": int(sum(f["examples"] for f in files)), "shards": files}
        bar.close()
        write_json(out / "dataset_info.json", info)
    return info


@flow(name="shard", log_prints=True)
@friendly
def shard_flow(params: Params, refresh: bool = False) -> dict:
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
    examples = rows[rows["status"] == "kept"].copy()
    if examples["label"].nunique() < 2:
        raise PawflowError(
            "shard: fewer than two labels have photos left after clean and dedup.",
            "Look at reports/clean.json and reports/dedup.json.",
        )
    fractions = params.shard.split.as_dict()
    empty = shard.empty_splits(examples, fractions)
    if empty:
        per_split = ", ".join(f"{k} {int((examples['split'] == k).sum())}" for k in shard.SPLITS)
        raise PawflowError(
            f"shard: the {' and '.join(empty)} split got no photo ({per_split} photos over "
            f"{examples['label'].nunique()} labels; each label is split on its own, so a label with few "
            "photos fills train first). Nothing was written.",
            "Add photos per label, or lower the number of labels; to go without a validation split, "
            "set shard.split.val: 0 in params.yaml.",
        )
    settings = check_settings(params)
    fp = clean.settings_fingerprint(settings)
    missing = [] if not refresh else list(zip(examples["path"], examples["sha256"], strict=True))
    missing = missing or _missing_thumbs(examples, params.paths.cache, fp)
    if missing:
        log.info("preparing %d normalised image(s) missing from the cache", len(missing))
        futures = prepare_images.map(
            chunks(missing, params.runner.chunk_size),
            settings=settings,
            raw=params.paths.raw,
            cache_dir=params.paths.cache,
        )
        [f.result() for f in futures]
    with store.connect(params.paths.cache) as con:
        sizes = {
            k: len(v)
            for k, v in store.get_thumbs(con, [clean.cache_key(s, fp) for s in examples["sha256"]]).items()
        }
    lost = [
        p
        for p, s in zip(examples["path"], examples["sha256"], strict=True)
        if clean.cache_key(s, fp) not in sizes
    ]
    if lost:
        raise PawflowError(
            f"shard: {len(lost)} kept photo(s) no longer decode, e.g. {lost[0]}.",
            "data/raw changed after clean ran: run `dvc repro` (or the pipeline) again.",
        )
    examples["jpeg_bytes"] = [sizes[clean.cache_key(s, fp)] for s in examples["sha256"]]
    info = write_shards(examples, params, fp)
    write_parquet(
        params.paths.interim / LEDGER,
        ledger,
        metadata=shard.ledger_meta(params.shard.split.as_dict(), params.shard.salt),
    )
    rep = {
        "counts": info["counts"],
        "class_names": info["class_names"],
        "examples": {k: v["examples"] for k, v in info["splits"].items()},
        "shards": {k: len(v["shards"]) for k, v in info["splits"].items()},
        "split_stability": {
            "pinned_groups": stats.pinned_groups,
            "new_groups": stats.new_groups,
            "moved_photos": stats.moved_photos,
            "ledger_reset": stats.ledger_reset,
        },
    }
    write_json(params.paths.reports / "shard.json", rep)
    table = [
        [
            split,
            *(info["counts"][split][c] for c in info["class_names"]),
            info["splits"][split]["examples"],
            len(info["splits"][split]["shards"]),
        ]
        for split in shard.SPLITS
    ]
    table.append(["seconds", *([""] * len(info["class_names"])), f"{time.monotonic() - started:.1f}", ""])
    publish("shard", "shard: photos per split", ["split", *info["class_names"], "total", "shards"], table)
    return rep


if __name__ == "__main__":
    sys.exit(stage_main("shard", shard_flow))
