"""tasks/ingest.py: resolve a source, copy it into data/raw incrementally, the manifest."""

from __future__ import annotations

from pathlib import Path

import imagegen
import pytest
from sources import (
    limits,
    run_ingest,
    snapshot,
    zip_of,
)

from tasks import ingest
from tasks.core.errors import PawflowError, Refused
from tasks.core.fileio import sha256_file
from tasks.reports import present


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


def test_append_mode_keeps_files_removed_from_the_source(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known, mode="append")
    (dataset / "Cat" / "cat.0.jpg").unlink()
    (dataset / "Cat" / "cat.1.jpg").rename(dataset / "Dog" / "cat.1.jpg")
    listing, result, df = run_ingest(dataset, raw, known, mode="append")
    assert {"Cat/cat.0.jpg", "Cat/cat.1.jpg", "Dog/cat.1.jpg"} <= set(df["path"])  # a move is a new copy
    rep = ingest.report(listing, result, df, "append")
    assert rep["not_in_source"] == ["Cat/cat.0.jpg", "Cat/cat.1.jpg"] and rep["mode"] == "append"
    assert result.removed == [] and result.moved == [] and result.copied == ["Dog/cat.1.jpg"]


def test_mirror_a_photo_deleted_from_the_source_leaves_raw(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    (dataset / "Cat" / "cat.0.jpg").unlink()
    listing, result, df = run_ingest(dataset, raw, known)
    assert not (raw / "Cat" / "cat.0.jpg").exists() and "Cat/cat.0.jpg" not in set(df["path"])
    assert result.removed == ["Cat/cat.0.jpg"] and result.copied == [] and result.unchanged == 39
    rep = ingest.report(listing, result, df, "mirror")
    assert rep["not_in_source"] == [] and rep["files"] == 39 and rep["per_label"] == {"Cat": 19, "Dog": 20}
    figures = ingest.run_figures(result, hashed=0)
    assert figures["removed"] == 1 and figures["removed_per_class"] == {"Cat": 1}
    assert present.collection_line(figures) == "removed 1"


def test_mirror_a_photo_moved_to_another_class_changes_label_without_a_copy(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    inode = (raw / "Cat" / "cat.1.jpg").stat().st_ino
    (dataset / "Cat" / "cat.1.jpg").rename(dataset / "Dog" / "cat.1.jpg")
    (dataset / "Cat" / "cat.2.jpg").rename(dataset / "Cat" / "renamed.jpg")
    _, result, df = run_ingest(dataset, raw, known)
    assert (raw / "Dog" / "cat.1.jpg").stat().st_ino == inode  # moved in data/raw, not copied
    assert not (raw / "Cat" / "cat.1.jpg").exists() and not (raw / "Cat" / "cat.2.jpg").exists()
    assert result.moved == [("Cat/cat.1.jpg", "Dog/cat.1.jpg"), ("Cat/cat.2.jpg", "Cat/renamed.jpg")]
    assert result.removed == [] and result.copied == []
    row = df.set_index("path").loc["Dog/cat.1.jpg"]
    assert row["label"] == "Dog" and row["sha256"] == sha256_file(dataset / "Dog" / "cat.1.jpg")
    figures = ingest.run_figures(result, hashed=0)
    assert (figures["relabelled"], figures["renamed"]) == (1, 1)
    assert figures["relabelled_per_class"] == {"Cat": {"Dog": 1}}
    assert present.collection_line(figures) == "relabelled 1 (Cat -> Dog 1), renamed 1"
    _, again, _ = run_ingest(dataset, raw, known)  # the move kept the source's timestamp: nothing to read
    assert again.moved == [] and again.copied == [] and again.updated == [] and again.unchanged == 40


def test_mirror_a_removed_photo_comes_back_when_re_added(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    photo = (dataset / "Dog" / "dog.4.jpg").read_bytes()
    (dataset / "Dog" / "dog.4.jpg").unlink()
    run_ingest(dataset, raw, known)
    (dataset / "Dog" / "dog.4.jpg").write_bytes(photo)
    _, result, df = run_ingest(dataset, raw, known)
    assert result.copied == ["Dog/dog.4.jpg"] and (raw / "Dog" / "dog.4.jpg").read_bytes() == photo
    assert len(df) == 40


def test_mirror_a_renamed_class_folder_relabels_every_photo_and_removes_nothing(
    dataset: Path, tmp_path: Path
):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    before = {p.name: p.read_bytes() for p in (raw / "Cat").iterdir()}
    (dataset / "Cat").rename(dataset / "Kitten")  # half the collection's paths are gone: all are moves
    _, result, df = run_ingest(dataset, raw, known)
    assert sorted(df["label"].unique()) == ["Dog", "Kitten"] and not (raw / "Cat").exists()
    assert {p.name: p.read_bytes() for p in (raw / "Kitten").iterdir()} == before
    assert result.removed == [] and len(result.moved) == 20 and result.copied == []
    assert ingest.run_figures(result, hashed=0)["relabelled_per_class"] == {"Cat": {"Kitten": 20}}


def test_mirror_pairs_copies_of_one_photo_deterministically(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    same = (dataset / "Cat" / "cat.5.jpg").read_bytes()
    (dataset / "Cat" / "copy.jpg").write_bytes(same)
    run_ingest(dataset, raw, known)
    (dataset / "Cat" / "cat.5.jpg").rename(dataset / "Dog" / "b.jpg")
    (dataset / "Cat" / "copy.jpg").rename(dataset / "Dog" / "a.jpg")
    _, result, _ = run_ingest(dataset, raw, known)
    assert result.moved == [("Cat/cat.5.jpg", "Dog/a.jpg"), ("Cat/copy.jpg", "Dog/b.jpg")]
    assert (raw / "Dog" / "a.jpg").read_bytes() == (raw / "Dog" / "b.jpg").read_bytes() == same


def test_a_source_that_lost_most_photos_is_refused_before_anything_changes(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    before = snapshot(raw)
    for p in sorted((dataset / "Cat").iterdir())[:12]:  # 12 of 40 gone: 30 % > max_removed_fraction 0.2
        p.unlink()
    (dataset / "Dog" / "new.jpg").write_bytes(imagegen.jpeg(4242))
    with pytest.raises(Refused) as refused:
        run_ingest(dataset, raw, known)
    message = str(refused.value)
    assert f"the source {dataset} no longer holds 12 of the 40 photos in data/raw (30.0%: Cat 12" in message
    assert "`pawflow run --accept-removals`" in message and "PAWFLOW_ACCEPT_REMOVALS=12 dvc repro" in message
    assert snapshot(raw) == before  # nothing removed, nothing copied
    with pytest.raises(Refused, match="PAWFLOW_ACCEPT_REMOVALS=11 was given"):
        run_ingest(dataset, raw, known, accept_count=11)  # a count accepts that many only
    assert snapshot(raw) == before
    _, result, df = run_ingest(dataset, raw, known, accept_count=12)
    assert len(result.removed) == 12 and result.copied == ["Dog/new.jpg"] and len(df) == 29


def test_the_guard_counts_removals_only_and_accept_all_takes_any(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    for p in sorted((dataset / "Cat").iterdir())[:8]:  # 8 of 40: 20 %, not above the threshold
        p.unlink()
    _, result, _ = run_ingest(dataset, raw, known)
    assert len(result.removed) == 8
    other = imagegen.make_dataset(tmp_path / "other", per_class=3, seed=777)  # a wrong path: another set
    with pytest.raises(
        Refused, match=r"no longer holds 28 of the 32 photos in data/raw \(87.5%: Cat 11, Dog 17"
    ):
        run_ingest(other, raw, known)  # (cat.2, dog.0-2 are still there: updated, not removed)
    _, result, df = run_ingest(other, raw, known, accept_all=True)
    assert len(result.removed) == 28 and len(result.updated) == 4 and len(df) == 6


def test_max_removed_fraction_one_never_refuses(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    other = imagegen.make_dataset(tmp_path / "other", per_class=3, seed=777)
    _, result, _ = run_ingest(other, raw, known, max_removed_fraction=1.0)
    assert len(result.removed) == 34 and len(result.updated) == 6


def test_missing_source_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PawflowError, match="does not exist"):
        run_ingest(tmp_path / "nope", tmp_path / "raw")


def test_archive_rerun_copies_nothing(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip")
    known: dict = {}
    run_ingest(z, tmp_path / "raw", known)
    _, again, _ = run_ingest(z, tmp_path / "raw", known)
    assert again.copied == [] and again.updated == [] and again.unchanged == 40


def test_mirror_keeps_a_photo_the_source_still_has_but_cannot_read(dataset: Path, tmp_path: Path):
    raw, known = tmp_path / "raw", {}
    run_ingest(dataset, raw, known)
    (dataset / "Cat" / "cat.4.jpg").unlink()
    # The listing as a source with an unreadable file and an unreadable class folder gives it (tests run
    # as root, who reads anything: the listing is edited to say so).
    listing = ingest.resolve(limits(dataset), tmp_path / "dl", progress=False)
    listing.entries = [e for e in listing.entries if e.path != "Cat/cat.3.jpg"]
    listing.skipped.append({"path": "Cat/cat.3.jpg", "reason": "unreadable: permission denied"})
    listing.skipped.append({"path": "PetImages/Dog", "reason": "folder cannot be read: Permission denied"})
    listing.entries = [e for e in listing.entries if e.label != "Dog"]
    result = ingest.update(listing, raw, known, "mirror", 0.2, progress=False)
    assert result.removed == ["Cat/cat.4.jpg"]  # not cat.3, nor any Dog photo: still in the source
    assert (raw / "Cat" / "cat.3.jpg").exists() and len(list((raw / "Dog").iterdir())) == 20
    assert ingest.still_in_source("Cat/x.jpg", [{"path": "src/Cat/", "reason": "folder cannot be read: x"}])
    assert not ingest.still_in_source(
        "Bird/x.jpg", [{"path": "Bird/", "reason": "empty class folder: ignored"}]
    )
