"""shard: split train/val/test without leakage and write deterministic TFRecord shards."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from prefect import flow, get_run_logger, task
from tqdm import tqdm

from flows.clean import check_settings
from flows.common import chunks, friendly, publish, record_stage_run, stage_main
from tasks import clean, shard, store
from tasks import tfrecord as tfr
from tasks.errors import PawflowError
from tasks.fileio import (
    atomic_dir,
    fingerprint,
    parquet_metadata,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet,
)
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
        have = store.get_thumb_sizes(con, list(keys))
    return [v for k, v in keys.items() if k not in have]


@dataclass
class Planned:
    """The shards of one split and arrival: reused as they are, or (files None) to be written."""

    split: str
    arrival: int
    part: pd.DataFrame
    contents: str
    files: list[dict] | None = None


def _intact(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def plan(examples: pd.DataFrame, params: Params, fp: str, class_names: list[str]) -> list[Planned]:
    """Every split's arrivals; those whose files the last run wrote with the same contents are reused
    (after checking their sha256), so a grown collection rewrites no old shard."""
    code = fingerprint(inspect.getsource(tfr))
    plans = [
        Planned(split, arrival, part, shard.contents_key(split, arrival, part, class_names, fp, code))
        for split in shard.SPLITS
        for arrival, part in shard.arrivals(examples, split, params.shard.salt)
    ]
    processed = params.paths.processed
    old: dict[str, list[dict]] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((processed / "dataset_info.json").read_text())
        for split in info["splits"].values():
            for f in split["shards"]:
                old.setdefault(f.get("contents", ""), []).append(f)
    for p in plans:
        files = old.get(p.contents)
        if files and all(_intact(processed / f["file"], f) for f in files):
            p.files = files
    return plans


@task(name="write-shards")
def write_shards(plans: list[Planned], sizes: dict[str, int], params: Params, fp: str, info: dict) -> dict:
    """Write the shards that are not reused into a fresh folder beside the reused ones (hard links to the
    same files), then swap it in with dataset_info.json."""
    s = params.shard
    index = {c: i for i, c in enumerate(info["class_names"])}
    info["splits"] = {split: {"examples": 0, "shards": []} for split in shard.SPLITS}
    todo = sum(len(p.part) for p in plans if p.files is None)
    with store.connect(params.paths.cache) as con, atomic_dir(params.paths.processed) as out:
        bar = tqdm(total=todo, desc="shard", unit="photo", disable=None, leave=False)  # terminals only
        for p in plans:
            entries = info["splits"][p.split]["shards"]
            if p.files is not None:
                for f in p.files:
                    _link_or_copy(params.paths.processed / f["file"], out / f["file"])
                    entries.append(f)
                continue
            part = p.part.assign(jpeg_bytes=[sizes[s_] for s_ in p.part["sha256"]])
            parts = shard.cut(part, s.shard_bytes)
            for k, piece in enumerate(parts):
                name = shard.shard_name(p.split, k, len(parts), p.arrival)
                records = []
                for batch in shard.iter_batches(list(piece.itertuples()), FETCH_BATCH):
                    thumbs = store.get_thumbs(con, [clean.cache_key(r.sha256, fp) for r in batch])
                    for r in batch:
                        jpeg = thumbs[clean.cache_key(r.sha256, fp)]
                        width, height = Image.open(io.BytesIO(jpeg)).size
                        records.append(
                            tfr.serialize(jpeg, height, width, index[r.label], r.label, r.sha256, r.path)
                        )
                    bar.update(len(batch))
                n = tfr.write(out / name, records)
                entries.append(
                    {
                        "file": name,
                        "examples": n,
                        "bytes": (out / name).stat().st_size,
                        "sha256": sha256_file(out / name),
                        "arrival": p.arrival,
                        "contents": p.contents,
                    }
                )
        for split in info["splits"].values():
            split["examples"] = int(sum(f["examples"] for f in split["shards"]))
        bar.close()
        write_json(out / "dataset_info.json", info)
    return info


def _link_or_copy(src: Path, dst: Path) -> None:
    """The same file under the new folder: a hard link (no bytes copied, DVC's state still knows it)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
    class_names = sorted(examples["label"].unique().tolist())
    info: dict = {
        "class_names": class_names,
        "num_classes": len(class_names),
        "image": {
            "encoding": "jpeg",
            "channels": 3,
            "max_side": params.shard.max_side,
            "jpeg_quality": params.shard.jpeg_quality,
        },
        "features": {name: desc for name, (_, desc) in tfr.SCHEMA.items()},
        "split_fractions": params.shard.split.as_dict(),
        "counts": shard.counts_table(examples, class_names),
    }
    plans = plan(examples, params, fp, class_names)
    if refresh:  # --refresh: write every shard again (same bytes) instead of reusing the last run's
        for p in plans:
            p.files = None
    # Only photos of shards to be written need their normalised image: reused shards read nothing.
    parts = [p.part for p in plans if p.files is None]
    todo = pd.concat(parts, ignore_index=True) if parts else examples.iloc[:0]
    reused = sum(len(p.files) for p in plans if p.files is not None)
    log.info("shard: %d shard file(s) reused unchanged; writing the shards of %d photo(s)", reused, len(todo))
    missing = [] if not refresh else list(zip(todo["path"], todo["sha256"], strict=True))
    missing = missing or _missing_thumbs(todo, params.paths.cache, fp)
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
        found = store.get_thumb_sizes(con, [clean.cache_key(s, fp) for s in todo["sha256"]])
    sizes = {s: found[clean.cache_key(s, fp)] for s in todo["sha256"] if clean.cache_key(s, fp) in found}
    lost = [p for p, s in zip(todo["path"], todo["sha256"], strict=True) if s not in sizes]
    if lost:
        raise PawflowError(
            f"shard: {len(lost)} kept photo(s) no longer decode, e.g. {lost[0]}.",
            "data/raw changed after clean ran: run `dvc repro` (or the pipeline) again.",
        )
    info = write_shards(plans, sizes, params, fp, info)
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
    }
    write_json(params.paths.reports / "shard.json", rep)
    # How this run met the ledger depends on the runs before it: run history, not a tracked output.
    record_stage_run(params, "shard", {"split_stability": asdict(stats)})
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
