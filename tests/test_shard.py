"""The split: stratified, leakage-safe (groups never straddle) and growth-stable (the ledger)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.errors import PawflowError
from tasks.photos.splitrule import min_per_class
from tasks.shard import SPLITS, assign, kept_examples, plan_shards, shard_name, short_classes, unit_hash

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


@settings(max_examples=40, deadline=None)
@given(
    st.integers(10, 100),
    st.lists(st.tuples(st.integers(0, 99), st.sampled_from(["remove", "relabel", "readd"])), max_size=40),
)
def test_corrections_never_move_a_photo_property(n: int, edits: list[tuple[int, str]]):
    """Runs in which photos are removed, relabelled (moved to the other class) and re-added: a photo the
    ledger has seen always gets its first split back, under whatever label it has now; the ledger keeps
    removed photos (so a re-added one returns to its split) and each photo's current label."""
    rows = photos(n)
    first, ledger, _ = assign(rows, None, FRACTIONS, "s")
    original = split_of(first)
    present = rows.set_index("sha256")
    gone: dict[str, pd.Series] = {}
    for i, action in edits:
        sha = rows["sha256"].iloc[i % n]
        if action == "remove" and sha in present.index:
            gone[sha] = present.loc[sha]
            present = present.drop(index=sha)
        elif action == "readd" and sha in gone:
            present.loc[sha] = gone.pop(sha)
        elif action == "relabel" and sha in present.index:
            other = "Dog" if present.at[sha, "label"] == "Cat" else "Cat"
            present.loc[sha, ["label", "path"]] = [other, f"{other}/{i}.jpg"]
        now = present.reset_index()
        done, ledger, stats = assign(now, ledger, FRACTIONS, "s")
        assert split_of(done) == {sha: original[sha] for sha in now["sha256"]} and stats.moved_photos == 0
        assert set(ledger["sha256"]) == set(original)
        labels = dict(zip(ledger["sha256"], ledger["label"], strict=True))
        assert all(labels[sha] == lbl for sha, lbl in zip(now["sha256"], now["label"], strict=True))


def reference_assign(photos_: pd.DataFrame, ledger: pd.DataFrame, fractions: dict, salt: str) -> dict:
    """The split rules, group by group: a group with photos in the ledger
    goes where most of them are (ties: the first of SPLITS); new groups, in order of (label, salted hash
    of the group's smallest sha256), go to their label's split furthest below its share."""
    rows = photos_[photos_["status"] != "conflict"].sort_values("path", kind="stable")
    known = dict(zip(ledger["sha256"], ledger["split"], strict=True))
    counts: dict[str, dict[str, int]] = {}
    chosen: dict[str, str] = {}
    new = []
    for gid, g in rows.groupby("group", sort=True):
        label = str(g["label"].iloc[0])
        counts.setdefault(label, dict.fromkeys(SPLITS, 0))
        pinned = [known[s] for s in g["sha256"] if s in known]
        if pinned:
            chosen[gid] = max(SPLITS, key=lambda s: (pinned.count(s), -SPLITS.index(s)))
            counts[label][chosen[gid]] += 1
        else:
            new.append((label, unit_hash(min(g["sha256"]), salt), gid))
    for label, _, gid in sorted(new):
        c, n = counts[label], sum(counts[label].values()) + 1
        chosen[gid] = max(SPLITS, key=lambda s: (fractions[s] * n - c[s], -SPLITS.index(s)))
        c[chosen[gid]] += 1
    return {sha: chosen[g] for sha, g in zip(rows["sha256"], rows["group"], strict=True)}


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 80),
    st.lists(st.integers(0, 79), max_size=40),
    st.lists(st.tuples(st.integers(0, 79), st.sampled_from(SPLITS)), max_size=60),
)
def test_assign_equals_the_group_by_group_rules(n: int, leaders: list[int], pins: list[tuple[int, str]]):
    """assign works on whole tables; its splits are the rules applied one group at a time, also when a
    new photo merges old groups whose photos the ledger put in different splits (majority, then ties)."""
    groups = {i: leader for i, leader in enumerate(leaders) if leader < i < n}
    df = photos(n, groups=groups, label_of=lambda i: "Cat" if i % 3 else "Dog")
    sha = list(df["sha256"])
    ledger = pd.DataFrame(
        {"sha256": [sha[i] for i, _ in pins if i < n], "split": [s for i, s in pins if i < n]}
    ).drop_duplicates("sha256")
    ledger = ledger.assign(label="Cat", arrival=0)
    rows, _, stats = assign(df, ledger, FRACTIONS, "s")
    assert split_of(rows) == reference_assign(df, ledger, FRACTIONS, "s")
    pinned = rows["sha256"].isin(ledger["sha256"])
    moved = (
        rows[pinned]["sha256"].map(dict(zip(ledger["sha256"], ledger["split"], strict=True)))
        != rows[pinned]["split"]
    )
    assert stats.moved_photos == int(moved.sum())


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


def test_arrivals_get_their_own_shards_and_old_arrivals_keep_their_cut():
    old, ledger, _ = assign(photos(100), None, FRACTIONS, "s")
    grown, _, _ = assign(pd.concat([photos(100), photos(30, start=100)]), ledger, FRACTIONS, "s")
    new = grown["sha256"].isin(photos(30, start=100)["sha256"])
    assert set(old["arrival"]) == {0} and set(grown.loc[new, "arrival"]) == {1}
    assert set(grown.loc[~new, "arrival"]) == {0}
    kept_old = old[old["status"] == "kept"].assign(jpeg_bytes=1000)
    kept_grown = grown[grown["status"] == "kept"].assign(jpeg_bytes=1000)
    before = plan_shards(kept_old, "train", 25_000, "s")
    after = plan_shards(kept_grown, "train", 25_000, "s")
    assert [p["path"].tolist() for p in after[: len(before)]] == [p["path"].tolist() for p in before]
    assert all((p["arrival"] == 1).all() for p in after[len(before) :]) and len(after) > len(before)


def test_a_ledger_without_arrivals_counts_as_the_first_arrival():
    _, ledger, _ = assign(photos(40), None, FRACTIONS, "s")
    grown, new_ledger, _ = assign(photos(50), ledger.drop(columns="arrival"), FRACTIONS, "s")
    assert grown.set_index("sha256").loc[ledger["sha256"], "arrival"].eq(0).all()
    assert set(new_ledger["arrival"]) == {0, 1}


def test_names_of_later_arrivals():
    assert shard_name("val", 1, 2, arrival=3) == "val.arrival-00003.tfrecord-00001-of-00002"


def records(shard) -> list[tuple[str, str, str]]:
    """(path, label name, sha256) of every record of a TFRecord shard file, read without TensorFlow."""
    from tasks.photos import tfrecord

    data, at, out = shard.read_bytes(), 0, []
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at : at + 8])
        f = tfrecord._example_class().FromString(data[at + 12 : at + 12 + n]).features.feature
        out.append(tuple(f[k].bytes_list.value[0].decode() for k in ("path", "label/name", "sha256")))
        at += 12 + n + 4
    return out


def shard_files(processed) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(processed.iterdir()) if p.name != "dataset_info.json"}


@pytest.mark.slow  # over 10 s: outside the fast tier (make test-fast <= 3 min)
@pytest.mark.usefixtures("prefect_server")
def test_growing_a_collection_keeps_every_old_shard_file_byte_identical(tmp_path):
    """Data stages on 24 photos per class, then 6 more per class: the old shard files stay as they are
    (bytes and names), the new photos get shards of their own, dataset_info lists exactly the files
    with their sha256 and counts, old photos keep their split, and a rebuild from the same ledger
    (shards deleted) gives the same bytes again. Then corrections: a photo removed, one relabelled, one
    excluded (a re-added photo's return to its split: test_corrections_never_move_a_photo_property)."""
    import imagegen
    from conftest import params_for

    from flows.clean import clean_flow
    from flows.dedup import dedup_flow
    from flows.ingest import ingest_flow
    from flows.shard import shard_flow
    from tasks.core.fileio import sha256_file

    source = imagegen.make_dataset(tmp_path / "source", per_class=24)
    params = params_for(tmp_path / "work", source, shard={"shard_bytes": 20_000})

    def run() -> None:
        for flow in (ingest_flow, clean_flow, dedup_flow, shard_flow):
            state = flow(params=params, return_state=True)
            assert state.is_completed(), state.message

    processed = params.paths.processed
    run()
    before = shard_files(processed)
    inodes = {n: (processed / n).stat().st_ino for n in before}
    ledger_before = pd.read_parquet(params.paths.interim / "split.parquet")
    assert len([n for n in before if n.startswith("train.tfrecord")]) > 1
    for label in ("Cat", "Dog"):
        for i in range(6):
            data = imagegen.jpeg(5000 + i + (100 if label == "Dog" else 0), (96, 80))
            (source / label / f"new.{i}.jpg").write_bytes(data)
    run()
    after = shard_files(processed)
    assert {n: after[n] for n in before} == before
    # Run again with nothing new (as after a code change): every shard file is reused as it is.
    state = shard_flow(params=params, return_state=True)
    assert state.is_completed(), state.message
    assert shard_files(processed) == after
    assert {n: (processed / n).stat().st_ino for n in before} == inodes  # reused, not written again
    added = sorted(set(after) - set(before))
    assert added and all(".arrival-00001.tfrecord-" in n for n in added)
    info = json.loads((processed / "dataset_info.json").read_text())
    listed = [f for split in info["splits"].values() for f in split["shards"]]
    assert sorted(f["file"] for f in listed) == sorted(after)
    assert all(sha256_file(processed / f["file"]) == f["sha256"] for f in listed)
    assert sum(f["examples"] for f in listed) == sum(sum(c.values()) for c in info["counts"].values())
    ledger = pd.read_parquet(params.paths.interim / "split.parquet").set_index("sha256")
    assert (
        ledger.loc[ledger_before["sha256"], "split"].to_numpy() == ledger_before["split"].to_numpy()
    ).all()
    assert sorted(set(ledger["arrival"])) == [0, 1]
    # Shards are a function of the ledger: rebuilt without the old files, they come out the same.
    info_bytes = (processed / "dataset_info.json").read_bytes()
    shutil.rmtree(processed)
    state = shard_flow(params=params, return_state=True)
    assert state.is_completed(), state.message
    assert shard_files(processed) == after
    assert (processed / "dataset_info.json").read_bytes() == info_bytes

    # Corrections (docs/collection.md): of the first arrival's train photos, one is deleted from the source,
    # one moved to the other class folder, one excluded. Every other photo keeps its split; the moved one
    # keeps its split under its new label; the shards of that split and arrival are written again, with
    # the moved photo's new label and without the two others; every other shard file is reused as it is.
    ledger = pd.read_parquet(params.paths.interim / "split.parquet")
    first_train = sorted(ledger[(ledger["split"] == "train") & (ledger["arrival"] == 0)]["sha256"])
    by_sha = {sha256_file(p): p for p in source.rglob("*.jpg")}
    removed, moved, excluded = (by_sha[s] for s in first_train[:3])
    removed.unlink()
    moved_to = source / ("Dog" if moved.parent.name == "Cat" else "Cat") / moved.name
    moved.rename(moved_to)
    params.paths.exclude.parent.mkdir(parents=True, exist_ok=True)
    params.paths.exclude.write_text(f"{excluded.parent.name}/{excluded.name}  # a drawing\n")
    inodes = {n: (processed / n).stat().st_ino for n in shard_files(processed)}
    before = shard_files(processed)
    run()
    corrected = shard_files(processed)
    rewritten = {n for n in corrected if n not in before or corrected[n] != before[n]}
    assert rewritten and all(n.startswith("train.tfrecord-") for n in rewritten)
    assert all((processed / n).stat().st_ino == inodes[n] for n in corrected if n not in rewritten)
    held = {"Cat/" + removed.name, "Dog/" + removed.name, f"{excluded.parent.name}/{excluded.name}"}
    found = {path: label for n in corrected for path, label, _ in records(processed / n)}
    assert not held & set(found) and found[f"{moved_to.parent.name}/{moved.name}"] == moved_to.parent.name
    assert len(found) == len(ledger) - 2
    new_ledger = pd.read_parquet(params.paths.interim / "split.parquet").set_index("sha256")
    assert new_ledger["split"].to_dict() == ledger.set_index("sha256")["split"].to_dict()  # nobody moved
    assert new_ledger.at[first_train[1], "label"] == moved_to.parent.name


def test_fifty_labels_of_four_photos_leave_the_test_split_empty_and_that_is_reported():
    rows, _, _ = assign(photos(200, label_of=lambda i: f"label{i % 50:02d}"), None, FRACTIONS, "s")
    assert (rows["split"] == "test").sum() == 0  # each label: train, train, val, train... never test
    short = short_classes(rows, FRACTIONS)
    assert len(short) == 50 and short["label07"] == {"train": 3, "val": 1, "test": 0}
    no_val = {"train": 0.7, "val": 0.0, "test": 0.3}
    rows, _, _ = assign(photos(200, label_of=lambda i: f"label{i % 50:02d}"), None, no_val, "s")
    assert short_classes(rows, no_val) == {}  # val asked to be empty, test filled


@pytest.mark.parametrize(
    ("fractions", "need"),
    [
        (FRACTIONS, 5),  # train, train, val, train, test
        ({"train": 0.5, "val": 0.25, "test": 0.25}, 3),
        ({"train": 0.7, "val": 0.0, "test": 0.3}, 2),
        ({"train": 0.8, "val": 0.1, "test": 0.1}, 7),
        ({"train": 0.98, "val": 0.01, "test": 0.01}, 67),
    ],
)
def test_the_minimum_per_class_is_exactly_what_assign_needs_to_reach_every_split(fractions, need: int):
    """min_per_class deals groups with shard's own rule: a new class of `need` photos reaches every split
    asked for, one fewer leaves one empty, whatever the salt."""
    assert min_per_class(fractions) == need
    wanted = {s for s in SPLITS if fractions[s] > 0}
    for salt in ("a", "b", "c"):
        for n, reaches in ((need, True), (need - 1, False)):
            rows, _, _ = assign(photos(n, label_of=lambda i: "Bird"), None, fractions, salt)
            assert (set(rows["split"]) == wanted) is reaches, (salt, n)


def test_shard_refuses_a_class_below_the_minimum_naming_it_before_writing_anything():
    """Two birds went to train without a word; now every class must reach every split asked for."""
    cats_dogs = photos(40)
    birds = photos(2, label_of=lambda i: "Bird", start=1000)
    rows, _, _ = assign(pd.concat([cats_dogs, birds], ignore_index=True), None, FRACTIONS, "s")
    with pytest.raises(PawflowError) as info:
        kept_examples(rows, FRACTIONS)
    msg = str(info.value)
    assert "shard: 1 class(es) too small for shard.split (train 0.7, val 0.15, test 0.15)" in msg
    assert "'Bird' 2 (train 2, val 0, test 0)" in msg and "at least 5 distinct photos per class" in msg
    assert msg.count("What to do") == 1
    assert len(kept_examples(rows[rows["label"] != "Bird"], FRACTIONS)) == 40
