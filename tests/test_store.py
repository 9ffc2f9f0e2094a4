"""tasks/photos/store.py: the per-photo cache keeps what was put, in batches past SQLite's variable limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.fileio import NoSpace
from tasks.photos import store


def test_checks_thumbs_and_stats_read_back(tmp_path: Path):
    keys = [f"k{i:04d}" for i in range(store.SQL_BATCH * 2 + 3)]  # more than one batch per query
    with store.connect(tmp_path) as con:
        store.put_checks(con, {k: {"status": "kept", "n": i} for i, k in enumerate(keys)})
        store.put_thumbs(con, {k: k.encode() * 3 for k in keys[:5]})
        store.put_stats(con, {"Cat/a.jpg": ((10, 20, 30), "ab")})
    with store.connect(tmp_path) as con:  # a second connection: it was committed
        checks = store.get_checks(con, [*keys, "missing"])
        assert len(checks) == len(keys) and checks["k0007"] == {"status": "kept", "n": 7}
        assert store.get_thumbs(con, ["k0001", "k0100"]) == {"k0001": b"k0001k0001k0001"}
        assert store.get_thumb_sizes(con, keys[:2]) == {"k0000": 15, "k0001": 15}
        assert store.get_stats(con) == {"Cat/a.jpg": ((10, 20, 30), "ab")}


def test_stat_key_changes_with_size_mtime_or_inode(tmp_path: Path):
    p = tmp_path / "f"
    p.write_bytes(b"one")
    before = store.stat_key(p.stat())
    p.write_bytes(b"three")
    assert store.stat_key(p.stat()) != before


def test_a_full_disk_is_one_message_naming_the_cache_and_the_last_batch_is_rolled_back(tmp_path: Path):
    """SQLite's "database or disk is full" (here its page limit, which fails the same way a full disk
    does) becomes NoSpace naming the cache file; what was committed before stays readable."""
    with store.connect(tmp_path) as con:
        store.put_checks(con, {"kept": {"status": "kept"}})
    with pytest.raises(NoSpace) as caught, store.connect(tmp_path) as con:
        con.execute("PRAGMA max_page_count = 1")  # no page more than it holds now
        store.put_thumbs(con, {f"k{i}": bytes(50_000) for i in range(10)})
    assert f"no space left while writing {store.store_path(tmp_path)} (database or disk is full)" in str(
        caught.value
    )
    with store.connect(tmp_path) as con:
        assert store.get_checks(con, ["kept"]) == {"kept": {"status": "kept"}}
        assert store.get_thumb_sizes(con, ["k0"]) == {}
