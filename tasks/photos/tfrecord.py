"""The TFRecord schema, defined once: the writer and the parser side by side.

Writing needs no TensorFlow (importing it costs ~9 s and ~700 MB here, more than writing the shards):
examples are `tf.train.Example` messages built by the protobuf runtime from a private descriptor pool
(same wire format, so TensorFlow reads them), framed as TFRecords with the CRC32C TensorFlow checks.
Reading (training, evaluation) uses TensorFlow itself. tests/test_flows_data.py checks the round trip.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# feature name -> (kind, what it holds)
SCHEMA: dict[str, tuple[str, str]] = {
    "image/encoded": ("bytes", "the photo as baseline RGB JPEG, longer side <= max_side"),
    "image/height": ("int64", "height of the encoded image"),
    "image/width": ("int64", "width of the encoded image"),
    "label": ("int64", "class index into dataset_info.json class_names"),
    "label/name": ("bytes", "class name"),
    "sha256": ("bytes", "sha256 of the original file's bytes"),
    "path": ("bytes", "the original file, <label>/<name> under data/raw"),
}


@cache
def _example_class() -> type:
    """tensorflow/core/example/{example,feature}.proto, declared in a pool of our own."""
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="pawflow/example.proto", package="pawflow", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None, int | None]) -> Any:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, None))
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None, None))
    feature = message(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".pawflow.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".pawflow.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".pawflow.Int64List", 0),
    )
    feature.oneof_decl.add(name="kind")
    features = message(
        "Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".pawflow.Features.FeatureEntry", None)
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".pawflow.Feature")
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".pawflow.Features", None))
    pool = descriptor_pool.DescriptorPool()  # never the default pool: no clash with TensorFlow's protos
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pawflow.Example"))


def serialize(
    jpeg: bytes, height: int, width: int, label: int, label_name: str, sha256: str, path: str
) -> bytes:
    """One example, as written into a shard (a tf.train.Example on the wire)."""
    values: dict[str, bytes | int] = {
        "image/encoded": jpeg,
        "image/height": height,
        "image/width": width,
        "label": label,
        "label/name": label_name.encode(),
        "sha256": sha256.encode(),
        "path": path.encode("utf-8"),
    }
    example = _example_class()()
    for name, (kind, _) in SCHEMA.items():
        feature = example.features.feature[name]
        if kind == "bytes":
            feature.bytes_list.value.append(values[name])
        else:
            feature.int64_list.value.append(values[name])
    return example.SerializeToString(deterministic=True)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def write(path: Path, records: Iterable[bytes]) -> int:
    """Write serialized examples as one TFRecord file (length, CRC, data, CRC); returns how many."""
    n = 0
    with open(path, "wb") as f:
        for r in records:
            header = struct.pack("<Q", len(r))
            f.write(header + _masked_crc(header) + r + _masked_crc(r))
            n += 1
    return n


def feature_spec() -> dict:
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], dtypes[kind]) for name, (kind, _) in SCHEMA.items()}


def parse(serialized: Any) -> dict:
    """Inverse of serialize, inside tf.data."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec())


def read(files: list[Path]) -> Any:
    """Parsed examples from shard files, in file order (a tf.data.Dataset)."""
    import tensorflow as tf

    return tf.data.TFRecordDataset([str(f) for f in files]).map(parse)
