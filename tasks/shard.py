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

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.fileio import fingerprint

SPLITS = ("train", "val", "test")
LEDGER_COLUMNS = ["sha256", "label", "split", "arrival"]


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
    return (
        bool(meta) and meta.get("fractions") == repr(sorted(fractions.items())) and meta.get("salt") == salt
    )


def ledger_meta(fractions: dict[str, float], salt: str) -> dict[str, str]:
    return {"fractions": repr(sorted(fractions.items())), "salt": salt}


def assign(
    photos: pd.DataFrame, ledger: pd.DataFrame | None, fractions: dict[str, float], salt: str
) -> tuple[pd.DataFrame, pd.DataFrame, SplitStats]:
    """Split every non-conflict photo (dedup rows); returns (photos + split, new ledger, stats)."""
    stats = SplitStats()
    rows = photos[photos["status"] != "conflict"].sort_values("path", kind="stable").reset_index(drop=True)
    if ledger is not None and "arrival" not in ledger:  # a ledger written before arrivals were recorded
        ledger = ledger.assign(arrival=0)
    known = dict(zip(ledger["sha256"], ledger["split"], strict=True)) if ledger is not None else {}
    arrived = dict(zip(ledger["sha256"], ledger["arrival"], strict=True)) if ledger is not None else {}
    this_arrival = max(arrived.values()) + 1 if arrived else 0
    group_split: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    new_groups: list[tuple[str, float, str]] = []
    for gid, g in rows.groupby("group", sort=True):
        label = str(g["label"].iloc[0])
        counts.setdefault(label, dict.fromkeys(SPLITS, 0))
        pinned = [known[s] for s in g["sha256"] if s in known]
        if pinned:
            # Old photos keep their split; if old groups merged, the majority wins.
            tally = {s: pinned.count(s) for s in SPLITS}
            chosen = max(SPLITS, key=lambda s: (tally[s], -SPLITS.index(s)))
            stats.moved_photos += sum(1 for p in pinned if p != chosen)
            group_split[gid] = chosen
            counts[label][chosen] += 1
            stats.pinned_groups += 1
        else:
            new_groups.append((label, unit_hash(min(g["sha256"]), salt), str(gid)))
    for label, _, gid in sorted(new_groups):
        c = counts[label]
        n = sum(c.values()) + 1
        chosen = max(SPLITS, key=lambda s: (fractions[s] * n - c[s], -SPLITS.index(s)))
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


def empty_splits(examples: pd.DataFrame, fractions: dict[str, float]) -> list[str]:
    """The splits asked for (fraction above 0) that got no photo: an error, never a silent empty split.
    A split is left empty on purpose by giving it the fraction 0 (only val may be 0)."""
    return [s for s in SPLITS if fractions[s] > 0 and not (examples["split"] == s).any()]


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
