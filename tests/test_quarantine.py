"""tasks/photos/quarantine.py: batches the label audit holds out, and releasing them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.core.errors import PawflowError
from tasks.photos import quarantine


def photos(*names: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"path": [f"Cat/{n}.jpg" for n in names], "label": "Cat", "sha256": [n * 64 for n in names]}
    )


def test_a_batch_is_named_by_its_photos_bytes_whatever_their_order():
    a = quarantine.new_batch(photos("a", "b", "c"), "why")
    b = quarantine.new_batch(photos("c", "a", "b"), "other words")
    assert a.id == b.id == quarantine.batch_id(["c" * 64, "a" * 64, "b" * 64]) and len(a.id) == 12
    assert [p.path for p in a.photos] == ["Cat/a.jpg", "Cat/b.jpg", "Cat/c.jpg"]
    assert a.id != quarantine.new_batch(photos("a", "b"), "why").id


def test_held_and_seen_and_release_by_prefix_or_all():
    one, two = quarantine.new_batch(photos("a", "b"), "one"), quarantine.new_batch(photos("c"), "two")
    q = quarantine.add(quarantine.add(quarantine.Quarantine(), one), two)
    assert quarantine.add(q, one) == q  # the same batch is not held twice
    assert q.held() == q.seen() == {"a" * 64, "b" * 64, "c" * 64}
    q2, released = quarantine.release(q, [one.id[:5]])
    assert [b.id for b in released] == [one.id]
    assert q2.held() == {"c" * 64} and q2.seen() == q.seen()  # released photos are never audited again
    assert [b.id for b in q2.held_batches()] == [two.id]
    q3, released = quarantine.release(q2, [], everything=True)
    assert [b.id for b in released] == [two.id] and q3.held() == set()
    assert quarantine.release(q3, [], everything=True)[1] == []


def test_an_unknown_or_released_batch_is_refused_with_the_held_ones_named():
    one = quarantine.new_batch(photos("a"), "one")
    q, _ = quarantine.release(quarantine.add(quarantine.Quarantine(), one), [one.id])
    with pytest.raises(PawflowError, match=r"'nope' matches no batch held in quarantine \(held: none\)"):
        quarantine.release(q, ["nope"])
    with pytest.raises(PawflowError, match="matches no batch"):
        quarantine.release(q, [one.id])  # released already


def test_an_ambiguous_prefix_is_refused():
    batches = [quarantine.new_batch(photos(c), c) for c in "abcdefghijklmnopqrstuvwxyz"]
    q = quarantine.Quarantine(batches=tuple(batches))
    first = {}
    clash = next(b.id[0] for b in batches if first.setdefault(b.id[0], b) is not b)  # 26 ids, 16 digits
    with pytest.raises(PawflowError, match="matches more than one batch"):
        quarantine.release(q, [clash])


def test_round_trip_is_deterministic_and_a_damaged_file_is_one_message(tmp_path: Path):
    assert quarantine.read(tmp_path) == quarantine.Quarantine()
    q = quarantine.add(quarantine.Quarantine(), quarantine.new_batch(photos("a", "b"), "why"))
    quarantine.write(tmp_path, q)
    first = quarantine.path(tmp_path).read_bytes()
    assert quarantine.read(tmp_path) == q
    quarantine.write(tmp_path, quarantine.read(tmp_path))
    assert quarantine.path(tmp_path).read_bytes() == first
    quarantine.path(tmp_path).write_text('{"batches": [{"id": 1}]}')
    with pytest.raises(PawflowError, match="is not a quarantine list pawflow wrote"):
        quarantine.read(tmp_path)
