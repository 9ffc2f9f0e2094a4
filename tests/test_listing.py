"""tasks/photos/listing.py: labels from folder names, the class root, and what is left out with a reason."""

from __future__ import annotations

import os
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
from tasks.core.errors import PawflowError
from tasks.photos import archives


def test_any_number_of_classes(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=3, classes=("ant", "bee", "cow", "doe", "elk"))
    _, _, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["ant", "bee", "cow", "doe", "elk"]


def test_nested_root_and_junk_are_handled(tmp_path: Path):
    src = tmp_path / "src"
    imagegen.make_dataset(src / "PetImages", per_class=2)
    (src / "readme[1].txt").write_text("readme")
    (src / "__MACOSX" / "PetImages").mkdir(parents=True)
    (src / "__MACOSX" / "PetImages" / "._x").write_bytes(b"\0")
    listing, _, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["Cat", "Dog"]
    assert {"path": "readme[1].txt", "reason": "not inside a class folder"} in listing.skipped


def test_symlinks_are_not_followed(dataset: Path, tmp_path: Path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(imagegen.jpeg(77))
    os.symlink(outside, dataset / "Cat" / "link.jpg")
    os.symlink(dataset / "Dog", dataset / "Cat" / "loop")
    listing, _, df = run_ingest(dataset, tmp_path / "raw")
    assert "Cat/link.jpg" not in set(df["path"])
    reasons = {s["path"]: s["reason"] for s in listing.skipped}
    assert "symlink" in reasons["Cat/link.jpg"] and "symlink" in reasons["Cat/loop"]


def test_empty_class_folder_is_reported(dataset: Path, tmp_path: Path):
    (dataset / "Bird").mkdir()
    listing, _, df = run_ingest(dataset, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["Cat", "Dog"]
    assert any(s["path"] == "Bird/" for s in listing.skipped)


@pytest.mark.parametrize("layout", [["Cat"], []])
def test_fewer_than_two_classes_is_a_clear_error(tmp_path: Path, layout: list[str]):
    src = tmp_path / "src"
    src.mkdir()
    for cls in layout:
        (src / cls).mkdir()
        (src / cls / "a.jpg").write_bytes(imagegen.jpeg(1))
    (src / "loose.jpg").write_bytes(imagegen.jpeg(2))
    with pytest.raises(PawflowError, match="at least two"):
        run_ingest(src, tmp_path / "raw")


def test_class_folders_differing_only_in_case_are_refused(tmp_path: Path, raw_with_history: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=2, classes=("Cat", "cat", "Dog"))
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match=r"differ only in case.*: 'Cat' and 'cat'\. .*Nothing was copied"):
        run_ingest(src, raw_with_history)
    # In append mode data/raw keeps earlier labels: a source that renamed Cat/ to cat/ would leave two
    # classes there. (In mirror mode the photos move to cat/: tests/test_ingest.py.)
    assert (raw_with_history / "Cat").is_dir()
    renamed = imagegen.make_dataset(tmp_path / "renamed", per_class=2, classes=("cat", "Dog"))
    with pytest.raises(PawflowError, match=r"'Cat' and 'cat'.*already holds the other"):
        run_ingest(renamed, raw_with_history, mode="append")
    assert snapshot(raw_with_history) == before
    _, result, df = run_ingest(renamed, raw_with_history)
    assert sorted(df["label"].unique()) == ["Dog", "cat"] and len(result.moved) == 2 and not result.removed


def test_ignored_folders_are_reported(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=2)
    for junk, n in (("...", 1), (".hidden", 2), ("__MACOSX", 1)):
        (src / junk).mkdir()
        for i in range(n):
            (src / junk / f"{i}.jpg").write_bytes(imagegen.jpeg(100 + i))
    listing, result, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["Cat", "Dog"]
    rep = ingest.report(listing, result, df, "mirror")
    assert rep["ignored_folders"] == [
        {
            "path": ".../",
            "reason": "hidden folder (its name starts with '.'), not a class: ignored",
            "files": 1,
        },
        {
            "path": ".hidden/",
            "reason": "hidden folder (its name starts with '.'), not a class: ignored",
            "files": 2,
        },
        {
            "path": "__MACOSX/",
            "reason": "folder added by an archiver or operating system, not a class: ignored",
            "files": 1,
        },
    ]
    # the same from an archive, with the class root one level down
    _, _, _ = run_ingest(zip_of(src, tmp_path / "s.zip", prefix="PetImages/"), tmp_path / "raw2")
    listing2 = archives.list_archive(tmp_path / "s.zip", limits())
    assert [i["path"] for i in listing2.ignored] == [
        "PetImages/.../",
        "PetImages/.hidden/",
        "PetImages/__MACOSX/",
    ]


def test_names_that_are_not_utf8_and_special_files_are_skipped_unopened(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=3)
    with open(os.fsencode(src / "Cat") + b"/bad\xff.jpg", "wb") as f:
        f.write(imagegen.jpeg(7))
    os.mkdir(os.fsencode(src) + b"/Bird\xfe")
    os.mkfifo(src / "Dog" / "fifo.jpg")
    listing, result, df = run_ingest(src, tmp_path / "raw")  # a FIFO opened for reading would block here
    reasons = {s["path"]: s["reason"] for s in listing.skipped}
    assert reasons["Cat/bad\ufffd.jpg"] == reasons["Bird\ufffd"] == "its name is not valid UTF-8: rename it"
    assert reasons["Dog/fifo.jpg"] == "not a regular file (device, pipe or socket)"
    assert len(df) == 6 and result.failed == []
    # a file swapped for a FIFO after listing is refused by the copy, not waited on
    (tmp_path / "raw" / "Cat" / "cat.0.jpg").unlink()
    (src / "Cat" / "cat.0.jpg").unlink()
    os.mkfifo(src / "Cat" / "cat.0.jpg")
    result = ingest.sync(listing.entries, tmp_path / "raw", {}, progress=False)
    assert [f["path"] for f in result.failed] == ["Cat/cat.0.jpg"]
    assert "not a regular file" in result.failed[0]["reason"]
    # a FIFO as the source itself is refused before anything opens it (is_zipfile would block on it)
    os.mkfifo(tmp_path / "pets.zip")
    with pytest.raises(PawflowError, match="is not a regular file or folder"):
        run_ingest(tmp_path / "pets.zip", tmp_path / "w" / "raw")


LOOK_ALIKES = [
    (
        "Caf\u00e9",
        "Cafe\u0301",
        "'Cafe\u0301' (Cafe\\u0301) and 'Caf\u00e9' (Caf\\xe9)",
    ),  # NFC (Linux) and NFD (macOS)
    ("Dog", "Dog ", "'Dog' and 'Dog '"),  # a trailing space
    ("Dog", "  dog", "'  dog' and 'Dog'"),  # leading spaces and case
    ("Dog", "Dog\u200b", "'Dog' and 'Dog\\u200b'"),  # a zero-width space
    ("Dog", "\uff24og", "'Dog' and 'Ｄog' (\\uff24og)"),  # a full-width letter
]


@pytest.mark.parametrize(("one", "other", "named"), LOOK_ALIKES)
def test_class_folders_that_look_alike_are_refused_in_folders_archives_and_against_raw(
    tmp_path: Path, raw_with_history: Path, one: str, other: str, named: str
):
    """Names equal after NFKC, without invisible characters, case folded and stripped are one class to a
    person: refused with both spellings shown apart, like the case twins, wherever the labels come from."""
    src = imagegen.make_dataset(tmp_path / "src", per_class=2, classes=(one, other, "Bird"))
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError) as folder:
        run_ingest(src, raw_with_history)
    with pytest.raises(PawflowError) as archive:
        run_ingest(zip_of(src, tmp_path / "src.zip"), raw_with_history)
    for err in (folder, archive):
        msg = str(err.value)
        assert named in msg and "Merge each group into one folder with one spelling" in msg, msg
    earlier = imagegen.make_dataset(tmp_path / "earlier", per_class=2, classes=(one, "Bird"))
    raw = tmp_path / "raw2"
    run_ingest(earlier, raw)
    renamed = imagegen.make_dataset(tmp_path / "renamed", per_class=2, classes=(other, "Bird"))
    # Against data/raw in append mode (it keeps earlier labels); in mirror mode the old spelling leaves.
    with pytest.raises(PawflowError, match="already holds the other from an earlier ingest") as against:
        run_ingest(renamed, raw, mode="append")
    assert named in str(against.value)
    assert snapshot(raw_with_history) == before


def test_names_that_only_look_close_stay_apart(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=2, classes=("Dog", "Dogs", "Do g", "Dög"))
    _, _, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["Do g", "Dog", "Dogs", "Dög"]
