"""tasks/photos/download.py: a URL source downloaded, resumed, retried and revalidated."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from httpserver import FileServer
from sources import (
    run_ingest,
    zip_of,
)

from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file
from tasks.photos import download

# Generous limits: the tests of the limits themselves set their own.
LIMITS = {"deadline_s": 60.0, "max_bytes": 10**9}

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
                **LIMITS,
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
        got = download.download(
            url, tmp_path / "dl", 3, 5, None, progress=False, sleep=sleeps.append, **LIMITS
        )
        assert got.path.read_bytes() == body and not got.from_cache and not part.exists()
        assert [r.get("Range") for r in srv.requests] == ["bytes=80000-", None] and sleeps == [0.5]


# ----------------------------------------------------------------- hostile servers: deadline, size


def fetch_within(srv: FileServer, name: str, dest: Path, deadline_s: float, **kw) -> float:
    """Download srv's file `name` with a per-read timeout far longer than the server's pauses and the
    given deadline; the PawflowError it must end with is raised; returns the seconds it took."""
    started = time.monotonic()
    try:
        download.download(
            srv.url + name,
            dest,
            retries=kw.pop("retries", 3),
            timeout_s=30,
            expected_sha256=None,
            progress=False,
            deadline_s=deadline_s,
            max_bytes=kw.pop("max_bytes", 10**9),
            **kw,
        )
    finally:
        elapsed = time.monotonic() - started
    raise AssertionError(f"the download ended normally after {elapsed:.1f}s")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_server_that_drips_a_byte_at_a_time_is_stopped_at_the_deadline(where: str, tmp_path: Path):
    """One byte every 0.2 s never trips a 30 s per-read timeout: without an overall deadline the 4,000
    bytes would take 13 minutes (a real archive: forever). The deadline ends it, blocked read or not."""
    with FileServer() as srv:
        srv.files["/pets.zip"] = os.urandom(4_000)
        srv.drip = 0.2
        srv.drip_headers = where == "headers"
        started = time.monotonic()
        with pytest.raises(PawflowError) as caught:
            fetch_within(srv, "/pets.zip", tmp_path / "dl", deadline_s=1.5)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert srv.url + "/pets.zip" in message and "ingest.download_deadline_s=1.5" in message
    assert 1.5 <= elapsed < 5, elapsed


@pytest.mark.slow  # ~4 s: keeps make test-fast under 3 min
@pytest.mark.timeout(60)
def test_the_deadline_spans_retries_and_resumes(tmp_path: Path):
    body = os.urandom(200_000)
    with FileServer() as srv:
        srv.files["/pets.zip"] = body
        srv.fail_next = 1_000  # 503 forever: backoff waits 0.5, 1, 2, ... s
        started = time.monotonic()
        with pytest.raises(PawflowError, match=r"ingest\.download_deadline_s=2\b"):
            fetch_within(srv, "/pets.zip", tmp_path / "a", deadline_s=2, retries=20)
        assert time.monotonic() - started < 5
        # A dropped connection, then a resume that drips: the deadline counts from the first attempt.
        srv.fail_next, srv.cut_next = 0, 100_000
        part = download._Target.of(srv.url + "/pets.zip", tmp_path / "b").part

        def drip_from_now_on(seconds: float) -> None:  # the backoff wait before the resume
            srv.drip = 0.2
            time.sleep(seconds)

        started = time.monotonic()
        with pytest.raises(PawflowError, match="download_deadline_s"):
            fetch_within(srv, "/pets.zip", tmp_path / "b", deadline_s=2, sleep=drip_from_now_on)
        assert time.monotonic() - started < 5
        first, resume = (r.get("Range") for r in srv.requests[-2:])
        resumed_at = int(resume.removeprefix("bytes=").rstrip("-"))
        assert first is None and 0 < resumed_at <= 100_000
        assert resumed_at <= part.stat().st_size < 200_000  # what came before the drip is kept


def test_a_download_larger_than_the_cap_is_refused_announced_or_not(tmp_path: Path):
    with FileServer() as srv:
        srv.files["/big.zip"] = os.urandom(300_000)
        url = srv.url + "/big.zip"
        part = download._Target.of(url, tmp_path / "dl").part
        with pytest.raises(PawflowError) as caught:
            fetch_within(srv, "/big.zip", tmp_path / "dl", deadline_s=30, max_bytes=100_000)
        assert "announces 300,000 bytes" in str(caught.value)
        assert url in str(caught.value) and "ingest.max_download_bytes=100,000" in str(caught.value)
        assert len(srv.requests) == 1 and not part.exists()  # refused before reading the body
        srv.no_length = True  # no Content-Length: the cap is enforced on what arrives
        with pytest.raises(PawflowError, match=r"sent more than 100,000 bytes"):
            fetch_within(srv, "/big.zip", tmp_path / "dl", deadline_s=30, max_bytes=100_000)
        assert not part.exists() and not download._Target.of(url, tmp_path / "dl").final.exists()
        srv.files["/small.zip"] = os.urandom(50_000)  # under the cap, without a length: whole
        got = download.download(
            srv.url + "/small.zip",
            tmp_path / "dl",
            3,
            5,
            None,
            progress=False,
            deadline_s=30,
            max_bytes=100_000,
        )
        assert got.path.read_bytes() == srv.files["/small.zip"]
