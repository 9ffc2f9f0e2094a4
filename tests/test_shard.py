"""The split: stratified, leakage-safe (groups never straddle) and growth-stable (the ledger)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.shard import SPLITS, assign, plan_shards, shard_name

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def photos(
    n: int, label_of=lambda i: "Cat" if i % 2 else "Dog", groups: dict[int, int] | None = None, start: int = 0
) -> pd.DataFrame:
    """n photos; groups maps photo index -> group leader index (duplicates)."""
    groups = groups or {}
    rows = []
    for i in range(start, start + n):
        leader = groups.get(i, i)
        sha = hashlib.sha256(f"photo-{i}".encode()).hexdigest()
        rows.append(
            {
                "path": f"{label_of(leader)}/{i}.jpg",
                "label": label_of(leader),
                "sha256": sha,
                "group": f"g{leader}",
                "status": "kept" if leader == i else "duplicate",
            }
        )
    return pd.DataFrame(rows)


def split_of(rows: pd.DataFrame) -> dict[str, str]:
    return dict(zip(rows["sha256"], rows["split"], strict=True))


def test_every_split_is_stratified_within_a_few_points():
    rows, _, _ = assign(photos(1000, label_of=lambda i: "Cat" if i % 3 else "Dog"), None, FRACTIONS, "s")
    overall = (rows["label"] == "Dog").mean()
    for split in SPLITS:
        part = rows[rows["split"] == split]
        assert abs((part["label"] == "Dog").mean() - overall) < 0.02
        assert abs(len(part) / len(rows) - FRACTIONS[split]) < 0.01


def test_tiny_dataset_gets_exact_quotas():
    rows, _, _ = assign(photos(40), None, FRACTIONS, "s")
    counts = rows.groupby(["label", "split"]).size().unstack()
    assert counts.loc["Cat"].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert counts.loc["Dog"].to_dict() == {"test": 3, "train": 14, "val": 3}


def test_duplicate_groups_never_straddle_splits():
    groups = {i: i - 1 for i in range(1, 300, 7)}
    rows, _, _ = assign(photos(300, groups=groups), None, FRACTIONS, "s")
    assert (rows.groupby("group")["split"].nunique() == 1).all()


def test_adding_photos_never_moves_old_ones():
    old, ledger, _ = assign(photos(200), None, FRACTIONS, "s")
    grown, _, stats = assign(pd.concat([photos(200), photos(60, start=200)]), ledger, FRACTIONS, "s")
    before, after = split_of(old), split_of(grown)
    assert all(after[sha] == split for sha, split in before.items())
    assert stats.moved_photos == 0 and stats.new_groups == 60


def test_new_photo_joining_an_old_group_follows_it():
    old, ledger, _ = assign(photos(50), None, FRACTIONS, "s")
    newcomer = photos(1, start=50, groups={50: 7})  # a near copy of photo 7, arriving later
    seven = old[old["path"].str.endswith("/7.jpg")].iloc[0]
    newcomer["group"] = seven["group"]
    grown, _, _ = assign(pd.concat([photos(50), newcomer]), ledger, FRACTIONS, "s")
    assert split_of(grown)[newcomer["sha256"].iloc[0]] == seven["split"]


def test_removing_photos_never_moves_the_others():
    full, ledger, _ = assign(photos(120), None, FRACTIONS, "s")
    smaller, _, _ = assign(photos(120).iloc[::2], ledger, FRACTIONS, "s")
    assert all(split_of(full)[sha] == split for sha, split in split_of(smaller).items())


def test_conflicts_are_left_out():
    df = photos(10)
    df.loc[3, "status"] = "conflict"
    rows, _, _ = assign(df, None, FRACTIONS, "s")
    assert df.loc[3, "sha256"] not in set(rows["sha256"])


def test_salt_changes_the_assignment():
    a, _, _ = assign(photos(200), None, FRACTIONS, "one")
    b, _, _ = assign(photos(200), None, FRACTIONS, "two")
    assert (a["split"] != b["split"]).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 120), st.integers(0, 60), st.lists(st.integers(0, 200), max_size=30))
def test_growth_stability_property(n_old: int, n_new: int, removed: list[int]):
    """Adding and removing photos never moves the photos that stay; groups never straddle."""
    groups = {i: i - 1 for i in range(1, n_old + n_new, 5)}
    old_rows = photos(n_old, groups={k: v for k, v in groups.items() if k < n_old})
    old, ledger, _ = assign(old_rows, None, FRACTIONS, "s")
    grown_rows = photos(n_old + n_new, groups=groups)
    grown_rows = grown_rows[~grown_rows.index.isin(removed)]
    grown, _, stats = assign(grown_rows, ledger, FRACTIONS, "s")
    before = split_of(old)
    moved = [sha for sha, split in split_of(grown).items() if sha in before and before[sha] != split]
    assert len(moved) == stats.moved_photos == 0
    assert (grown.groupby("group")["split"].nunique() == 1).all()


def test_shards_are_cut_near_the_target_size_with_stable_order():
    rows, _, _ = assign(photos(100), None, FRACTIONS, "s")
    rows = rows[rows["status"] == "kept"].assign(jpeg_bytes=1000)
    parts = plan_shards(rows, "train", shard_bytes=25_000, salt="s")
    assert len(parts) == 3 and sum(len(p) for p in parts) == (rows["split"] == "train").sum()
    again = plan_shards(rows.sample(frac=1, random_state=1), "train", 25_000, "s")
    assert all(a["path"].tolist() == b["path"].tolist() for a, b in zip(parts, again, strict=True))
    assert len(plan_shards(rows, "test", shard_bytes=10**9, salt="s")) == 1


@pytest.mark.parametrize(
    ("split", "i", "n", "name"),
    [("train", 0, 4, "train.tfrecord-00000-of-00004"), ("test", 12, 13, "test.tfrecord-00012-of-00013")],
)
def test_tfds_style_names(split: str, i: int, n: int, name: str):
    assert shard_name(split, i, n) == name


def test_fifty_labels_of_four_photos_leave_the_test_split_empty_and_that_is_reported():
    from tasks.shard import empty_splits

    rows, _, _ = assign(photos(200, label_of=lambda i: f"label{i % 50:02d}"), None, FRACTIONS, "s")
    assert (rows["split"] == "test").sum() == 0  # each label: train, val, train... never test
    assert empty_splits(rows, FRACTIONS) == ["test"]
    no_val = {"train": 0.7, "val": 0.0, "test": 0.3}
    rows, _, _ = assign(photos(200, label_of=lambda i: f"label{i % 50:02d}"), None, no_val, "s")
    assert empty_splits(rows, no_val) == []  # val asked to be empty, test filled
