"""Shard: a leakage-safe, growth-stable train/val/test split, written as deterministic TFRecord shards.

The split works on duplicate groups (a group never straddles splits). Groups are taken in the order
of a salted hash of their representative and each goes to the split furthest below its target share
for its label (exact stratification). Every assignment is remembered in the split ledger, so a photo
that was assigned once keeps its split as the collection grows, and a new photo that joins an old
duplicate group follows that group.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
LEDGER_COLUMNS = ["sha256", "label", "split"]


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
    known = dict(zip(ledger["sha256"], ledger["split"], strict=True)) if ledger is not None else {}
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
    old = ledger[~ledger["sha256"].isin(rows["sha256"])] if ledger is not None else None
    fresh = rows[LEDGER_COLUMNS].drop_duplicates("sha256")
    new_ledger = pd.concat([x for x in (old, fresh) if x is not None and len(x)], ignore_index=True)
    new_ledger = new_ledger.sort_values("sha256", kind="stable").reset_index(drop=True)
    return rows, new_ledger, stats


def empty_splits(examples: pd.DataFrame, fractions: dict[str, float]) -> list[str]:
    """The splits asked for (fraction above 0) that got no photo: an error, never a silent empty split.
    A split is left empty on purpose by giving it the fraction 0 (only val may be 0)."""
    return [s for s in SPLITS if fractions[s] > 0 and not (examples["split"] == s).any()]


def plan_shards(examples: pd.DataFrame, split: str, shard_bytes: int, salt: str) -> list[pd.DataFrame]:
    """The kept photos of one split in a stable shuffled order, cut into equal shards near shard_bytes."""
    part = examples[examples["split"] == split].copy()
    part["order"] = [unit_hash(s, salt + ":order") for s in part["sha256"]]
    part = part.sort_values(["order", "path"], kind="stable").reset_index(drop=True)
    total = int(part["jpeg_bytes"].sum()) if len(part) else 0
    n = max(1, math.ceil(total / shard_bytes))
    n = min(n, max(1, len(part)))
    return [part.iloc[idx] for idx in np.array_split(np.arange(len(part)), n)]


def shard_name(split: str, index: int, count: int) -> str:
    """TFDS-style file names: train.tfrecord-00000-of-00004."""
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def counts_table(examples: pd.DataFrame, class_names: list[str]) -> dict[str, dict[str, int]]:
    return {
        split: {c: int(((examples["split"] == split) & (examples["label"] == c)).sum()) for c in class_names}
        for split in SPLITS
    }
