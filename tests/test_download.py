"""tasks/download.py: a URL source downloaded, resumed, retried and revalidated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from httpserver import FileServer
from sources import (
    run_ingest,
    zip_of,
)

from tasks import download
from tasks.errors import PawflowError
from tasks.fileio import sha256_file

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

        def fetch(name: str) -> download.Downloaded:
            return download.download(
                srv.url + name,
                tmp_path / "dl",
                retries=4,
                timeout_s=5,
                expected_sha256=None,
                progress=False,
                sleep=sleeps.append,
            )

        assert fetch("/pets.zip").path.read_bytes() == body and sleeps == [0.5, 1.0]
        big = os.urandom(1_000_000)
        srv.files["/big.zip"] = big
        srv.cut_next = 400_000
        assert fetch("/big.zip").path.read_bytes() == big
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


def test_a_partial_file_longer_than_the_servers_is_dropped_and_fetched_again(tmp_path: Path):
    body = os.urandom(50_000)
    sleeps: list[float] = []
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        url = srv.url + "/pets.zip"
        part = download._Target.of(url, tmp_path / "dl").part
        part.write_bytes(os.urandom(80_000))  # left by a download of a file since replaced by a smaller one
        got = download.download(url, tmp_path / "dl", 3, 5, None, progress=False, sleep=sleeps.append)
        assert got.path.read_bytes() == body and not got.from_cache and not part.exists()
        assert [r.get("Range") for r in srv.requests] == ["bytes=80000-", None] and sleeps == [0.5]
