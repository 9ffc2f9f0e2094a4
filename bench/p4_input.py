"""P4: images/s delivered by pawflow's training input pipeline vs keras.utils.image_dataset_from_directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import WORK, save


def throughput(ds, epochs: int = 2) -> float:
    """Images per second over the last of `epochs` full passes (the first warms up)."""
    rate = 0.0
    for _ in range(epochs):
        n, started = 0, time.monotonic()
        for images, _ in ds:
            n += int(images.shape[0])
        rate = n / (time.monotonic() - started)
    return rate


def kept_photo_tree(ws: Path, dest: Path) -> int:
    """The cleaned, deduplicated train photos as <label>/<file> symlinks (what the baseline reads)."""
    import pandas as pd

    from tasks.core.status import Status

    dd = pd.read_parquet(ws / "data/interim/dedup.parquet")
    split = pd.read_parquet(ws / "data/interim/split.parquet")
    kept = dd[dd["status"] == Status.KEPT].merge(split[["sha256", "split"]], on="sha256")
    kept = kept[kept["split"] == "train"]
    for path in kept["path"]:
        link = dest / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((ws / "data/raw" / path).resolve(), link)
    return len(kept)


def main(ws: Path) -> dict:
    import keras
    import tensorflow as tf

    from tasks import train
    from tasks.core.params import load_params
    from tasks.photos.datasetinfo import DatasetInfo

    params = load_params(ws / "params.yaml")
    cfg = params.train
    info = DatasetInfo.read(ws / "data/processed")
    n = info.examples("train")
    ours = train.make_dataset(
        train.split_files(ws / "data/processed", info, "train"),
        num_classes=info.num_classes,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        shuffled=train.Shuffled(cfg.seed, cfg.shuffle_buffer, cfg.augment),
        examples=n,
    )
    ours_ips = throughput(ours)
    tree = WORK / "p4-photos"
    count = kept_photo_tree(ws, tree)
    # The Keras example's pipeline: image_dataset_from_directory + its augmentation layers + prefetch.
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = keras.utils.image_dataset_from_directory(
        str(tree),
        image_size=(cfg.image_size, cfg.image_size),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        verbose=False,
    )
    plain_ips = throughput(base.prefetch(tf.data.AUTOTUNE))  # what the seed article fed its model
    augmented = base.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    base_ips = throughput(augmented.prefetch(tf.data.AUTOTUNE))
    model = train.build_and_compile(cfg, info.num_classes, steps_per_epoch=100)
    images, targets = next(iter(ours))
    model.train_on_batch(images, targets)
    steps, started = 20, time.monotonic()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    step_ips = steps * int(images.shape[0]) / (time.monotonic() - started)
    ratio = ours_ips / base_ips
    return save(
        4,
        f"input pipeline {ours_ips:.0f} img/s = {ratio:.1f}x image_dataset_from_directory + augmentation "
        f"({base_ips:.0f}), {ours_ips / plain_ips:.1f}x without ({plain_ips:.0f}); training consumes "
        f"{step_ips:.0f} img/s",
        ">= 5x image_dataset_from_directory; input never the bottleneck",
        ratio >= 5 and ours_ips > step_ips,
        pawflow_images_per_s=ours_ips,
        baseline_augmented_images_per_s=base_ips,
        baseline_plain_images_per_s=plain_ips,
        ratio=ratio,
        ratio_vs_plain=ours_ips / plain_ips,
        train_step_images_per_s=step_ips,
        input_over_training=ours_ips / step_ips,
        photos=count,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        notes="pawflow: shards -> shuffle -> decode + resize and flip/rotate/zoom/shift in one resampling + "
        "contrast -> batch -> prefetch; baseline: image_dataset_from_directory on the same cleaned train "
        "photos, plain and with the Keras example's RandomFlip + RandomRotation; second pass timed.",
    )
