"""A source given as a URL: downloaded into the cache, resuming a partial file (HTTP Range) and
retrying with exponential backoff; a complete earlier download is revalidated (ETag, Last-Modified).

Two limits hold however the server behaves: a deadline for the whole download (every attempt, resume and
wait between them: ingest.download_deadline_s), enforced while a read is blocked, not only between reads
(a server that sends a byte every 20 s never lets a per-read timeout fire); and a size cap
(ingest.max_download_bytes), checked against what the server announces before anything is received and
against what it sends.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tasks.core.errors import PawflowError
from tasks.core.fileio import no_space_is_a_clear_error, sha256_file, write_json
from tasks.photos.archives import ARCHIVE_SUFFIXES

log = logging.getLogger(__name__)

# Small enough that a dropped connection loses little of what was already received.
DOWNLOAD_BLOCK = 64 * 1024
# The longest wait between two attempts (exponential backoff from BACKOFF_FIRST_S).
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


# --------------------------------------------------------------------------- the deadline


class Deadline:
    """The end of one download, `seconds` after it started, across all its attempts. While an attempt is
    under way (`attempt()`), a timer shuts its sockets down at the deadline: a connect, or a read of
    headers or body blocked on a server that drips a byte now and then, ends then and there."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.ends = clock() + seconds
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def left(self) -> float:
        return max(0.0, self.ends - self.clock())

    def watch(self, sock: socket.socket) -> None:
        """A socket of the attempt under way: shut down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                self._shut(sock)

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        token = _DEADLINE.set(self)
        timer = threading.Timer(self.left(), self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            _DEADLINE.reset(token)
            with self._lock:
                self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


# The deadline of the attempt under way in this thread (or context); read by the connections it opens.
_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("download_deadline", default=None)


def _watched(sock: socket.socket | None) -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and sock is not None:
        deadline.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watched(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watched(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections (redirects and proxies included) report their sockets to the
    deadline of the attempt that opened them."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:  # HTTPAdapter's, passed on as they are
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _too_slow(url: str, deadline: Deadline, part: Path) -> PawflowError:
    got = part.stat().st_size if part.exists() else 0
    kept = f"; the {got:,} bytes received so far are kept and the next run resumes from there" if got else ""
    return PawflowError(
        f"{url}: the download did not finish within ingest.download_deadline_s={deadline.seconds:g} s{kept}.",
        "If the server is only slow, raise ingest.download_deadline_s in params.yaml; otherwise download "
        "the file yourself and set ingest.source to it.",
    )


def _too_big(url: str, size: int, max_bytes: int, announced: bool) -> PawflowError:
    said = f"it announces {size:,} bytes" if announced else f"it sent more than {size:,} bytes"
    return PawflowError(
        f"{url}: the download is larger than ingest.max_download_bytes={max_bytes:,} ({said}); "
        "nothing of it is kept.",
        "Check the URL (is it the archive you meant?), or raise ingest.max_download_bytes in params.yaml.",
    )


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
    *,
    deadline_s: float,
    max_bytes: int,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Downloaded:
    """Download url into folder, resuming a partial file and retrying with exponential backoff, within
    deadline_s in all (every attempt and wait) and max_bytes (PawflowError naming the params key).

    A complete earlier download is revalidated with If-Modified-Since/If-None-Match, not fetched again.
    """
    target = _Target.of(url, folder)
    meta = _read_meta(target.meta) if target.final.exists() else {}
    deadline = Deadline(deadline_s)
    last_error: Exception | None = None
    with _session() as session:
        for attempt in range(retries):
            if attempt:
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1))
                log.warning(
                    "download of %s failed (%s); retry %d/%d in %.1fs",
                    url,
                    last_error,
                    attempt,
                    retries - 1,
                    delay,
                )
                sleep(min(delay, deadline.left()))
            left = deadline.left()
            if not left:
                raise _too_slow(url, deadline, target.part)
            # Reads wait timeout_s each; the deadline's timer ends the attempt when the total runs out.
            timeout = (min(timeout_s, left), timeout_s)
            try:
                with deadline.attempt():
                    got = _attempt(session, url, target, meta, timeout, max_bytes, progress)
                return _verified(got, expected_sha256, url)
            except (requests.RequestException, OSError) as err:  # worth another attempt, time allowing
                if deadline.expired.is_set() or not deadline.left():
                    raise _too_slow(url, deadline, target.part) from None
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


def _attempt(
    session: requests.Session,
    url: str,
    target: _Target,
    meta: dict,
    timeout: tuple[float, float],
    max_bytes: int,
    progress: bool,
) -> Downloaded:
    """One request: the cached file if the server says it is unchanged, else the body saved to the
    partial file (appended to it on 206) and renamed once complete. Raises OSError when another attempt
    may succeed, PawflowError when it cannot. timeout: (connect, each read), as requests takes it."""
    headers = _request_headers(target, meta)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 304:
            digest = meta.get("sha256") or sha256_file(target.final)
            return Downloaded(target.final, digest, target.final.stat().st_size, True)
        _check_status(url, resp, target)
        got = _receive(url, resp, target, max_bytes, progress)
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


def _receive(url: str, resp: requests.Response, target: _Target, max_bytes: int, progress: bool) -> int:
    """The response body into the partial file (after what it holds, on 206), with a progress bar; the
    partial file's size. Raises OSError when the body ends before its Content-Length, PawflowError when
    it is (or would be) larger than max_bytes (the partial file is then removed)."""
    append = resp.status_code == 206
    done = target.part.stat().st_size if append and target.part.exists() else 0
    size = resp.headers.get("Content-Length")
    total = done + int(size) if size is not None and size.isdigit() else None
    if total is not None and total > max_bytes:
        target.part.unlink(missing_ok=True)
        raise _too_big(url, total, max_bytes, announced=True)
    with (
        no_space_is_a_clear_error(target.part),
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
        got = done
        for block in resp.iter_content(DOWNLOAD_BLOCK):
            got += len(block)
            if got > max_bytes:
                break
            out.write(block)
            bar.update(len(block))
    if got > max_bytes:
        target.part.unlink(missing_ok=True)
        raise _too_big(url, max_bytes, max_bytes, announced=False)
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
