"""The training input pipeline: records drawn from shard files in proportion to their size."""

from __future__ import annotations

from pathlib import Path

import imagegen
import numpy as np

from tasks import tfrecord, train


def shard(path: Path, name: str, count: int) -> Path:
    jpeg = imagegen.jpeg(0, (16, 16))
    tfrecord.write(
        path, [tfrecord.serialize(jpeg, 16, 16, 0, "Cat", str(i), f"{name}/{i}") for i in range(count)]
    )
    return path


def epoch_order(files: list[Path], sizes: list[int], seed: int) -> list[str]:
    """The paths of one training epoch's records, in the order training reads them (before the
    shuffle buffer, which only mixes neighbours)."""
    records = train._records(files, sizes, training=True, seed=seed).map(tfrecord.parse)
    return [ex["path"].numpy().decode() for ex in records]


def test_a_small_new_shard_is_spread_over_the_epoch(tmp_path: Path):
    files = [shard(tmp_path / "old.tfrecord", "old", 180), shard(tmp_path / "new.tfrecord", "new", 20)]
    order = epoch_order(files, [180, 20], seed=3)
    assert sorted(order) == sorted([f"old/{i}" for i in range(180)] + [f"new/{i}" for i in range(20)])
    where = np.array([i for i, p in enumerate(order) if p.startswith("new/")])
    # Interleaved file by file, the 20 new records would all come in the first 40; drawn in proportion
    # to the files' sizes, they spread over the epoch.
    assert where.max() > 100 and 60 < where.mean() < 140, where
    assert epoch_order(files, [180, 20], seed=3) == order  # the same seed, the same order


def test_a_single_shard_is_read_in_file_order(tmp_path: Path):
    files = [shard(tmp_path / "only.tfrecord", "only", 30)]
    assert epoch_order(files, [30], seed=3) == [f"only/{i}" for i in range(30)]
