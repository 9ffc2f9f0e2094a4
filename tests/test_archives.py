"""tasks/photos/archives.py: zip and tar sources verified whole; hostile or damaged archives are refused
before anything is written."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import imagegen
import pytest
from sources import (
    central_entry,
    flip_byte,
    hostile_zip,
    limits,
    photos_and,
    run_ingest,
    snapshot,
    tar_with,
    ten_photos,
    zip_of,
)

from tasks import ingest
from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file
from tasks.photos import archives


def test_zip_and_tar_sources_give_the_same_manifest(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip", prefix="PetImages/")
    t = tmp_path / "pets.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(dataset, arcname="PetImages")
    _, _, from_dir = run_ingest(dataset, tmp_path / "raw_dir")
    listing, _, from_zip = run_ingest(z, tmp_path / "raw_zip")
    _, _, from_tar = run_ingest(t, tmp_path / "raw_tar")
    assert from_dir.equals(from_zip) and from_dir.equals(from_tar)
    assert listing.archive_sha256 == sha256_file(z)


@pytest.mark.parametrize(
    ("name", "symlink", "why"),
    [
        ("../../evil.jpg", False, "zip-slip"),
        ("Cat/../../evil.jpg", False, "zip-slip"),
        ("/etc/evil.jpg", False, "absolute path"),
        ("Cat/link.jpg", True, "symbolic link"),
    ],
)
def test_hostile_zip_entries_are_refused(tmp_path: Path, name: str, symlink: bool, why: str):
    z = hostile_zip(tmp_path / "evil.zip", name, b"/etc/passwd" if symlink else b"x", symlink)
    raw = tmp_path / "work" / "raw"
    with pytest.raises(PawflowError, match=why):
        run_ingest(z, raw)
    assert not raw.exists()
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "chardev", "fifo", "dotdot"])
def test_hostile_tar_entries_are_refused(tmp_path: Path, kind: str):
    m = tarfile.TarInfo("Cat/../../x" if kind == "dotdot" else "Cat/special")
    m.type = {
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chardev": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
        "dotdot": tarfile.REGTYPE,
    }[kind]
    if kind in ("symlink", "hardlink"):
        m.linkname = "/etc/passwd"
    t = tar_with(tmp_path / "evil.tar", m)
    with pytest.raises(PawflowError, match="refused"):
        run_ingest(t, tmp_path / "work" / "raw")
    assert not (tmp_path / "work" / "raw").exists()


def test_zip_bomb_is_refused_before_extraction(tmp_path: Path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Cat/a.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/huge.jpg", b"\0" * 20_000_000)
    assert z.stat().st_size < 100_000
    with pytest.raises(PawflowError, match="max_archive_bytes"):
        run_ingest(z, tmp_path / "work" / "raw", max_archive_bytes=1_000_000)
    assert not (tmp_path / "work" / "raw").exists()


def test_archive_with_too_many_entries_is_refused(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip")
    with pytest.raises(PawflowError, match="more than 10 entries"):
        run_ingest(z, tmp_path / "raw", max_archive_files=10)


def test_corrupt_archive_is_a_clear_error(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip")
    data = bytearray(z.read_bytes())
    z.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(PawflowError, match=r"damaged \(a zip whose central directory is missing"):
        run_ingest(z, tmp_path / "raw")


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_corrupt_compressed_tar_is_refused_whole(tmp_path: Path, raw_with_history: Path, compression: str):
    t = tmp_path / f"pets.tar{'.' + compression if compression else ''}"
    with tarfile.open(t, f"w:{compression}") as tf:
        tf.add(ten_photos(tmp_path / "src"), arcname="PetImages")
    intact, _, _ = run_ingest(t, tmp_path / "check" / "raw")
    assert len(intact.entries) == 10
    # One flipped byte at 3/4: in a compressed stream it breaks the data or its checksum; in a plain tar
    # it lands in a photo (tar has no checksum for data: clean judges the photo) unless it hits a header.
    at = t.stat().st_size * 3 // 4
    if not compression:
        with tarfile.open(t) as tf:
            headers = [m.offset for m in tf.getmembers()]
        at = min(headers, key=lambda h: abs(h - at)) + 100  # inside the name field of a header
    flip_byte(t, at)
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match=r"the archive is damaged .*Nothing was extracted") as err:
        run_ingest(t, raw_with_history)
    assert "tar tzf" in str(err.value) and str(err.value).count("What to do") == 1
    assert snapshot(raw_with_history) == before


def test_tar_cut_short_at_a_member_boundary_is_refused(tmp_path: Path, raw_with_history: Path):
    t = tmp_path / "pets.tar"
    with tarfile.open(t, "w") as tf:
        tf.add(ten_photos(tmp_path / "src"), arcname="PetImages")
    with tarfile.open(t) as tf:
        last = tf.getmembers()[-1]
    t.write_bytes(t.read_bytes()[: last.offset])  # the last photo and the end-of-archive marker are gone
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match="without the end-of-archive marker"):
        run_ingest(t, raw_with_history)
    assert snapshot(raw_with_history) == before


@pytest.mark.parametrize(
    ("damage", "compression", "message"),
    [
        ("flip", zipfile.ZIP_STORED, "does not match its CRC-32"),
        ("flip", zipfile.ZIP_DEFLATED, r"(CRC-32|zlib|invalid)"),
        ("size+", zipfile.ZIP_DEFLATED, "bytes of data, but its header says"),
        ("size+", zipfile.ZIP_STORED, r"(CRC-32|header says)"),
        ("size-", zipfile.ZIP_DEFLATED, "does not match its CRC-32"),
    ],
)
def test_corrupt_zip_member_is_refused_before_anything_is_written(
    tmp_path: Path, raw_with_history: Path, damage: str, compression: int, message: str
):
    z = tmp_path / "pets.zip"
    src = ten_photos(tmp_path / "src")
    with zipfile.ZipFile(z, "w", compression=compression) as zf:
        for p in sorted(src.rglob("*.jpg")):
            zf.write(p, p.relative_to(src).as_posix())
    victim = "Dog/dog.2.jpg"  # the 8th of 10: seven files would be written before it by a naive copy
    info = zipfile.ZipFile(z).getinfo(victim)
    if damage == "flip":
        local = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        flip_byte(z, local + info.compress_size // 2)
    else:
        data = bytearray(z.read_bytes())
        at = central_entry(bytes(data), victim) + 24  # uncompressed size
        size = info.file_size + 1000 if damage == "size+" else info.file_size // 2
        data[at : at + 4] = size.to_bytes(4, "little")
        z.write_bytes(bytes(data))
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match=message) as err:
        run_ingest(z, raw_with_history)
    assert f"entry {victim!r}" in str(err.value) and "Nothing was extracted" in str(err.value)
    assert snapshot(raw_with_history) == before


def test_zip_member_expanding_beyond_the_ratio_is_refused(tmp_path: Path, raw_with_history: Path):
    z = photos_and(tmp_path / "bomb.zip", "Dog/zeros.jpg", bytes(3_000_000))
    assert z.stat().st_size < 30_000  # 3 MB from a few kB: ratio ~ 1000
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match=r"'Dog/zeros\.jpg' .*more than ingest\.max_member_ratio=50 times"):
        run_ingest(z, raw_with_history, max_member_ratio=50, ratio_grace_bytes=0)
    assert snapshot(raw_with_history) == before
    # the default limits take a real photo archive (JPEGs barely compress)
    listing, _, _ = run_ingest(zip_of(ten_photos(tmp_path / "src"), tmp_path / "ok.zip"), tmp_path / "r2")
    assert len(listing.entries) == 10


def test_archive_expanding_beyond_the_ratio_is_refused(tmp_path: Path, raw_with_history: Path):
    # Each member within the per-member limit, together far beyond the whole-archive one.
    text = b"".join(b"line %d of a log file, quite repetitive\n" % i for i in range(20_000))
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"{'Cat' if i % 2 else 'Dog'}/{i}.jpg", text)
    before = snapshot(raw_with_history)
    with pytest.raises(
        PawflowError, match=r"'(Cat|Dog)/\d\.jpg' .*more than ingest\.max_archive_ratio=5 times"
    ):
        run_ingest(z, raw_with_history, max_member_ratio=1000, max_archive_ratio=5, ratio_grace_bytes=0)
    assert snapshot(raw_with_history) == before
    # a tar.gz has no per-member compressed size: the whole-archive ratio is what stops its bombs
    t = tmp_path / "bomb.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        for name, data in (("Cat/ok.jpg", imagegen.jpeg(1)), ("Dog/zeros.jpg", bytes(3_000_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(PawflowError, match=r"'Dog/zeros\.jpg' .*max_archive_ratio=100 times"):
        run_ingest(t, raw_with_history, ratio_grace_bytes=0)
    assert snapshot(raw_with_history) == before


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_members_are_verified_in_blocks_never_whole(tmp_path: Path, kind: str):
    import tracemalloc

    if kind == "zip":
        z = photos_and(tmp_path / "big.zip", "Dog/big.jpg", bytes(40_000_000))
    else:
        z = tmp_path / "big.tar.gz"
        with tarfile.open(z, "w:gz") as tf:
            for name, data in (("Cat/ok.jpg", imagegen.jpeg(1)), ("Dog/ok.jpg", imagegen.jpeg(2))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("Dog/big.jpg")
            info.size = 40_000_000
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    cfg = limits(z, max_member_ratio=10**6, max_archive_ratio=10**6)
    tracemalloc.start()
    try:
        listing = archives.list_archive(z, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listing.entries) == 3
    assert peak < 8_000_000  # 40 MB member, read and checked in 1 MB blocks


# --------------------------------------------------------------------------- names


def test_duplicate_entry_names_are_refused(tmp_path: Path, raw_with_history: Path):
    z = tmp_path / "twice.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(z, "w") as zf:
        zf.writestr("Cat/a.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/a.jpg", imagegen.jpeg(2))
        zf.writestr("Cat/a.jpg", imagegen.jpeg(3))
    t = tmp_path / "twice.tar"
    with tarfile.open(t, "w") as tf:
        for name, seed in (("Cat/a.jpg", 1), ("Dog/a.jpg", 2), ("Cat/./a.jpg", 3)):
            body = imagegen.jpeg(seed)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    before = snapshot(raw_with_history)
    for archive in (z, t):
        with pytest.raises(PawflowError, match=r"a second entry named 'Cat/a\.jpg'"):
            run_ingest(archive, raw_with_history)
    assert snapshot(raw_with_history) == before


def test_a_name_that_is_both_file_and_folder_is_refused(tmp_path: Path):
    z = photos_and(tmp_path / "clash.zip", "Cat/ok.jpg/inner.jpg", imagegen.jpeg(3))
    with pytest.raises(PawflowError, match=r"'Cat/ok\.jpg' is unsafe .*same name is a file and a folder"):
        run_ingest(z, tmp_path / "work" / "raw")
    assert not (tmp_path / "work").exists()


def test_archive_names_that_are_not_utf8(tmp_path: Path):
    t = tmp_path / "latin1.tar"
    with tarfile.open(t, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, seed in (("Cat/a.jpg", 1), ("Dog/a.jpg", 2), ("Dog/caf\u00e9.jpg", 3)):
            body = imagegen.jpeg(seed)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    listing, _, df = run_ingest(t, tmp_path / "raw")
    assert {
        "path": "Dog/caf\ufffd.jpg",
        "reason": "its name is not valid UTF-8: rename it",
    } in listing.skipped
    assert sorted(df["path"]) == ["Cat/a.jpg", "Dog/a.jpg"]
    # a zip that flags its names as UTF-8 but holds other bytes cannot even be listed: refused
    z = photos_and(tmp_path / "flagged.zip", "Dog/caf\u00e9.jpg", imagegen.jpeg(3))
    z.write_bytes(z.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    with pytest.raises(PawflowError, match="not valid UTF-8, though the archive says it is"):
        run_ingest(z, tmp_path / "w" / "raw")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_is_opened_once_to_copy_all_members(tmp_path: Path, monkeypatch, kind: str):
    """Opening the archive per member re-read the zip's directory (or decompressed the tar.gz from its
    start) for every file: quadratic, 283 s for the 4,007 photos of the sample as a zip."""
    src = ten_photos(tmp_path / "src")
    if kind == "zip":
        archive = zip_of(src, tmp_path / "pets.zip")
    else:
        archive = tmp_path / "pets.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src, arcname="PetImages")
    listing = archives.list_archive(archive, limits())
    opened: list[str] = []
    real_zip, real_tar = zipfile.ZipFile, tarfile.open
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: opened.append("zip") or real_zip(*a, **k))
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append("tar") or real_tar(*a, **k))
    result = ingest.sync(listing.entries, tmp_path / "raw", {}, progress=False)
    assert len(result.copied) == 10 and len(opened) == 1
    assert snapshot(tmp_path / "raw") == snapshot(src)
