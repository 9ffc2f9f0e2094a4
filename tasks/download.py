"""A source given as a URL: downloaded into the cache, resuming a partial file (HTTP Range) and
retrying with exponential backoff; a complete earlier download is revalidated (ETag, Last-Modified)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests
from tqdm import tqdm

from tasks.archives import ARCHIVE_SUFFIXES
from tasks.errors import PawflowError
from tasks.fileio import sha256_file, write_json

log = logging.getLogger(__name__)

# Small enough that a dropped connection loses little of what was already received.
DOWNLOAD_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    bytes: int
    from_cache: bool


def _filename_for(url: str) -> str:
    name = PurePosixPath(requests.utils.urlparse(url).path).name or "download"
    return name if name.lower().endswith(ARCHIVE_SUFFIXES) else name + ".archive"


@dataclass(frozen=True)
class _Target:
    """Where a URL's download lives in the cache: the file, its partial download, and what the server
    said of the complete file (ETag, Last-Modified, sha256) for revalidating it later."""

    final: Path
    part: Path
    meta: Path

    @classmethod
    def of(cls, url: str, folder: Path) -> _Target:
        folder = folder / hashlib.sha256(url.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / _filename_for(url)
        return cls(final, final.with_name(final.name + ".part"), final.with_name(final.name + ".meta.json"))


def download(
    url: str,
    folder: Path,
    retries: int,
    timeout_s: float,
    expected_sha256: str | None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Downloaded:
    """Download url into folder, resuming a partial file and retrying with exponential backoff.

    A complete earlier download is revalidated with If-Modified-Since/If-None-Match, not fetched again.
    """
    target = _Target.of(url, folder)
    meta = _read_meta(target.meta) if target.final.exists() else {}
    last_error: Exception | None = None
    for attempt in range(retries):
        if attempt:
            delay = min(30.0, 0.5 * 2 ** (attempt - 1))
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs",
                url,
                last_error,
                attempt,
                retries - 1,
                delay,
            )
            sleep(delay)
        try:
            return _verified(_attempt(url, target, meta, timeout_s, progress), expected_sha256, url)
        except (requests.RequestException, OSError) as err:  # worth another attempt
            last_error = err
    raise PawflowError(
        f"{url}: download failed after {retries} attempts ({last_error}).",
        "Check the URL and the network, or download it yourself and set ingest.source to the local file.",
    )


def _request_headers(target: _Target, meta: dict) -> dict[str, str]:
    """Revalidate a complete earlier download, or ask for the rest of a partial one."""
    headers = {}
    if meta and target.final.exists():
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    elif target.part.exists() and target.part.stat().st_size:
        headers["Range"] = f"bytes={target.part.stat().st_size}-"
    return headers


def _attempt(url: str, target: _Target, meta: dict, timeout_s: float, progress: bool) -> Downloaded:
    """One request: the cached file if the server says it is unchanged, else the body saved to the
    partial file (appended to it on 206) and renamed once complete. Raises OSError when another attempt
    may succeed, PawflowError when it cannot."""
    with requests.get(url, headers=_request_headers(target, meta), stream=True, timeout=timeout_s) as resp:
        if resp.status_code == 304:
            digest = meta.get("sha256") or sha256_file(target.final)
            return Downloaded(target.final, digest, target.final.stat().st_size, True)
        _check_status(url, resp, target)
        got = _receive(resp, target, progress)
    digest = sha256_file(target.part)
    os.replace(target.part, target.final)
    _write_meta(
        target.meta,
        {
            "url": url,
            "etag": resp.headers.get("ETag"),
            "last_modified": resp.headers.get("Last-Modified"),
            "sha256": digest,
            "bytes": got,
        },
    )
    return Downloaded(target.final, digest, got, False)


def _check_status(url: str, resp: requests.Response, target: _Target) -> None:
    if resp.status_code == 416 and target.part.exists():
        target.part.unlink()  # the server has less than we have: start over
        raise OSError("range not satisfiable; restarting")
    if resp.status_code >= 500 or resp.status_code == 429:
        raise OSError(f"HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise PawflowError(
            f"{url}: HTTP {resp.status_code} {resp.reason}.",
            "Check ingest.source: the URL must point to a .zip or .tar(.gz) file.",
        )


def _receive(resp: requests.Response, target: _Target, progress: bool) -> int:
    """The response body into the partial file (after what it holds, on 206), with a progress bar; the
    partial file's size. Raises OSError when the body ends before its Content-Length."""
    append = resp.status_code == 206
    done = target.part.stat().st_size if append and target.part.exists() else 0
    size = resp.headers.get("Content-Length")
    total = done + int(size) if size is not None else None
    with (
        open(target.part, "ab" if append else "wb") as out,
        tqdm(
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            desc=f"download {target.final.name}",
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        for block in resp.iter_content(DOWNLOAD_BLOCK):
            out.write(block)
            bar.update(len(block))
    got = target.part.stat().st_size
    if total is not None and got != total:
        raise OSError(f"connection closed after {got} of {total} bytes")
    return got


def _verified(d: Downloaded, expected: str | None, url: str) -> Downloaded:
    if expected and d.sha256 != expected:
        raise PawflowError(
            f"{url}: sha256 is {d.sha256}, but ingest.sha256 expects {expected}.",
            "The file changed on the server or was corrupted: check it, then update "
            "ingest.sha256 (or set it to null).",
        )
    return d


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    write_json(path, meta)
