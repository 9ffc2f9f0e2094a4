"""tasks/datasetinfo.py: dataset_info.json read and written through one typed model, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infos import dataset_info
from pydantic import ValidationError

from tasks.datasetinfo import DatasetInfo
from tasks.fileio import dumps_json


def test_written_file_reads_back_equal_and_is_deterministic_json(tmp_path: Path):
    info = dataset_info(["Cat", "Dog"], {"train": [("train-0", 3), ("train-1", 2)], "test": [("test-0", 1)]})
    info.write(tmp_path)
    raw = (tmp_path / "dataset_info.json").read_bytes()
    assert raw == dumps_json(json.loads(raw)).encode()  # sorted keys, fixed indentation
    back = DatasetInfo.read(tmp_path)
    assert back == info
    assert back.examples("train") == 5 and back.split_paths(tmp_path, "train") == [
        tmp_path / "train-0",
        tmp_path / "train-1",
    ]


def test_a_file_shard_wrote_before_the_model_round_trips_byte_identical(tmp_path: Path):
    # the keys and types shard wrote as a plain dict: the model must neither add, drop nor retype any
    written = {
        "class_names": ["Cat", "Dog"],
        "num_classes": 2,
        "image": {"encoding": "jpeg", "channels": 3, "max_side": 224, "jpeg_quality": 90},
        "features": {"label": "class index"},
        "split_fractions": {"train": 0.7, "val": 0.0, "test": 0.3},
        "counts": {"train": {"Cat": 1, "Dog": 1}},
        "splits": {
            "train": {
                "examples": 2,
                "shards": [
                    {
                        "file": "train.tfrecord-00000-of-00001",
                        "examples": 2,
                        "bytes": 10,
                        "sha256": "ab",
                        "arrival": 0,
                        "contents": "cd",
                    }
                ],
            }
        },
    }
    (tmp_path / "dataset_info.json").write_text(dumps_json(written))
    before = (tmp_path / "dataset_info.json").read_bytes()
    DatasetInfo.read(tmp_path).write(tmp_path)
    assert (tmp_path / "dataset_info.json").read_bytes() == before


def test_unknown_or_missing_keys_are_refused(tmp_path: Path):
    good = json.loads(dumps_json(dataset_info(["Cat", "Dog"], {}).model_dump(mode="json")))
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "num_classes"}):
        (tmp_path / "dataset_info.json").write_text(json.dumps(bad))
        with pytest.raises(ValidationError):
            DatasetInfo.read(tmp_path)
    with pytest.raises(FileNotFoundError):
        DatasetInfo.read(tmp_path / "nowhere")


def test_it_is_frozen():
    info = dataset_info(["Cat", "Dog"], {})
    with pytest.raises(ValidationError):
        info.num_classes = 3
