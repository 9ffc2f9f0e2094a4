"""flows/shard.py in-process: shards read back through tf.data; the data stages (they end here) give
byte-identical outputs, also with --refresh."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataflows import DATA_FILES, run_data_stages
from PIL import Image

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_shards_round_trip_through_tf_data(built):
    import tensorflow as tf

    from tasks.photos import tfrecord

    params, source = built
    info = json.loads((params.paths.processed / "dataset_info.json").read_text())
    assert info["class_names"] == ["Cat", "Dog"]
    seen = {}
    for split, meta in info["splits"].items():
        files = [params.paths.processed / s["file"] for s in meta["shards"]]
        assert [f.name for f in files] == [f"{split}.tfrecord-00000-of-00001"]
        for ex in tfrecord.read(files):
            path = ex["path"].numpy().decode()
            pixels = tf.io.decode_jpeg(ex["image/encoded"], channels=3).numpy()
            assert (
                info["class_names"][int(ex["label"])]
                == ex["label/name"].numpy().decode()
                == path.split("/")[0]
            )
            assert pixels.shape[:2] == (int(ex["image/height"]), int(ex["image/width"]))
            seen[path] = split
            if path.startswith(("Cat/cat.", "Dog/dog.")) and " " not in path:
                original = np.asarray(Image.open(source / path).convert("RGB"), dtype=float)
                assert np.abs(original - pixels).mean() < 6  # JPEG re-encoding tolerance
    dd = pd.read_parquet(params.paths.interim / "dedup.parquet")
    assert set(seen) == set(dd[dd["status"] == "kept"]["path"])
    counts = sum(sum(c.values()) for c in info["counts"].values())
    assert counts == len(seen)


def test_same_inputs_give_byte_identical_outputs(built, tmp_path: Path):
    from conftest import params_for

    params, source = built
    other = params_for(
        tmp_path / "work2",
        source,
        clean={"max_reject_fraction": 0.5},
        runner={"kind": "threads", "workers": 1, "chunk_size": 7},
    )
    run_data_stages(other)
    for rel in DATA_FILES:
        a = (params.paths.raw.parent / rel).read_bytes()
        b = (other.paths.raw.parent / rel).read_bytes()
        assert a == b, rel
    page = (params.paths.reports / "data.html").read_bytes()
    assert page == (other.paths.reports / "data.html").read_bytes()
    shards = sorted(p.name for p in params.paths.processed.glob("*.tfrecord-*"))
    assert shards and shards == sorted(p.name for p in other.paths.processed.glob("*.tfrecord-*"))
    for name in shards:
        assert (params.paths.processed / name).read_bytes() == (other.paths.processed / name).read_bytes()


@pytest.mark.slow  # ~4 s: keeps make test-fast under 3 min
def test_refresh_recomputes_to_the_same_bytes(built):
    params, _ = built
    before = {rel: (params.paths.raw.parent / rel).read_bytes() for rel in DATA_FILES}
    run_data_stages(params, refresh=True)
    assert before == {rel: (params.paths.raw.parent / rel).read_bytes() for rel in DATA_FILES}


def test_a_class_that_cannot_reach_every_split_fails_shard_before_it_writes(trained, tmp_path: Path):
    """Two birds left by clean and dedup (an archive source is only counted once downloaded): shard used
    to put both in train and none in test without a word; now it refuses, naming the class and the
    minimum, and the last shards and the split ledger stay as they were."""
    from conftest import copy_of_trained

    from flows.shard import shard_flow
    from tasks.core.fileio import read_parquet, write_parquet

    params = copy_of_trained(trained, tmp_path)
    dd = read_parquet(params.paths.interim / "dedup.parquet")
    birds = pd.DataFrame(
        [
            {
                "path": f"Bird/{i}.jpg",
                "label": "Bird",
                "sha256": f"{i:064x}",
                "group": f"bird{i}",
                "status": "kept",
            }
            for i in range(2)
        ]
    )
    write_parquet(params.paths.interim / "dedup.parquet", pd.concat([dd, birds], ignore_index=True))
    before = {
        p: p.read_bytes() for p in [*params.paths.processed.iterdir(), params.paths.interim / "split.parquet"]
    }
    state = shard_flow(params=params, return_state=True)
    assert state.is_failed()
    assert (
        "too small for shard.split" in state.message and "'Bird' 2 (train 2, val 0, test 0)" in state.message
    )
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(params.paths.processed.iterdir()) == sorted(
        p for p in before if p.parent == params.paths.processed
    )
