"""tasks/store.py: the per-photo cache keeps what was put, in batches past SQLite's variable limit."""

from __future__ import annotations

from pathlib import Path

from tasks import store


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
