"""tasks/ingest.py: resolve a source, copy it into data/raw incrementally, the manifest."""

from __future__ import annotations

from pathlib import Path

import imagegen
import pytest
from sources import (
    run_ingest,
    zip_of,
)

from tasks import ingest
from tasks.errors import PawflowError
from tasks.fileio import sha256_file


def test_directory_source_labels_and_manifest(dataset: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    _, result, df = run_ingest(dataset, raw)
    assert sorted(df["label"].unique()) == ["Cat", "Dog"]
    assert len(df) == 40 and len(result.copied) == 40
    assert list(df.columns) == ["path", "label", "bytes", "sha256"]
    row = df[df["path"] == "Cat/cat.3.jpg"].iloc[0]
    assert (
        row["sha256"] == sha256_file(dataset / "Cat" / "cat.3.jpg") == sha256_file(raw / "Cat" / "cat.3.jpg")
    )
    assert row["bytes"] == (dataset / "Cat" / "cat.3.jpg").stat().st_size
    assert df["path"].tolist() == sorted(df["path"])


def test_rerun_copies_nothing_and_new_photos_only_are_copied(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    before = {p: p.stat().st_mtime_ns for p in raw.rglob("*.jpg")}
    _, again, _ = run_ingest(dataset, raw, known)
    assert again.copied == [] and again.updated == [] and again.unchanged == 40
    for i in range(50, 55):
        (dataset / "Dog" / f"dog.{i}.jpg").write_bytes(imagegen.jpeg(9000 + i))
    _, more, df2 = run_ingest(dataset, raw, known)
    assert sorted(more.copied) == [f"Dog/dog.{i}.jpg" for i in range(50, 55)]
    assert more.unchanged == 40 and len(df2) == 45
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())  # old raw files untouched


def test_changed_source_file_replaces_raw_copy_atomically(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    target = dataset / "Cat" / "cat.1.jpg"
    target.write_bytes(imagegen.jpeg(424242))
    _, result, df = run_ingest(dataset, raw, known)
    assert result.updated == ["Cat/cat.1.jpg"]
    assert df.set_index("path").at["Cat/cat.1.jpg", "sha256"] == sha256_file(target)


def test_files_removed_from_source_stay_in_raw(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    (dataset / "Cat" / "cat.0.jpg").unlink()
    listing, result, df = run_ingest(dataset, raw, known)
    assert "Cat/cat.0.jpg" in set(df["path"])
    assert ingest.report(listing, result, df)["not_in_source"] == ["Cat/cat.0.jpg"]


def test_missing_source_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PawflowError, match="does not exist"):
        run_ingest(tmp_path / "nope", tmp_path / "raw")


def test_archive_rerun_copies_nothing(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip")
    known: dict = {}
    run_ingest(z, tmp_path / "raw", known)
    _, again, _ = run_ingest(z, tmp_path / "raw", known)
    assert again.copied == [] and again.updated == [] and again.unchanged == 40
