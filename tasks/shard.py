"""Shard: a leakage-safe, growth-stable train/val/test split, written as deterministic TFRecord shards.

The split works on duplicate groups (a group never straddles splits). Groups are taken in the order
of a salted hash of their representative and each goes to the split furthest below its target share
for its label (exact stratification). Every assignment is remembered in the split ledger, so a photo
that was assigned once keeps its split as the collection grows, and a new photo that joins an old
duplicate group follows that group.

The ledger also records each photo's arrival: 0 for the photos of the first run, then one more for each
run that brought photos the ledger had not seen. Shards are cut per split and arrival, so the photos of
earlier arrivals stay in the same shard files, byte for byte, while a collection grows: the shards are a
deterministic function of the ledger (its order of arrival), not of the final collection alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tasks import clean
from tasks.core.errors import PawflowError
from tasks.core.fileio import (
    atomic_dir,
    code_fingerprint,
    fingerprint,
    parquet_metadata,
    read_parquet,
    sha256_file,
)
from tasks.core.status import Status
from tasks.photos import store
from tasks.photos import tfrecord as tfr
from tasks.photos.datasetinfo import DatasetInfo, ImageFormat, ShardFile, SplitFiles
from tasks.photos.splitrule import SPLITS, next_split, too_few
from tasks.reports.reports import ShardReport

if TYPE_CHECKING:
    from tasks.core.params import Shard

LEDGER_COLUMNS = ["sha256", "label", "split", "arrival"]
LEDGER = "split.parquet"
# Normalised JPEGs fetched from the cache per query while shards are written.
FETCH_BATCH = 256


def unit_hash(key: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) for a key."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:15], 16) / 16**15


@dataclass
class SplitStats:
    pinned_groups: int = 0
    new_groups: int = 0
    moved_photos: int = 0
    ledger_reset: bool = False


def ledger_matches(meta: dict[str, str] | None, fractions: dict[str, float], salt: str) -> bool:
    """A ledger made with other fractions or salt is not reused (the split was redefined)."""
    if not meta:
        return False
    return meta.get("fractions") == repr(sorted(fractions.items())) and meta.get("salt") == salt


def ledger_meta(fractions: dict[str, float], salt: str) -> dict[str, str]:
    return {"fractions": repr(sorted(fractions.items())), "salt": salt}


def assign(
    photos: pd.DataFrame, ledger: pd.DataFrame | None, fractions: dict[str, float], salt: str
) -> tuple[pd.DataFrame, pd.DataFrame, SplitStats]:
    """Split every kept photo and duplicate (dedup rows: not those in label conflicts, excluded or
    quarantined); returns (photos + split, new ledger, stats). The ledger keeps every photo it ever
    split, by sha256, with its last label: a photo that leaves the collection (removed, excluded) and
    comes back returns to its split, and a relabelled one (moved to another class folder) keeps its split
    under its new label."""
    stats = SplitStats()
    rows = photos[photos["status"].isin([Status.KEPT, Status.DUPLICATE])]
    rows = rows.sort_values("path", kind="stable").reset_index(drop=True)
    if ledger is not None and "arrival" not in ledger:  # a ledger written before arrivals were recorded
        ledger = ledger.assign(arrival=0)
    known = dict(zip(ledger["sha256"], ledger["split"], strict=True)) if ledger is not None else {}
    arrived = dict(zip(ledger["sha256"], ledger["arrival"], strict=True)) if ledger is not None else {}
    this_arrival = max(arrived.values()) + 1 if arrived else 0
    # Per group (whole-table operations: a night costs no Python loop over the old groups): its label
    # (its first photo's, by path), and for groups with photos in the ledger, their split tally.
    labels = rows.groupby("group", sort=True)["label"].first().astype(str)
    counts: dict[str, dict[str, int]] = {label: dict.fromkeys(SPLITS, 0) for label in labels.unique()}
    ledgered = rows.assign(pinned=rows["sha256"].map(known)).dropna(subset=["pinned"])
    tally = (
        ledgered.groupby(["group", "pinned"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS))
    ).fillna(0)
    # Old photos keep their split; if old groups merged, the majority wins (ties: the first of SPLITS).
    chosen_old = tally.idxmax(axis=1)
    stats.moved_photos = int((tally.sum(axis=1) - tally.max(axis=1)).sum())
    stats.pinned_groups = len(chosen_old)
    group_split: dict[str, str] = dict(zip(chosen_old.index, chosen_old, strict=True))
    for (label, split), n in (
        pd.DataFrame({"label": labels[chosen_old.index], "split": chosen_old})
        .value_counts(sort=False)
        .items()
    ):
        counts[label][split] += int(n)
    fresh_groups = rows[~rows["group"].isin(group_split)].groupby("group", sort=True)["sha256"].min()
    new_groups = [(labels[gid], unit_hash(sha, salt), str(gid)) for gid, sha in fresh_groups.items()]
    for label, _, gid in sorted(new_groups):
        c = counts[label]
        chosen = next_split(c, fractions)
        group_split[gid] = chosen
        c[chosen] += 1
        stats.new_groups += 1
    rows["split"] = rows["group"].map(group_split)
    rows["arrival"] = [int(arrived.get(s, this_arrival)) for s in rows["sha256"]]
    old = ledger[~ledger["sha256"].isin(rows["sha256"])] if ledger is not None else None
    fresh = rows[LEDGER_COLUMNS].drop_duplicates("sha256")
    new_ledger = pd.concat([x for x in (old, fresh) if x is not None and len(x)], ignore_index=True)
    new_ledger = new_ledger.sort_values("sha256", kind="stable").reset_index(drop=True)
    new_ledger = new_ledger.astype({"arrival": "int64"})
    return rows, new_ledger, stats


def short_classes(examples: pd.DataFrame, fractions: dict[str, float]) -> dict[str, dict[str, int]]:
    """The labels that have no kept photo in a split asked for (fraction above 0), with their photos per
    split: an error, never a silent empty split. A split is left empty on purpose by giving it the
    fraction 0 (only val may be 0)."""
    per_split = examples.groupby(["label", "split"]).size().unstack(fill_value=0)
    per_split = per_split.reindex(columns=list(SPLITS), fill_value=0)
    wanted = [s for s in SPLITS if fractions[s] > 0]
    short = per_split[(per_split[wanted] == 0).any(axis=1)]
    return {str(label): {s: int(row[s]) for s in SPLITS} for label, row in short.iterrows()}


def arrivals(examples: pd.DataFrame, split: str, salt: str) -> list[tuple[int, pd.DataFrame]]:
    """The kept photos of one split per arrival (oldest first), each in a stable shuffled order.

    A split without photos still gets one (empty) group, so every split has at least one shard.
    """
    part = examples[examples["split"] == split].copy()
    if "arrival" not in part:
        part["arrival"] = 0
    part["order"] = [unit_hash(s, salt + ":order") for s in part["sha256"]]
    part = part.sort_values(["arrival", "order", "path"], kind="stable").reset_index(drop=True)
    if part.empty:
        return [(0, part)]
    return [(int(a), g.reset_index(drop=True)) for a, g in part.groupby("arrival", sort=True)]


def contents_key(split: str, arrival: int, part: pd.DataFrame, class_names: list[str], *codes: str) -> str:
    """What the shard files of one split and arrival hold: their photos in order, the label indices,
    and `codes` (the image settings' and the record writer's fingerprints). Equal keys, equal bytes."""
    photos = list(zip(part["sha256"], part["path"], part["label"], strict=True))
    return fingerprint(split, arrival, class_names, photos, codes)


def cut(part: pd.DataFrame, shard_bytes: int) -> list[pd.DataFrame]:
    """Consecutive equal parts near shard_bytes each (needs jpeg_bytes)."""
    total = int(part["jpeg_bytes"].sum()) if len(part) else 0
    n = max(1, math.ceil(total / shard_bytes))
    n = min(n, max(1, len(part)))
    return [part.iloc[idx] for idx in np.array_split(np.arange(len(part)), n)]


def plan_shards(examples: pd.DataFrame, split: str, shard_bytes: int, salt: str) -> list[pd.DataFrame]:
    """The kept photos of one split, per arrival in a stable shuffled order, cut near shard_bytes."""
    return [p for _, part in arrivals(examples, split, salt) for p in cut(part, shard_bytes)]


def shard_name(split: str, index: int, count: int, arrival: int = 0) -> str:
    """TFDS-style file names: train.tfrecord-00000-of-00004 for the first arrival;
    train.arrival-00003.tfrecord-00000-of-00001 for the photos of the third run that brought new ones."""
    prefix = split if arrival == 0 else f"{split}.arrival-{arrival:05d}"
    return f"{prefix}.tfrecord-{index:05d}-of-{count:05d}"


def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def counts_table(examples: pd.DataFrame, class_names: list[str]) -> dict[str, dict[str, int]]:
    return {
        split: {c: int(((examples["split"] == split) & (examples["label"] == c)).sum()) for c in class_names}
        for split in SPLITS
    }


def assign_splits(
    interim: Path, fractions: dict[str, float], salt: str
) -> tuple[pd.DataFrame, pd.DataFrame, SplitStats]:
    """Every kept photo and duplicate of dedup.parquet gets a split; the ledger in interim keeps earlier
    assignments stable (one made with other fractions or salt is dropped: ledger_reset)."""
    dd = read_parquet(interim / "dedup.parquet")
    path = interim / LEDGER
    ledger = None
    reset = False
    if path.exists():
        if ledger_matches(parquet_metadata(path), fractions, salt):
            ledger = read_parquet(path)
        else:
            reset = True
    rows, new_ledger, stats = assign(dd, ledger, fractions, salt)
    stats.ledger_reset = reset
    return rows, new_ledger, stats


def kept_examples(rows: pd.DataFrame, fractions: dict[str, float]) -> pd.DataFrame:
    """The kept photos with their split; refuses fewer than two labels or a split asked for left empty."""
    examples = rows[rows["status"] == Status.KEPT].copy()
    if examples["label"].nunique() < 2:
        raise PawflowError(
            "shard: fewer than two labels have photos left after clean and dedup.",
            "Look at reports/clean.json and reports/dedup.json.",
        )
    short = short_classes(examples, fractions)
    if short:
        counts = {
            label: f"{sum(n.values())} ({', '.join(f'{s} {n[s]}' for s in SPLITS)})"
            for label, n in short.items()
        }
        raise too_few(counts, fractions, "photos left after clean and dedup (per split)", "shard")
    return examples


def dataset_info(examples: pd.DataFrame, class_names: list[str], s: Shard) -> DatasetInfo:
    """dataset_info.json before its shards are written: classes, image settings, record schema, counts."""
    return DatasetInfo(
        class_names=class_names,
        num_classes=len(class_names),
        image=ImageFormat(encoding="jpeg", channels=3, max_side=s.max_side, jpeg_quality=s.jpeg_quality),
        features={name: desc for name, (_, desc) in tfr.SCHEMA.items()},
        split_fractions=s.split.as_dict(),
        counts=counts_table(examples, class_names),
    )


def missing_thumbs(kept: pd.DataFrame, cache_dir: Path, fp: str) -> list[tuple[str, str]]:
    """(path, sha256) of the photos whose normalised JPEG the cache lacks."""
    keys = {clean.cache_key(s, fp): (p, s) for p, s in zip(kept["path"], kept["sha256"], strict=True)}
    with store.connect(cache_dir) as con:
        have = store.get_thumb_sizes(con, list(keys))
    return [v for k, v in keys.items() if k not in have]


def thumb_sizes(todo: pd.DataFrame, cache_dir: Path, fp: str) -> dict[str, int]:
    """Bytes of each photo's normalised JPEG by sha256; refuses a photo the cache still lacks."""
    with store.connect(cache_dir) as con:
        found = store.get_thumb_sizes(con, [clean.cache_key(s, fp) for s in todo["sha256"]])
    sizes = {s: found[clean.cache_key(s, fp)] for s in todo["sha256"] if clean.cache_key(s, fp) in found}
    lost = [p for p, s in zip(todo["path"], todo["sha256"], strict=True) if s not in sizes]
    if lost:
        raise PawflowError(
            f"shard: {len(lost)} kept photo(s) no longer decode, e.g. {lost[0]}.",
            "data/raw changed after clean ran: run `dvc repro` (or the pipeline) again.",
        )
    return sizes


@dataclass
class Planned:
    """The shards of one split and arrival: reused as they are, or (files None) to be written."""

    split: str
    arrival: int
    part: pd.DataFrame
    contents: str
    files: list[ShardFile] | None = None


def _intact(path: Path, entry: ShardFile) -> bool:
    return path.is_file() and path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256


def plan(
    examples: pd.DataFrame, processed: Path, salt: str, fp: str, class_names: list[str]
) -> list[Planned]:
    """Every split's arrivals; those whose files the last run wrote with the same contents are reused
    (after checking their sha256), so a grown collection rewrites no old shard."""
    code = code_fingerprint(tfr)
    plans = [
        Planned(split, arrival, part, contents_key(split, arrival, part, class_names, fp, code))
        for split in SPLITS
        for arrival, part in arrivals(examples, split, salt)
    ]
    old: dict[str, list[ShardFile]] = {}
    with contextlib.suppress(OSError, ValueError):  # none yet, or unreadable: nothing is reused
        for split in DatasetInfo.read(processed).splits.values():
            for f in split.shards:
                old.setdefault(f.contents, []).append(f)
    for p in plans:
        files = old.get(p.contents)
        if files and all(_intact(processed / f.file, f) for f in files):
            p.files = files
    return plans


def write_shards(
    plans: list[Planned],
    sizes: dict[str, int],
    processed: Path,
    cache_dir: Path,
    shard_bytes: int,
    fp: str,
    info: DatasetInfo,
) -> DatasetInfo:
    """Write the shards that are not reused into a fresh folder beside the reused ones (hard links to the
    same files), then swap it in with dataset_info.json; returns it with its splits."""
    index = {c: i for i, c in enumerate(info.class_names)}
    shards: dict[str, list[ShardFile]] = {split: [] for split in SPLITS}
    todo = sum(len(p.part) for p in plans if p.files is None)
    with store.connect(cache_dir) as con, atomic_dir(processed) as out:
        bar = tqdm(total=todo, desc="shard", unit="photo", disable=None, leave=False)  # terminals only
        for p in plans:
            entries = shards[p.split]
            if p.files is not None:
                for f in p.files:
                    _link_or_copy(processed / f.file, out / f.file)
                    entries.append(f)
                continue
            part = p.part.assign(jpeg_bytes=[sizes[s_] for s_ in p.part["sha256"]])
            parts = cut(part, shard_bytes)
            for k, piece in enumerate(parts):
                name = shard_name(p.split, k, len(parts), p.arrival)
                records = []
                for batch in iter_batches(list(piece.itertuples()), FETCH_BATCH):
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
                    ShardFile(
                        file=name,
                        examples=n,
                        bytes=(out / name).stat().st_size,
                        sha256=sha256_file(out / name),
                        arrival=p.arrival,
                        contents=p.contents,
                    )
                )
        splits = {k: SplitFiles(examples=sum(f.examples for f in v), shards=v) for k, v in shards.items()}
        info = info.model_copy(update={"splits": splits})
        bar.close()
        info.write(out)
    return info


def _link_or_copy(src: Path, dst: Path) -> None:
    """The same file under the new folder: a hard link (no bytes copied, DVC's state still knows it)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def report(info: DatasetInfo) -> ShardReport:
    """reports/shard.json: photos per split and class, examples and shard files per split."""
    return {
        "counts": info.counts,
        "class_names": info.class_names,
        "examples": {k: v.examples for k, v in info.splits.items()},
        "shards": {k: len(v.shards) for k, v in info.splits.items()},
    }
