"""tasks/photos/datasetinfo.py: dataset_info.json read and written through one typed model, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infos import dataset_info
from pydantic import ValidationError

from tasks.core.fileio import dumps_json
from tasks.photos.datasetinfo import DatasetInfo


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


def shards_on_disk(folder: Path) -> DatasetInfo:
    """Two train shards and one test shard written as shard writes them, and their dataset_info.json."""
    from tasks.core.fileio import sha256_file
    from tasks.photos.datasetinfo import ShardFile, SplitFiles

    info = dataset_info(["Cat", "Dog"], {})
    splits = {}
    for split, files in {"train": ["train-0", "train-1"], "val": [], "test": ["test-0"]}.items():
        entries = []
        for i, name in enumerate(files):
            (folder / name).write_bytes(bytes(range(256)) * (10 + i))
            entries.append(
                ShardFile(
                    file=name,
                    examples=3,
                    bytes=(folder / name).stat().st_size,
                    sha256=sha256_file(folder / name),
                    arrival=0,
                    contents="",
                )
            )
        splits[split] = SplitFiles(examples=3 * len(entries), shards=entries)
    info = info.model_copy(update={"splits": splits})
    info.write(folder)
    return info


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "1,000 bytes, shard wrote 2,816 (cut short)"),
        (
            lambda p: p.write_bytes(p.read_bytes() + b"\0"),
            "2,817 bytes, shard wrote 2,816 (longer than written)",
        ),
        (lambda p: p.write_bytes(b"\1" + p.read_bytes()[1:]), "its sha256 is not the one shard recorded"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_a_cut_extended_substituted_or_missing_shard_is_refused_naming_it(tmp_path: Path, damage, says: str):
    """Damaged in place, as `dvc checkout` of a damaged cache object leaves it (same name, rc 0)."""
    from tasks.core.errors import PawflowError
    from tasks.photos.datasetinfo import verified

    shards_on_disk(tmp_path)
    ok = verified(tmp_path, ("train", "val"))
    assert set(ok.shards) == {"train-0", "train-1"} and ok.info_sha256
    damage(tmp_path / "train-1")
    with pytest.raises(PawflowError) as info:
        verified(tmp_path, ("train", "val"))
    msg = str(info.value)
    assert f"{tmp_path / 'train-1'}: {says}" in msg and "train-0" not in msg
    assert "dvc checkout" in msg and "dvc pull" in msg and "dvc repro --force shard" in msg
    assert verified(tmp_path, ("test",)).shards.keys() == {"test-0"}  # a split not read is not checked


def test_an_unreadable_dataset_info_is_one_message(tmp_path: Path):
    from tasks.core.errors import PawflowError
    from tasks.photos.datasetinfo import verified

    with pytest.raises(PawflowError, match=r"dataset_info\.json not found: the data stages have not run"):
        verified(tmp_path, ("test",))
    (tmp_path / "dataset_info.json").write_text('{"class_names": ')
    with pytest.raises(PawflowError, match=r"dataset_info\.json cannot be used \(1 invalid field"):
        verified(tmp_path, ("test",))
