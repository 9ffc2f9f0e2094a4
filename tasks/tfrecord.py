"""The TFRecord schema, defined once: the writer and the parser side by side."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf

# feature name -> (dtype, what it holds)
SCHEMA: dict[str, tuple[tf.dtypes.DType, str]] = {
    "image/encoded": (tf.string, "the photo as baseline RGB JPEG, longer side <= max_side"),
    "image/height": (tf.int64, "height of the encoded image"),
    "image/width": (tf.int64, "width of the encoded image"),
    "label": (tf.int64, "class index into dataset_info.json class_names"),
    "label/name": (tf.string, "class name"),
    "sha256": (tf.string, "sha256 of the original file's bytes"),
    "path": (tf.string, "the original file, <label>/<name> under data/raw"),
}


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def serialize(
    jpeg: bytes, height: int, width: int, label: int, label_name: str, sha256: str, path: str
) -> bytes:
    """One example, as written into a shard."""
    feature = {
        "image/encoded": _bytes(jpeg),
        "image/height": _int(height),
        "image/width": _int(width),
        "label": _int(label),
        "label/name": _bytes(label_name.encode()),
        "sha256": _bytes(sha256.encode()),
        "path": _bytes(path.encode("utf-8")),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


FEATURE_SPEC = {name: tf.io.FixedLenFeature([], dtype) for name, (dtype, _) in SCHEMA.items()}


def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Inverse of serialize (inside tf.data)."""
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def write(path: Path, records: Iterable[bytes]) -> int:
    """Write serialized examples to one TFRecord file; returns how many."""
    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
            n += 1
    return n


def read(files: list[Path]) -> tf.data.Dataset:
    """Parsed examples from shard files, in file order."""
    return tf.data.TFRecordDataset([str(f) for f in files]).map(parse)
