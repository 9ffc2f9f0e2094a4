"""Small DatasetInfo values for tests that need dataset_info.json without running shard."""

from __future__ import annotations

from tasks.photos.datasetinfo import DatasetInfo, ImageFormat, ShardFile, SplitFiles


def dataset_info(
    class_names: list[str],
    shards: dict[str, list[tuple[str, int]]],
    max_side: int = 224,
    jpeg_quality: int = 90,
) -> DatasetInfo:
    """classes, and per split its shard files as (file name, examples); what is not asked is empty."""
    splits = {
        split: SplitFiles(
            examples=sum(n for _, n in files),
            shards=[
                ShardFile(file=f, examples=n, bytes=0, sha256="", arrival=0, contents="") for f, n in files
            ],
        )
        for split, files in shards.items()
    }
    return DatasetInfo(
        class_names=class_names,
        num_classes=len(class_names),
        image=ImageFormat(encoding="jpeg", channels=3, max_side=max_side, jpeg_quality=jpeg_quality),
        features={},
        split_fractions={},
        counts={},
        splits=splits,
    )
