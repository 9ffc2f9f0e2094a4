"""Ingest: folders, archives and URLs; labels from folder names; incremental; hostile archives refused."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import imagegen
import pytest
from httpserver import FileServer

from tasks import archives, download, ingest
from tasks.errors import PawflowError
from tasks.fileio import sha256_file
from tasks.params import Ingest

MAX = 10**9


def limits(source: str | Path = "unused", **kw) -> Ingest:
    """The ingest section with generous limits, and any of them overridden by keyword."""
    values = {"max_archive_bytes": MAX, "download_retries": 3, "download_timeout_s": 5.0, **kw}
    return Ingest(source=str(source), **values)


def run_ingest(source: str | Path, raw: Path, known: dict | None = None, **kw):
    listing = ingest.resolve(limits(source, **kw), raw.parent / "downloads", progress=False)
    known = {} if known is None else known
    result = ingest.sync(listing.entries, raw, known, progress=False)
    known.update(result.hashes)
    df, fresh = ingest.manifest(raw, known, progress=False)
    known.update(fresh)
    return listing, result, df


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


def test_any_number_of_classes(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=3, classes=("ant", "bee", "cow", "doe", "elk"))
    _, _, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["ant", "bee", "cow", "doe", "elk"]


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


def test_missing_source_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PawflowError, match="does not exist"):
        run_ingest(tmp_path / "nope", tmp_path / "raw")


# --------------------------------------------------------------------------- archives


def zip_of(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return dest


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


def test_archive_rerun_copies_nothing(dataset: Path, tmp_path: Path):
    z = zip_of(dataset, tmp_path / "pets.zip")
    known: dict = {}
    run_ingest(z, tmp_path / "raw", known)
    _, again, _ = run_ingest(z, tmp_path / "raw", known)
    assert again.copied == [] and again.updated == [] and again.unchanged == 40


def hostile_zip(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Cat/ok.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/ok.jpg", imagegen.jpeg(2))
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, data)
    return path


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


def tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        for name, seed in (("Cat/ok.jpg", 1), ("Dog/ok.jpg", 2)):
            body = imagegen.jpeg(seed)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


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


# --------------------------------------------------------------------------- URLs


def test_url_source_downloads_records_checksum_and_revalidates(dataset: Path, tmp_path: Path):
    body = zip_of(dataset, tmp_path / "pets.zip").read_bytes()
    with FileServer() as srv:
        srv.files["/data/pets.zip"] = body
        url = srv.url + "/data/pets.zip"
        listing, _, df = run_ingest(url, tmp_path / "work" / "raw")
        assert listing.kind == "url" and len(df) == 40
        assert listing.archive_sha256 == sha256_file(tmp_path / "pets.zip")
        _, again, _ = run_ingest(url, tmp_path / "work" / "raw")
        assert srv.requests[-1].get("If-Modified-Since")  # revalidated, not fetched again
        assert again.copied == []


def test_url_download_retries_with_backoff_and_resumes(dataset: Path, tmp_path: Path):
    body = zip_of(dataset, tmp_path / "pets.zip").read_bytes()
    sleeps: list[float] = []
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        srv.fail_next = 2
        d = download.download(
            srv.url + "/pets.zip",
            tmp_path / "dl",
            retries=4,
            timeout_s=5,
            expected_sha256=None,
            progress=False,
            sleep=sleeps.append,
        )
        assert d.path.read_bytes() == body and sleeps == [0.5, 1.0]
        big = os.urandom(1_000_000)
        srv.files["/big.zip"] = big
        srv.cut_next = 400_000
        d2 = download.download(
            srv.url + "/big.zip",
            tmp_path / "dl",
            retries=4,
            timeout_s=5,
            expected_sha256=None,
            progress=False,
            sleep=sleeps.append,
        )
        assert d2.path.read_bytes() == big
        resumed_at = int(srv.requests[-1]["Range"].removeprefix("bytes=").rstrip("-"))
        assert 0 < resumed_at <= 400_000


def test_url_checksum_mismatch_and_unreachable_are_clear_errors(dataset: Path, tmp_path: Path):
    with FileServer() as srv:
        srv.files["/pets.zip"] = zip_of(dataset, tmp_path / "pets.zip").read_bytes()
        with pytest.raises(PawflowError, match="sha256"):
            run_ingest(srv.url + "/pets.zip", tmp_path / "w1" / "raw", sha256="0" * 64)
        with pytest.raises(PawflowError, match="HTTP 404"):
            run_ingest(srv.url + "/missing.zip", tmp_path / "w2" / "raw")
        port = srv.url.rsplit(":", 1)[1]
    with pytest.raises(PawflowError, match="download failed after 2 attempts"):
        run_ingest(f"http://127.0.0.1:{port}/pets.zip", tmp_path / "w3" / "raw", download_retries=2)


# --------------------------------------------------------------------------- damaged archives write nothing


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes (an empty dict when the folder does not exist)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def ten_photos(folder: Path) -> Path:
    return imagegen.make_dataset(folder, per_class=5)


@pytest.fixture
def raw_with_history(tmp_path: Path) -> Path:
    """data/raw after an earlier, good ingest: a refused archive must leave it byte for byte as it is."""
    raw = tmp_path / "work" / "raw"
    run_ingest(imagegen.make_dataset(tmp_path / "earlier", per_class=2), raw)
    return raw


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


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


def central_entry(data: bytes, name: str) -> int:
    """Offset of the central-directory record of `name` in a zip's bytes."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + n] == name.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


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


# --------------------------------------------------------------------------- zip bombs by ratio


def photos_and(path: Path, name: str, data: bytes, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("Cat/ok.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/ok.jpg", imagegen.jpeg(2))
        zf.writestr(name, data)
    return path


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


def test_class_folders_differing_only_in_case_are_refused(tmp_path: Path, raw_with_history: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=2, classes=("Cat", "cat", "Dog"))
    before = snapshot(raw_with_history)
    with pytest.raises(PawflowError, match=r"differ only in case: 'Cat' and 'cat'\. .*Nothing was copied"):
        run_ingest(src, raw_with_history)
    # data/raw keeps earlier labels: a source that renamed Cat/ to cat/ would leave two classes there
    assert (raw_with_history / "Cat").is_dir()
    renamed = imagegen.make_dataset(tmp_path / "renamed", per_class=2, classes=("cat", "Dog"))
    with pytest.raises(PawflowError, match=r"'Cat' and 'cat'.*already holds the other"):
        run_ingest(renamed, raw_with_history)
    assert snapshot(raw_with_history) == before


def test_ignored_folders_are_reported(tmp_path: Path):
    src = imagegen.make_dataset(tmp_path / "src", per_class=2)
    for junk, n in (("...", 1), (".hidden", 2), ("__MACOSX", 1)):
        (src / junk).mkdir()
        for i in range(n):
            (src / junk / f"{i}.jpg").write_bytes(imagegen.jpeg(100 + i))
    listing, result, df = run_ingest(src, tmp_path / "raw")
    assert sorted(df["label"].unique()) == ["Cat", "Dog"]
    rep = ingest.report(listing, result, df)
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


@pytest.mark.slow
def test_damaged_archive_through_the_entry_point_is_one_message(tmp_path: Path, prefect_server: str):
    import subprocess
    import sys

    from conftest import make_workspace, tool_env

    z = zip_of(ten_photos(tmp_path / "src"), tmp_path / "pets.zip")
    info = zipfile.ZipFile(z).getinfo("Dog/dog.2.jpg")
    flip_byte(z, info.header_offset + 30 + len(info.filename) + info.compress_size // 2)
    ws = make_workspace(tmp_path / "ws", z)
    earlier = ws / "data" / "raw" / "Cat" / "earlier.jpg"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(imagegen.jpeg(5))
    out = subprocess.run(
        [sys.executable, "-m", "flows.ingest"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0, out.stdout
    assert "entry 'Dog/dog.2.jpg': its data does not match its CRC-32" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(ws / "data" / "raw") == {"Cat/earlier.jpg": imagegen.jpeg(5)}
    assert (
        not (ws / "data" / "interim" / "ingest.parquet").exists()
        and not (ws / "reports" / "ingest.json").exists()
    )


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
