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

from tasks import ingest
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
    with pytest.raises(PawflowError, match=r"(corrupt|not a zip or tar)"):
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
        d = ingest.download(
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
        d2 = ingest.download(
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
