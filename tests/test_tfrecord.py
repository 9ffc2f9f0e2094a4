"""tasks/photos/tfrecord.py: records written without TensorFlow read back through TensorFlow, byte-stable."""

from __future__ import annotations

from pathlib import Path

import imagegen

from tasks.photos import tfrecord


def records() -> list[bytes]:
    return [
        tfrecord.serialize(
            imagegen.jpeg(i), 40, 48, i % 2, ("Cat", "Dog")[i % 2], f"{i:064x}", f"Cat/caf\u00e9 {i}.jpg"
        )
        for i in range(3)
    ]


def test_write_is_deterministic_and_counts(tmp_path: Path):
    assert tfrecord.write(tmp_path / "a", records()) == 3
    assert tfrecord.write(tmp_path / "b", records()) == 3
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert tfrecord.write(tmp_path / "empty", []) == 0 and (tmp_path / "empty").read_bytes() == b""


def test_records_read_back_through_tensorflow(tmp_path: Path):
    tfrecord.write(tmp_path / "a", records()[:2])
    tfrecord.write(tmp_path / "b", records()[2:])
    got = list(tfrecord.read([tmp_path / "a", tmp_path / "b"]))  # file order kept
    assert [int(ex["label"]) for ex in got] == [0, 1, 0]
    assert [ex["path"].numpy().decode() for ex in got] == [f"Cat/caf\u00e9 {i}.jpg" for i in range(3)]
    assert got[1]["image/encoded"].numpy() == imagegen.jpeg(1)
    assert (int(got[0]["image/height"]), int(got[0]["image/width"])) == (40, 48)
    assert got[2]["sha256"].numpy().decode() == f"{2:064x}" and got[1]["label/name"].numpy() == b"Dog"
