"""data/processed/dataset_info.json, the contract between shard and every stage that reads the shards.

Shard writes it (`DatasetInfo.write`), train, evaluate, the pipeline's warm-start choice and the
benchmarks read it (`DatasetInfo.read`): one typed place for its keys instead of string look-ups.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tasks.fileio import write_json

FILE = "dataset_info.json"


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardFile(_Contract):
    """One TFRecord file of a split."""

    file: str  # name inside data/processed
    examples: int
    bytes: int
    sha256: str
    arrival: int  # the run that brought its photos (0: the first)
    contents: str  # fingerprint of what it holds: equal keys, equal bytes (shards are reused by it)


class SplitFiles(_Contract):
    examples: int
    shards: list[ShardFile]


class ImageFormat(_Contract):
    encoding: str
    channels: int
    max_side: int
    jpeg_quality: int


class DatasetInfo(_Contract):
    class_names: list[str]
    num_classes: int
    image: ImageFormat
    features: dict[str, str]  # TFRecord feature -> what it holds (tasks/tfrecord.py SCHEMA)
    split_fractions: dict[str, float]
    counts: dict[str, dict[str, int]]  # split -> class -> photos
    splits: dict[str, SplitFiles] = {}  # split -> its shard files (empty until they are written)

    @staticmethod
    def path(processed: Path) -> Path:
        return processed / FILE

    @classmethod
    def read(cls, processed: Path) -> DatasetInfo:
        """The dataset_info.json in processed (raises OSError if missing, ValueError if malformed)."""
        return cls.model_validate_json(cls.path(processed).read_bytes())

    def write(self, processed: Path) -> None:
        """Atomically, as deterministic JSON (sorted keys)."""
        write_json(self.path(processed), self.model_dump(mode="json"))

    def split_paths(self, processed: Path, split: str) -> list[Path]:
        return [processed / s.file for s in self.splits[split].shards]

    def examples(self, split: str) -> int:
        return self.splits[split].examples
