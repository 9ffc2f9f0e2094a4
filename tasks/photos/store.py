"""Content-addressed per-photo cache: results keyed by the photo's sha256 and what produced them.

It only saves time: every stage output is fully written on every run, and deleting the cache folder
is always safe. SQLite gives atomic, crash-safe writes and lets several processes share the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from tasks.core.fileio import no_space_cause, no_space_error, no_space_is_a_clear_error

SCHEMA = """
CREATE TABLE IF NOT EXISTS checks (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS thumbs (key TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, sha256 TEXT NOT NULL
);
"""
BUSY_TIMEOUT_MS = 60_000
# write() waits for another process's write lock in steps of this long, back in Python between them: a
# process waiting for the lock still handles Ctrl-C and SIGTERM (SQLite's own wait is one C call).
WAIT_STEP_MS = 200
# Each SQL statement may bind at most this many values.
SQL_BATCH = 500


def store_path(cache_dir: Path) -> Path:
    return cache_dir / "photos.sqlite"


@contextmanager
def connect(cache_dir: Path, busy_ms: int = BUSY_TIMEOUT_MS) -> Iterator[sqlite3.Connection]:
    """Open (creating if needed) the cache; commits on success. A full disk ("database or disk is full")
    ends the block with NoSpace naming the cache file; SQLite has rolled the transaction back. busy_ms:
    how long SQLite waits for another process's lock before it raises "database is locked"."""
    path = store_path(cache_dir)
    with no_space_is_a_clear_error(path):
        cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=busy_ms / 1000)) as con:
            con.execute(f"PRAGMA busy_timeout={busy_ms}")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(SCHEMA)
            with con:
                yield con
    except sqlite3.Error as err:  # only SQLite's: the block may write elsewhere (shard writes its shards)
        cause = no_space_cause(err, path)
        if cause is None:
            raise
        raise no_space_error(path, cause) from None


def write(cache_dir: Path, fill: Callable[[sqlite3.Connection], None]) -> None:
    """One transaction of `fill(con)`, committed; while another process holds the write lock, tried again
    every WAIT_STEP_MS for up to BUSY_TIMEOUT_MS in all (then SQLite's "database is locked" is raised),
    so that a stop reaches a stage waiting for the cache within a fraction of a second."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            with connect(cache_dir, busy_ms=WAIT_STEP_MS) as con:
                fill(con)
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise


def _batches(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), SQL_BATCH):
        yield items[i : i + SQL_BATCH]


def get_checks(con: sqlite3.Connection, keys: Iterable[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for batch in _batches(list(keys)):
        marks = ",".join("?" * len(batch))
        for key, record in con.execute(f"SELECT key, record FROM checks WHERE key IN ({marks})", batch):
            found[key] = json.loads(record)
    return found


def put_checks(con: sqlite3.Connection, records: dict[str, dict]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO checks VALUES (?, ?)",
        [(k, json.dumps(v, sort_keys=True)) for k, v in records.items()],
    )


def get_thumbs(con: sqlite3.Connection, keys: Iterable[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for batch in _batches(list(keys)):
        marks = ",".join("?" * len(batch))
        found.update(con.execute(f"SELECT key, jpeg FROM thumbs WHERE key IN ({marks})", batch))
    return found


def get_thumb_sizes(con: sqlite3.Connection, keys: Iterable[str]) -> dict[str, int]:
    """Bytes of each cached thumbnail (SQLite reads a blob's length without loading the blob)."""
    found: dict[str, int] = {}
    for batch in _batches(list(keys)):
        marks = ",".join("?" * len(batch))
        found.update(con.execute(f"SELECT key, length(jpeg) FROM thumbs WHERE key IN ({marks})", batch))
    return found


def put_thumbs(con: sqlite3.Connection, thumbs: dict[str, bytes]) -> None:
    con.executemany("INSERT OR REPLACE INTO thumbs VALUES (?, ?)", list(thumbs.items()))


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def get_stats(con: sqlite3.Connection) -> dict[str, tuple[tuple[int, int, int], str]]:
    """path -> ((size, mtime_ns, inode), sha256) for every file hashed before."""
    return {p: ((s, m, i), h) for p, s, m, i, h in con.execute("SELECT * FROM stats")}


def put_stats(con: sqlite3.Connection, rows: dict[str, tuple[tuple[int, int, int], str]]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?, ?)",
        [(p, s, m, i, h) for p, ((s, m, i), h) in rows.items()],
    )
