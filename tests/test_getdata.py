"""tasks/photos/getdata.py and `pawflow data`: the PetImages archive fetched through ingest's download path
(resumed, retried, sha256-checked), kept at data.archive, and ingest.source pointed at it.

Everything runs against a local HTTP server: the real URL is never fetched here (no internet), so the
pinned sha256 of the real archive is not verified by any test; the check that uses it is, with a local
file's sha256 in its place."""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from pathlib import Path

import imagegen
import pytest
import yaml
from conftest import shipped
from httpserver import FileServer
from sources import zip_of

from flows.cli import main
from tasks.check import check_source
from tasks.core.errors import PawflowError
from tasks.core.params import Data, load_params
from tasks.photos import download, getdata

ROOT = Path(__file__).resolve().parents[1]
INGEST = shipped("ingest", download_retries=2, download_timeout_s=5)


def petimages_zip(tmp_path: Path) -> bytes:
    """An archive laid out as Microsoft's: PetImages/Cat, PetImages/Dog, a text file beside them."""
    photos = imagegen.make_dataset(tmp_path / "photos", per_class=3)
    archive = zip_of(photos, tmp_path / "kagglecatsanddogs.zip", prefix="PetImages/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("readme[1].txt", "Microsoft PetImages")
    return archive.read_bytes()


def data_for(url: str, body: bytes, archive: Path) -> Data:
    return Data(url=url, sha256=hashlib.sha256(body).hexdigest(), archive=archive)


def test_fetch_downloads_checks_and_keeps_the_archive(tmp_path: Path):
    body = petimages_zip(tmp_path)
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        d = data_for(srv.url + "/pets.zip", body, tmp_path / "ws" / "downloads" / "pets.zip")
        got = getdata.fetch(d, tmp_path / "cache", INGEST, progress=False)
        assert got.downloaded and got.path == d.archive and d.archive.read_bytes() == body
        assert got.bytes == len(body)
        again = getdata.fetch(d, tmp_path / "cache", INGEST, progress=False)
        assert not again.downloaded and len(srv.requests) == 1  # there with its sha256: not asked again


def test_fetch_resumes_a_download_cut_off_in_an_earlier_run(tmp_path: Path):
    body = os.urandom(300_000)
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        url = srv.url + "/pets.zip"
        part = download._Target.of(url, tmp_path / "cache").part  # what a cut-off run left
        part.write_bytes(body[:120_000])
        d = data_for(url, body, tmp_path / "downloads" / "pets.zip")
        got = getdata.fetch(d, tmp_path / "cache", INGEST, progress=False)
        assert srv.requests[0]["Range"] == "bytes=120000-" and got.path.read_bytes() == body


def test_a_wrong_sha256_keeps_nothing_under_the_final_name(tmp_path: Path):
    body = os.urandom(10_000)
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        d = Data(url=srv.url + "/pets.zip", sha256="0" * 64, archive=tmp_path / "downloads" / "pets.zip")
        with pytest.raises(PawflowError, match=f"sha256 is {hashlib.sha256(body).hexdigest()}"):
            getdata.fetch(d, tmp_path / "cache", INGEST, progress=False)
        assert not d.archive.exists()
        # The bad copy is not kept: the next run downloads the archive again (no revalidation of it).
        with pytest.raises(PawflowError):
            getdata.fetch(d, tmp_path / "cache", INGEST, progress=False)
        assert [r.get("If-Modified-Since") for r in srv.requests] == [None, None]


def test_place_copies_across_disks(tmp_path: Path, monkeypatch):
    src, dest = tmp_path / "a.zip", tmp_path / "b" / "a.zip"
    src.write_bytes(b"zip")
    real_replace = os.replace

    def cross_device(a, b):
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", cross_device)
    getdata.place(src, dest)
    assert dest.read_bytes() == b"zip" and not src.exists()


def test_the_shipped_data_section_names_the_keras_examples_archive():
    d = load_params(ROOT / "params.yaml").data
    assert d.url.endswith("/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip")
    assert d.url.startswith("https://download.microsoft.com/") and len(d.sha256) == 64
    assert not d.archive.is_absolute()


def workspace(tmp_path: Path, url: str, sha256: str) -> Path:
    """A project folder whose params.yaml names a missing source and `data:` a local server's archive."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.yaml").write_text("stages: {}\n")
    text = (ROOT / "params.yaml").read_text()
    real = load_params(ROOT / "params.yaml").data
    (ws / "params.yaml").write_text(text.replace(real.url, url).replace(real.sha256, sha256))
    return ws


def test_pawflow_data_gets_the_photos_a_missing_source_asks_for(tmp_path: Path, monkeypatch, capsys):
    body = petimages_zip(tmp_path)
    with FileServer() as srv:
        srv.files["/kagglecatsanddogs_5340.zip"] = body
        ws = workspace(tmp_path, srv.url + "/kagglecatsanddogs_5340.zip", hashlib.sha256(body).hexdigest())
        monkeypatch.chdir(ws)
        # Without the photos, the run is refused in one message that says where they come from and how.
        assert main(["run", "--no-push"]) == 2
        err = capsys.readouterr().err
        assert err.count("pawflow run:") == 1 and err.count("What to do") == 1
        assert "ingest.source '../shared/datasets/petimages-sample' does not exist" in err
        assert "`make data`" in err and "Microsoft's PetImages" in err and len(err.splitlines()) <= 4

        assert main(["data"]) == 0
    out = capsys.readouterr().out
    params = load_params(ws / "params.yaml")
    assert params.ingest.source == "downloads/kagglecatsanddogs_5340.zip"
    assert params.ingest.sha256 == hashlib.sha256(body).hexdigest()
    assert (ws / params.ingest.source).read_bytes() == body
    assert "sha256 checked" in out and "params.yaml: ingest.source" in out
    assert (
        "# a folder, a .zip/.tar(.gz) or an http(s) URL" in (ws / "params.yaml").read_text()
    )  # comments kept
    check_source(params.ingest.source, ws)  # the archive is a source the check (and ingest) accept


def test_pawflow_data_that_fails_changes_nothing_and_exits_1(tmp_path: Path, monkeypatch, capsys):
    with FileServer() as srv:
        srv.files["/kagglecatsanddogs_5340.zip"] = b"not the archive"
        ws = workspace(tmp_path, srv.url + "/kagglecatsanddogs_5340.zip", "ab" * 32)
        before = (ws / "params.yaml").read_text()
        monkeypatch.chdir(ws)
        assert main(["data"]) == 1
    err = capsys.readouterr().err
    assert err.count("pawflow data:") == 1 and "but params.yaml data.sha256 expects abab" in err
    assert (ws / "params.yaml").read_text() == before and not (ws / "downloads").exists()
    assert yaml.safe_load(before)["ingest"]["source"] == "../shared/datasets/petimages-sample"
