"""The data flows in-process for tests: a messy generated source and the four stages run on it."""

from __future__ import annotations

from pathlib import Path

import imagegen
from PIL import Image

from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow
from tasks.core.params import Params

DATA_FILES = [
    "interim/ingest.parquet",
    "interim/clean.parquet",
    "interim/dedup.parquet",
    "interim/split.parquet",
    "processed/dataset_info.json",
]


def messy_source(root: Path) -> Path:
    """20 photos per class plus every defect, awkward valid photos and duplicates."""
    imagegen.make_dataset(root, per_class=20)
    for name, (data, _) in imagegen.defects().items():
        (root / "Cat" / name).write_bytes(data)
    for name, (data, _) in imagegen.awkward_valid().items():
        (root / "Dog" / name).write_bytes(data)
    (root / "Dog" / "copy of dog.1.jpg").write_bytes((root / "Dog" / "dog.1.jpg").read_bytes())
    img = Image.open(root / "Dog" / "dog.2.jpg")
    (root / "Dog" / "dog.2 small.jpg").write_bytes(imagegen.encode(img.resize((44, 37)), "JPEG", quality=70))
    (root / "Cat" / "stolen dog.jpg").write_bytes((root / "Dog" / "dog.3.jpg").read_bytes())
    return root


def run_data_stages(params: Params, refresh: bool = False) -> None:
    for flow in (ingest_flow, clean_flow, dedup_flow, shard_flow):
        state = flow(params=params, refresh=refresh, return_state=True)
        assert state.is_completed(), state.message


def run(params, *flows):
    for flow in flows:
        state = flow(params=params, return_state=True)
        assert state.is_completed(), state.message
