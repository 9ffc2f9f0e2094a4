"""Dedup: exact and near duplicates collapse within a label; cross-label copies are conflicts."""

from __future__ import annotations

import imagegen
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_images import SETTINGS

from tasks.dedup import (
    HashIndex,
    distances,
    find_duplicates,
    find_duplicates_indexed,
    hash_bits,
    indexed_pairs,
    near_pairs,
    report,
)
from tasks.photos.images import check_bytes


def brute_force_pairs(bits: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """The reference answer: every pair compared."""
    n = len(bits)
    i, j = np.triu_indices(n, k=1)
    d = distances(bits, i, j) if n > 1 else np.zeros(0, dtype=int)
    keep = d <= max_distance
    return [(int(a), int(b), int(x)) for a, b, x in zip(i[keep], j[keep], d[keep], strict=True)]


def photo_row(path: str, data: bytes) -> dict:
    check, _ = check_bytes(data, SETTINGS)
    assert check.status == "kept"
    return {
        "path": path,
        "label": path.split("/")[0],
        "sha256": check.sha256,
        "phash": check.phash,
        "width": check.width,
        "height": check.height,
        "bytes": check.bytes,
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def distinct(n: int, label: str = "Cat", start: int = 0) -> list[dict]:
    return [photo_row(f"{label}/{i}.jpg", imagegen.jpeg(start + i, (96, 80))) for i in range(n)]


def test_distinct_photos_are_all_kept():
    dd = find_duplicates(frame(distinct(12)), max_distance=4)
    assert (dd["status"] == "kept").all()
    assert dd["group"].nunique() == 12


def test_exact_duplicate_collapses_to_one():
    data = imagegen.jpeg(1, (96, 80))
    rows = [photo_row("Dog/a.jpg", data), photo_row("Dog/b.jpg", data), *distinct(3, "Dog", 10)]
    dd = find_duplicates(frame(rows), 4).set_index("path")
    assert dd.at["Dog/a.jpg", "status"] == "kept"
    assert (dd.at["Dog/b.jpg", "status"], dd.at["Dog/b.jpg", "kind"]) == ("duplicate", "exact")
    assert dd.at["Dog/b.jpg", "duplicate_of"] == "Dog/a.jpg"
    assert dd.at["Dog/a.jpg", "group"] == dd.at["Dog/b.jpg", "group"]


def test_near_duplicate_keeps_the_larger_photo():
    img = imagegen.photo(5, (200, 160))
    big = imagegen.encode(img, "JPEG", quality=95)
    small = imagegen.encode(img.resize((100, 80)), "JPEG", quality=60)
    rows = [photo_row("Cat/small.jpg", small), photo_row("Cat/big.jpg", big), *distinct(3, "Cat", 20)]
    dd = find_duplicates(frame(rows), 4).set_index("path")
    assert dd.at["Cat/big.jpg", "status"] == "kept"
    assert (dd.at["Cat/small.jpg", "status"], dd.at["Cat/small.jpg", "kind"]) == ("duplicate", "near")
    assert dd.at["Cat/small.jpg", "distance"] <= 4


def test_same_photo_under_two_labels_is_a_conflict_and_dropped():
    data = imagegen.jpeg(7, (96, 80))
    rows = [
        photo_row("Cat/x.jpg", data),
        photo_row("Dog/x.jpg", data),
        photo_row("Dog/y.jpg", data),
        *distinct(2, "Cat", 30),
    ]
    dd = find_duplicates(frame(rows), 4)
    conflict = dd[dd["status"] == "conflict"]
    assert sorted(conflict["path"]) == ["Cat/x.jpg", "Dog/x.jpg", "Dog/y.jpg"]
    rep = report(dd)
    assert rep["conflict"] == 3 and rep["conflict_groups"] == 1
    assert {f["label"] for f in rep["conflicts"][0]["files"]} == {"Cat", "Dog"}


def test_max_distance_is_the_exact_threshold():
    img = imagegen.photo(5, (200, 160))
    a = imagegen.encode(img, "JPEG", quality=95)
    b = imagegen.encode(img.rotate(4), "JPEG", quality=95)
    rows = [photo_row("Cat/a.jpg", a), photo_row("Cat/b.jpg", b)]
    d = int(np.count_nonzero(hash_bits([rows[0]["phash"]]) != hash_bits([rows[1]["phash"]])))
    assert d > 0
    assert (find_duplicates(frame(rows), d)["status"] == "duplicate").sum() == 1
    assert (find_duplicates(frame(rows), d - 1)["status"] == "kept").all()


def test_result_does_not_depend_on_row_order():
    rows = [*distinct(6), photo_row("Cat/dup.jpg", imagegen.jpeg(2, (96, 80)))]
    a = find_duplicates(frame(rows), 4)
    b = find_duplicates(frame(rows[::-1]), 4)
    assert a.equals(b)


@pytest.mark.parametrize("max_distance", [0, 1, 4, 8, 12])
@pytest.mark.parametrize("nbytes", [8, 32])
def test_index_matches_brute_force_on_random_hashes(max_distance: int, nbytes: int):
    rng = np.random.default_rng(max_distance * 100 + nbytes)
    base = rng.integers(0, 256, size=(150, nbytes), dtype=np.uint8)
    bits = np.unpackbits(np.vstack([base, base]), axis=1)
    for r in range(150, 300):
        bits[r, rng.integers(0, nbytes * 8, size=rng.integers(0, 2 * max_distance + 2))] ^= 1
    bits[:10] = bits[0]
    assert near_pairs(bits, max_distance) == brute_force_pairs(bits, max_distance)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=60),
    st.integers(0, 10),
    st.integers(0, 2**64 - 1),
)
def test_index_matches_brute_force_property(values: list[int], max_distance: int, flips: int):
    # Clustered hashes: each value also appears with a few bits flipped.
    values = values + [v ^ (flips & ((1 << 7) - 1)) for v in values[:10]]
    hexes = [f"{v:016x}" for v in values]
    bits = hash_bits(hexes)
    if len(values) == 0:
        assert near_pairs(np.zeros((0, 64), np.uint8), max_distance) == []
        return
    assert near_pairs(bits, max_distance) == brute_force_pairs(bits, max_distance)


def hash_frame(values: list[int], labels: list[int], shas: list[int]) -> pd.DataFrame:
    """Photos whose perceptual hashes are given (clean would compute them): labels and byte copies too."""
    n = len(values)
    return pd.DataFrame(
        {
            "path": [f"{'Cat' if labels[i] else 'Dog'}/{i:03d}.jpg" for i in range(n)],
            "label": ["Cat" if labels[i] else "Dog" for i in range(n)],
            "sha256": [f"{shas[i]:064x}" for i in range(n)],
            "phash": [f"{v:016x}" for v in values],
            "width": [100 + (v % 3) * 10 for v in values],
            "height": 100,
            "bytes": [1000 + v % 7 for v in values],
        }
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
    st.lists(st.integers(0, 2**12 - 1), min_size=0, max_size=40),
    st.integers(0, 8),
    st.data(),
)
def test_dedup_with_the_index_equals_a_from_scratch_dedup(
    seeds: list[int], flips: list[int], max_distance: int, data: st.DataObject
):
    """A run that matches new photos against the last run's index gives exactly a from-scratch result,
    whatever came and went in between (photos added, removed, relabelled; byte copies; near copies)."""
    values = seeds + [seeds[i % len(seeds)] ^ f for i, f in enumerate(flips)]  # clustered hashes
    n = len(values)
    labels = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    shas = data.draw(st.lists(st.integers(0, n), min_size=n, max_size=n))
    everything = hash_frame(values, labels, shas)
    before = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    now = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    last_run = everything[before]
    tonight = everything[now]
    _, index = find_duplicates_indexed(last_run, max_distance)
    grown, new_index = find_duplicates_indexed(tonight, max_distance, index)
    scratch, scratch_index = find_duplicates_indexed(tonight, max_distance)
    assert grown.equals(scratch)
    # The pairs behind it: the brute force over the photos of tonight.
    bits = hash_bits(tonight.sort_values("path")["phash"].tolist()) if len(tonight) else np.zeros((0, 64))
    if len(tonight):
        assert indexed_pairs(bits, max_distance, index)[0] == brute_force_pairs(bits, max_distance)
    # The index it leaves is the one a from-scratch run leaves: no drift night after night.
    assert np.array_equal(new_index.packed, scratch_index.packed)
    assert np.array_equal(new_index.pairs, scratch_index.pairs)


def test_new_photos_only_are_compared_and_the_index_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    values = [int(v) for v in rng.integers(0, 2**63, 300)]
    rows = hash_frame(values, [i % 2 for i in range(300)], list(range(300)))
    _, index = find_duplicates_indexed(rows.iloc[:280], 4)
    assert index.fresh == 280
    index.save(tmp_path / "index.npz")
    loaded = HashIndex.load(tmp_path / "index.npz", 4, 8)
    assert loaded is not None and np.array_equal(loaded.pairs, index.pairs)
    grown, again = find_duplicates_indexed(rows, 4, loaded)
    assert again.fresh == 20
    assert grown.equals(find_duplicates(rows, 4))


@pytest.mark.parametrize("content", [b"", b"not an npz", None])
def test_an_unusable_index_is_ignored(tmp_path, content: bytes | None):
    """The index is disposable: missing, truncated, or made for another distance -> None (full compare)."""
    path = tmp_path / "index.npz"
    if content is None:
        HashIndex.empty(2, 8).save(path)  # another max_distance
    else:
        path.write_bytes(content)
    assert HashIndex.load(path, 4, 8) is None
    assert HashIndex.load(tmp_path / "missing.npz", 4, 8) is None


def test_excluded_and_quarantined_photos_are_held_out_before_grouping():
    """A misfiled copy that the exclude list names (or a quarantine holds) makes no label conflict: the
    good copy stays kept; the held photos are listed with their reasons, each in its own group."""
    from tasks.dedup import held_out, with_held

    cats = distinct(4)
    misfiled = {**cats[0], "path": "Dog/misfiled.jpg", "label": "Dog"}  # Cat/0.jpg's bytes under Dog
    suspect = distinct(1, label="Dog", start=50)[0]
    kept = frame([*cats, misfiled, suspect])
    excluded = pd.DataFrame({"path": ["Dog/misfiled.jpg"], "reason": ["a cat in the dog folder"]})
    held = held_out(kept, excluded, {suspect["sha256"]: "label audit batch abc"})
    assert held[["path", "status", "reason"]].values.tolist() == [
        ["Dog/0.jpg", "quarantined", "label audit batch abc"],
        ["Dog/misfiled.jpg", "excluded", "a cat in the dog folder"],
    ]
    grouped = find_duplicates(kept[~kept["path"].isin(held["path"])], max_distance=4)
    dd = with_held(grouped, held, kept)
    assert dd["path"].tolist() == sorted(kept["path"])
    assert dict(zip(dd["path"], dd["status"], strict=True)) == {
        "Cat/0.jpg": "kept",  # without the hold-out: a conflict, and both copies dropped
        "Cat/1.jpg": "kept",
        "Cat/2.jpg": "kept",
        "Cat/3.jpg": "kept",
        "Dog/0.jpg": "quarantined",
        "Dog/misfiled.jpg": "excluded",
    }
    assert find_duplicates(kept, 4).set_index("path").at["Cat/0.jpg", "status"] == "conflict"
    rep = report(dd, held)
    assert (rep["kept"], rep["excluded"], rep["quarantined"], rep["conflict"]) == (4, 1, 1, 0)
    assert rep["excluded_photos"] == [{"path": "Dog/misfiled.jpg", "reason": "a cat in the dog folder"}]
    assert rep["quarantined_photos"] == [{"path": "Dog/0.jpg", "reason": "label audit batch abc"}]
    assert rep["kept_per_label"] == {"Cat": 4}
