"""data/processed/dataset_info.json, the contract between shard and every stage that reads the shards.

Shard writes it (`DatasetInfo.write`), train, evaluate, the pipeline's warm-start choice and the
benchmarks read it (`DatasetInfo.read`): one typed place for its keys instead of string look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file, write_json

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
    features: dict[str, str]  # TFRecord feature -> what it holds (tasks/photos/tfrecord.py SCHEMA)
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


def _restore_hint(processed: Path) -> str:
    return (
        f"Restore it as the shard stage wrote it: `dvc checkout {processed}` (from DVC's cache) or "
        f"`dvc pull {processed}` (from the remote). If it is still damaged after that (DVC restores its "
        "cache's bytes without checking them), write the shards again from data/raw: "
        "`dvc repro --force shard` (only damaged shard files are rewritten), or `pawflow run --force`."
    )


@dataclass(frozen=True)
class Verified:
    """dataset_info.json and the shard files a stage reads, checked against it: what a cache key needs."""

    info: DatasetInfo
    info_sha256: str  # of dataset_info.json
    shards: dict[str, str]  # file name -> sha256 as hashed now (equal to what shard recorded)


def verified(processed: Path, splits: tuple[str, ...]) -> Verified:
    """dataset_info.json, and every shard file of `splits` checked against what it records (size, then
    sha256: a file cut, extended, substituted or missing is refused before anything reads it). One
    PawflowError names every bad file and what to run. Hashing costs ~0.3 s per 100 MB here."""
    info_path = DatasetInfo.path(processed)
    try:
        info_sha = sha256_file(info_path)
        info = DatasetInfo.model_validate_json(info_path.read_bytes())
    except FileNotFoundError:
        raise PawflowError(
            f"{info_path} not found: the data stages have not run.", "Run `dvc repro` first."
        ) from None
    except (OSError, ValidationError) as err:
        what = err.strerror if isinstance(err, OSError) else f"{err.error_count()} invalid field(s)"
        raise PawflowError(f"{info_path} cannot be used ({what}).", _restore_hint(processed)) from None
    problems: list[str] = []
    hashes: dict[str, str] = {}
    for split in splits:
        for shard in info.splits[split].shards if split in info.splits else []:
            path = processed / shard.file
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"  {path}: missing")
                continue
            if size != shard.bytes:
                how = "cut short" if size < shard.bytes else "longer than written"
                problems.append(f"  {path}: {size:,} bytes, shard wrote {shard.bytes:,} ({how})")
                continue
            digest = sha256_file(path)
            if digest != shard.sha256:
                problems.append(f"  {path}: its sha256 is not the one shard recorded (damaged or replaced)")
                continue
            hashes[shard.file] = digest
    if problems:
        raise PawflowError(
            f"{len(problems)} shard file(s) do not match {info_path}, which records each one's size and "
            f"sha256; nothing was computed from them:\n" + "\n".join(problems),
            _restore_hint(processed),
        )
    return Verified(info, info_sha, hashes)
