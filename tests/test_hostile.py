"""Hostile and broken inputs through the real stages: each one a reason or a clear error, never a crash."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import imagegen
import numpy as np
import pandas as pd
import pytest
from test_images import SETTINGS

from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks.images import check_bytes

pytestmark = pytest.mark.usefixtures("prefect_server")


def run(params, *flows):
    for flow in flows:
        state = flow(params=params, return_state=True)
        assert state.is_completed(), state.message


def test_awkward_names_labels_and_file_kinds(tmp_path: Path, make_params):
    src = imagegen.make_dataset(tmp_path / "src", per_class=6, classes=("Cats & Kittens (big)", "Dog=1"))
    cat, dog = src / "Cats & Kittens (big)", src / "Dog=1"
    names = ["with space.jpg", "paren (1).jpg", "a=b.jpg", "ünïcödé.jpg", "x" * 251 + ".jpg"]
    for i, name in enumerate(names):
        (cat / name).write_bytes(imagegen.jpeg(500 + i))
    (dog / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (dog / "._dog.0.jpg").write_bytes(b"\0\5\26\7" + bytes(200))  # AppleDouble
    (dog / "folder.jpg").mkdir()  # a directory named like an image
    (dog / "folder.jpg" / "inner.jpg").write_bytes(imagegen.jpeg(600))
    (dog / "empty_dir.jpg").mkdir()
    bad_name = os.fsencode(str(dog)) + b"/bad\xff\xfe.jpg"
    with open(bad_name, "wb") as f:
        f.write(imagegen.jpeg(601))
    (src / "Empty").mkdir()
    params = make_params(src)
    run(params, ingest_flow, clean_flow, dedup_flow, shard_flow)

    ingest = json.loads((params.paths.reports / "ingest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in ingest["skipped"]}
    assert any("not valid UTF-8" in r for r in skipped.values())
    assert skipped["Empty/"].startswith("empty class folder")
    clean = pd.read_parquet(params.paths.interim / "clean.parquet").set_index("path")
    for name in names:
        assert clean.at[f"Cats & Kittens (big)/{name}", "status"] == "kept"
    assert clean.at["Dog=1/folder.jpg/inner.jpg", "status"] == "kept"
    for junk in (".DS_Store", "._dog.0.jpg"):
        assert clean.at[f"Dog=1/{junk}", "reason"] == "not_an_image"
    info = json.loads((params.paths.processed / "dataset_info.json").read_text())
    assert info["class_names"] == ["Cats & Kittens (big)", "Dog=1"]
    # the raw copies have exactly the source's bytes, 255-byte name included
    assert (params.paths.raw / "Cats & Kittens (big)" / names[-1]).read_bytes() == (
        cat / names[-1]
    ).read_bytes()


def test_unreadable_files_are_skipped_with_a_reason(dataset: Path, make_params, monkeypatch):
    target = dataset / "Cat" / "cat.4.jpg"
    target.chmod(0)
    real_access = os.access
    # root reads anything; pretend to be a user without the permission for this one file
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == target else real_access(p, mode)
    )
    params = make_params(dataset)
    run(params, ingest_flow)
    rep = json.loads((params.paths.reports / "ingest.json").read_text())
    assert {"path": "Cat/cat.4.jpg", "reason": "unreadable: permission denied"} in rep["skipped"]


def test_files_that_vanish_or_change_after_ingest(dataset: Path, make_params):
    params = make_params(dataset)
    run(params, ingest_flow)
    (params.paths.raw / "Cat" / "cat.1.jpg").unlink()
    (params.paths.raw / "Dog" / "dog.2.jpg").write_bytes(imagegen.jpeg(31337))
    run(params, clean_flow)
    clean = pd.read_parquet(params.paths.interim / "clean.parquet").set_index("path")
    assert clean.at["Cat/cat.1.jpg", "reason"] == "missing"
    assert clean.at["Dog/dog.2.jpg", "reason"] == "changed_since_ingest"


def mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Random bit flips, truncations and inserted bytes of real JPEG and PNG encodings."""
    rng = np.random.default_rng(seed)
    bases = [imagegen.jpeg(i, (96, 72)) for i in range(4)]
    bases += [imagegen.encode(imagegen.photo(10 + i, (80, 64)), "PNG") for i in range(3)]
    bases += [imagegen.encode(imagegen.photo(20, (64, 64)), "WEBP", quality=80)]
    out = []
    for k in range(count):
        data = bytearray(bases[k % len(bases)])
        op = k % 3
        if op == 0:
            for pos in rng.integers(0, len(data), size=rng.integers(1, 24)):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 120)), dtype=np.uint8).tobytes()
        out.append((f"m{k:04d}.{'jpg' if k % len(bases) < 4 else 'png'}", bytes(data)))
    return out


@pytest.mark.slow
def test_fuzz_2000_mutated_photos(tmp_path: Path, make_params):
    """No crash, no hang (every file within the per-file limit), every file classified, and every kept
    photo decodes with TensorFlow in the training input pipeline."""
    from tasks import train

    files = mutations(seed=2026, count=2000)
    slowest = 0.0
    for _, data in files:
        started = time.monotonic()
        check_bytes(data, SETTINGS)
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < SETTINGS.timeout_s

    src = tmp_path / "fuzz"
    for i, (name, data) in enumerate(files):
        folder = src / ("Cat" if i % 2 else "Dog")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    params = make_params(src, clean={"max_reject_fraction": 1.0, "min_side": 8}, dedup={"max_distance": 0})
    run(params, ingest_flow, clean_flow, dedup_flow, shard_flow)
    clean = pd.read_parquet(params.paths.interim / "clean.parquet")
    assert len(clean) == 2000 and set(clean["status"]) <= {"kept", "rejected"}
    assert (clean[clean["status"] == "rejected"]["reason"] != "").all()
    kept = int((clean["status"] == "kept").sum())
    assert 0 < kept < 2000  # the mix really exercises both sides
    info = json.loads((params.paths.processed / "dataset_info.json").read_text())
    decoded = 0
    for split in ("train", "val", "test"):
        ds = train.make_dataset(
            train.split_files(params.paths.processed, info, split),
            num_classes=2,
            image_size=32,
            batch_size=64,
        )
        decoded += sum(int(x.shape[0]) for x, _ in ds)
    dedup = pd.read_parquet(params.paths.interim / "dedup.parquet")
    assert decoded == int((dedup["status"] == "kept").sum()) > 0
