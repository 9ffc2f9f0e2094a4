"""Dedup: exact and near-duplicate photos collapse to one; one photo under two labels is a conflict.

Near pairs are found with multi-index hashing (split each hash into max_distance+1 pieces: two hashes
within the distance agree exactly on at least one piece), so only photos sharing a piece are compared.
A run remembers its distinct hashes and the near pairs among them (`HashIndex`, kept in the disposable
cache): the next run compares only the hashes it has not seen against that index, and takes the pairs
among known hashes from it. Pairs depend on the two hashes alone, so the result is the same as a
from-scratch run's whatever the index holds (a stale, foreign or missing index only costs time).
"""

from __future__ import annotations

import io
import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from tasks.core.errors import PawflowError
from tasks.core.fileio import write_bytes
from tasks.core.status import Status
from tasks.reports.reports import ConflictGroup, DedupReport, DuplicateGroup

COLUMNS = ["path", "label", "sha256", "group", "status", "duplicate_of", "kind", "distance"]
INDEX_FORMAT = 1  # bump when HashIndex's file layout changes: older files are then ignored


def hash_bits(hex_hashes: list[str]) -> np.ndarray:
    """Hex perceptual hashes -> (n, bits) array of 0/1."""
    if not hex_hashes:
        return np.zeros((0, 0), dtype=np.uint8)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hex_hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hex_hashes), -1), axis=1)


def distances(bits: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.count_nonzero(bits[i] != bits[j], axis=1)


def words(bits: np.ndarray) -> np.ndarray:
    """(n, bits) 0/1 -> (n, ceil(bits/64)) uint64, for popcount distances."""
    nbytes = -(-bits.shape[1] // 64) * 8
    packed = np.zeros((len(bits), nbytes), np.uint8)
    packed[:, : (bits.shape[1] + 7) // 8] = np.packbits(bits, axis=1)
    return packed.view(np.uint64)


def word_distances(w: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.bitwise_count(w[i] ^ w[j]).sum(axis=1, dtype=np.int64)


@dataclass
class HashIndex:
    """Distinct hashes (packed rows) and every pair among them within max_distance: (i, j, distance)."""

    max_distance: int
    packed: np.ndarray  # (u, bytes) uint8
    pairs: np.ndarray  # (m, 3) int64, i < j
    fresh: int = 0  # how many of the hashes were not in the index it was built from (not saved)

    @classmethod
    def empty(cls, max_distance: int, nbytes: int) -> HashIndex:
        return cls(max_distance, np.zeros((0, nbytes), np.uint8), np.zeros((0, 3), np.int64))

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, fmt=INDEX_FORMAT, max_distance=self.max_distance, packed=self.packed, pairs=self.pairs)
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, max_distance: int, nbytes: int) -> HashIndex | None:
        """The index at path if it is readable and made for this distance and hash size, else None."""
        try:
            with np.load(path) as z:
                if int(z["fmt"]) != INDEX_FORMAT or int(z["max_distance"]) != max_distance:
                    return None
                packed, pairs = z["packed"], z["pairs"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        if packed.ndim != 2 or packed.shape[1] != nbytes or pairs.ndim != 2 or pairs.shape[1] != 3:
            return None
        if len(pairs) and (pairs[:, :2].min() < 0 or pairs[:, :2].max() >= len(packed)):
            return None
        return cls(max_distance, packed.astype(np.uint8), pairs.astype(np.int64))


def index_path(cache_dir: Path, max_distance: int) -> Path:
    """Where the last run's HashIndex lives: in the disposable cache, one per distance."""
    return cache_dir / "dedup" / f"hash-index-d{max_distance}.npz"


def load_index(cache_dir: Path, max_distance: int, hash_size: int) -> HashIndex | None:
    """The index of hashes seen by the last run: new photos are compared with it instead of every photo
    with every other; a missing or foreign index (None) only costs time."""
    nbytes = (hash_size**2 + 7) // 8
    return HashIndex.load(index_path(cache_dir, max_distance), max_distance, nbytes)


def save_index(index: HashIndex, cache_dir: Path) -> None:
    path = index_path(cache_dir, index.max_distance)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)


def kept_photos(clean_rows: pd.DataFrame) -> pd.DataFrame:
    """The photos clean kept (clean.parquet rows); refuses none at all."""
    kept = clean_rows[clean_rows["status"] == Status.KEPT]
    if kept.empty:
        raise PawflowError("dedup: clean kept no photos.", "Look at reports/clean.json for the reasons.")
    return kept


HELD_COLUMNS = ["path", "sha256", "status", "reason"]


def held_out(kept: pd.DataFrame, excluded: pd.DataFrame, held: dict[str, str]) -> pd.DataFrame:
    """The kept photos that never reach the split (HELD_COLUMNS, by path): those the exclude list names
    (excluded: path, reason) and those a quarantine batch holds (held: sha256 -> the batch's reason).
    Held out before duplicates are grouped: a wrong photo cannot make a good copy a label conflict."""
    reasons = dict(zip(excluded["path"], excluded["reason"], strict=True))
    rows = []
    for path, sha in zip(kept["path"], kept["sha256"], strict=True):
        if path in reasons:
            rows.append((path, sha, str(Status.EXCLUDED), reasons[path]))
        elif sha in held:
            rows.append((path, sha, str(Status.QUARANTINED), held[sha]))
    return pd.DataFrame(rows, columns=HELD_COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)


def with_held(dd: pd.DataFrame, held: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """dedup.parquet: the grouped photos and the held-out ones (each its own group), sorted by path."""
    labels = dict(zip(kept["path"], kept["label"], strict=True))
    extra = pd.DataFrame(
        {
            "path": held["path"],
            "label": [labels[p] for p in held["path"]],
            "sha256": held["sha256"],
            "group": held["sha256"].str[:16],
            "status": held["status"],
            "duplicate_of": "",
            "kind": "",
            "distance": 0,
        },
        columns=COLUMNS,
    )
    out = pd.concat([x for x in (dd, extra) if len(x)], ignore_index=True) if len(extra) else dd
    return out.astype({"distance": "int64"}).sort_values("path", kind="stable").reset_index(drop=True)


def _pieces(nbits: int, max_distance: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, nbits, min(max_distance + 1, nbits) + 1).astype(int)
    return list(itertools.pairwise(bounds.tolist()))


def _piece_keys(bits: np.ndarray, lo: int, hi: int) -> np.ndarray:
    weights = (1 << np.arange(hi - lo - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    return bits[:, lo:hi].astype(np.uint64) @ weights


def _same_key_within(keys: np.ndarray) -> np.ndarray:
    """(a, b), a < b, of rows whose keys are equal."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    found = [np.zeros((0, 2), np.int64)]
    # Rows k apart in sorted order share a bucket when their keys are equal: all in-bucket pairs
    # come out of a few vectorised comparisons (k up to the largest bucket).
    for k in range(1, len(order)):
        same = np.flatnonzero(sorted_keys[k:] == sorted_keys[:-k])
        if not len(same):
            break
        a, b = order[same], order[same + k]
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(found)


def _same_key_between(keys_a: np.ndarray, keys_b: np.ndarray) -> np.ndarray:
    """(a, b) with keys_a[a] == keys_b[b]: a sorted lookup of each a among the b."""
    order = np.argsort(keys_b, kind="stable")
    sorted_b = keys_b[order]
    left = np.searchsorted(sorted_b, keys_a, side="left")
    count = np.searchsorted(sorted_b, keys_a, side="right") - left
    a = np.repeat(np.arange(len(keys_a)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return np.stack([a, order[np.repeat(left, count) + offsets]], axis=1).astype(np.int64)


def _distinct_pairs(ubits: np.ndarray, known: np.ndarray, old_pairs: np.ndarray, max_distance: int):
    """Pairs (i, j, d), i < j, among distinct hashes; rows with known >= 0 are old index rows whose
    pairs come from old_pairs; the other rows are compared against everything through the pieces."""
    u, nbits = ubits.shape
    new = np.flatnonzero(known < 0)
    old = np.flatnonzero(known >= 0)
    # Pairs among known hashes, renumbered to this run's rows.
    where = np.full(int(known.max()) + 1 if len(old) else 0, -1, np.int64)
    where[known[old]] = old
    kept = old_pairs[(old_pairs[:, 0] < len(where)) & (old_pairs[:, 1] < len(where))]
    a, b = where[kept[:, 0]], where[kept[:, 1]]
    ok = (a >= 0) & (b >= 0)
    from_index = np.stack([np.minimum(a, b)[ok], np.maximum(a, b)[ok], kept[ok, 2]], axis=1)
    candidates = [np.zeros((0, 2), np.int64)]
    if len(new):
        for lo, hi in _pieces(nbits, max_distance):
            keys = _piece_keys(ubits, lo, hi)
            pairs = _same_key_within(keys[new])
            candidates.append(new[pairs])
            if len(old):
                ab = _same_key_between(keys[new], keys[old])
                candidates.append(np.stack([new[ab[:, 0]], old[ab[:, 1]]], axis=1))
    cand = np.concatenate(candidates)
    # One int64 per pair (i * u + j) makes the de-duplication of candidates a 1-D sort.
    code = np.sort(cand.min(axis=1) * u + cand.max(axis=1))
    code = code[np.r_[True, code[1:] != code[:-1]]] if len(code) else code
    cand = np.stack([code // u, code % u], axis=1)
    d = word_distances(words(ubits), cand[:, 0], cand[:, 1])
    found = np.concatenate([cand, d[:, None]], axis=1)[d <= max_distance]
    return np.concatenate([from_index, found.astype(np.int64)])


def _distinct_hash_pairs(
    bits: np.ndarray, max_distance: int, index: HashIndex | None
) -> tuple[np.ndarray, np.ndarray, HashIndex]:
    """(code of each photo's distinct hash, near pairs (a, b, d) among distinct hashes, new index)."""
    n, nbits = bits.shape
    packed = np.packbits(bits, axis=1) if n else np.zeros((0, (nbits + 7) // 8), np.uint8)
    # Distinct hashes in order of first appearance (deterministic for a given row order).
    codes, uniq = pd.factorize(pd.Series([r.tobytes() for r in packed], dtype=object))
    first = np.unique(codes, return_index=True)[1] if n else np.zeros(0, np.int64)
    if index is None or index.packed.shape[1] != packed.shape[1] or index.max_distance != max_distance:
        index = HashIndex.empty(max_distance, packed.shape[1])
    lookup = {r.tobytes(): k for k, r in enumerate(index.packed)}
    known = np.array([lookup.get(r, -1) for r in uniq], dtype=np.int64)
    if len(uniq):
        upairs = _distinct_pairs(bits[first], known, index.pairs, max_distance)
        upairs = upairs[np.lexsort((upairs[:, 1], upairs[:, 0]))]
    else:
        upairs = np.zeros((0, 3), np.int64)
    return codes, upairs, HashIndex(max_distance, packed[first], upairs, int((known < 0).sum()))


def indexed_pairs(
    bits: np.ndarray, max_distance: int, index: HashIndex | None = None
) -> tuple[list[tuple[int, int, int]], HashIndex]:
    """near_pairs, comparing only the hashes `index` has not seen; returns the pairs and the new index."""
    codes, upairs, new_index = _distinct_hash_pairs(bits, max_distance, index)
    # Expand distinct hashes back to photos: same hash = distance 0.
    members_of: dict[int, list[int]] = {}
    for idx, u in enumerate(codes.tolist()):
        members_of.setdefault(u, []).append(idx)
    out: list[tuple[int, int, int]] = []
    for group in members_of.values():
        out += [(a, b, 0) for k, a in enumerate(group) for b in group[k + 1 :]]
    for ua, ub, d in upairs.tolist():
        out += [(min(a, b), max(a, b), d) for a in members_of[ua] for b in members_of[ub]]
    return sorted(out), new_index


def near_pairs(bits: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= max_distance, without comparing all pairs."""
    if len(bits) < 2:
        return []
    return indexed_pairs(bits, max_distance)[0]


def _components(df: pd.DataFrame, codes: np.ndarray, upairs: np.ndarray) -> np.ndarray:
    """Component label per row: same bytes (sha256), same hash or hashes within the distance,
    transitively (a graph over photos: each joins the first photo with its sha256 and with its hash)."""
    n = len(df)
    sha_codes = pd.factorize(df["sha256"])[0]
    first_of_sha = np.unique(sha_codes, return_index=True)[1]
    first_of_hash = np.unique(codes, return_index=True)[1]
    rows = np.concatenate([np.arange(n), np.arange(n), first_of_hash[upairs[:, 0]]])
    cols = np.concatenate([first_of_sha[sha_codes], first_of_hash[codes], first_of_hash[upairs[:, 1]]])
    graph = coo_array((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_duplicates_indexed(
    photos: pd.DataFrame, max_distance: int, index: HashIndex | None = None
) -> tuple[pd.DataFrame, HashIndex]:
    """find_duplicates, comparing only hashes that `index` has not seen; also returns the new index."""
    df = photos.sort_values("path", kind="stable").reset_index(drop=True)
    n = len(df)
    bits = hash_bits(df["phash"].tolist())
    if n:
        codes, upairs, new_index = _distinct_hash_pairs(bits, max_distance, index)
        comp = _components(df, codes, upairs)
    else:
        new_index, comp = HashIndex.empty(max_distance, 0), np.zeros(0, np.int64)
    out = pd.DataFrame(
        {
            "path": df["path"],
            "label": df["label"],
            "sha256": df["sha256"],
            "group": df["sha256"].str[:16],
            "status": str(Status.KEPT),
            "duplicate_of": "",
            "kind": "",
            "distance": 0,
        }
    )
    work = pd.DataFrame(
        {
            "comp": comp,
            "sha256": df["sha256"].astype(object),
            "label": df["label"].astype(object),
            "path": df["path"].astype(object),
            "pixels": -(df["width"] * df["height"]).to_numpy(),
            "neg_bytes": -df["bytes"].to_numpy(),
        }
    )
    size = work.groupby("comp")["comp"].transform("size").to_numpy()
    multi = size > 1
    if multi.any():
        w = work[multi]
        out.loc[multi, "group"] = w.groupby("comp")["sha256"].transform("min").str[:16].to_numpy()
        conflict = np.zeros(n, bool)
        conflict[np.flatnonzero(multi)] = w.groupby("comp")["label"].transform("nunique").to_numpy() > 1
        out.loc[conflict, ["status", "kind", "distance"]] = [str(Status.CONFLICT), "conflict", -1]
        # In a group the largest photo (pixels, then bytes, then path) is kept.
        ranked = work[multi & ~conflict].sort_values(["comp", "pixels", "neg_bytes", "path"], kind="stable")
        keeper_row = ranked.groupby("comp").head(1)
        dup = ranked.drop(index=keeper_row.index)
        keeper_of = pd.Series(keeper_row.index.to_numpy(), index=keeper_row["comp"].to_numpy())
        k = keeper_of.loc[dup["comp"].to_numpy()].to_numpy()
        i = dup.index.to_numpy()
        out.loc[i, "status"] = str(Status.DUPLICATE)
        out.loc[i, "duplicate_of"] = df["path"].to_numpy()[k]
        out.loc[i, "kind"] = np.where(
            df["sha256"].to_numpy()[i] == df["sha256"].to_numpy()[k], "exact", "near"
        )
        out.loc[i, "distance"] = distances(bits, i, k)
    return out.astype({"distance": "int64"}).reset_index(drop=True), new_index


def find_duplicates(photos: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """One row per photo: its duplicate group and whether it is kept, a duplicate or in conflict.

    `photos` needs path, label, sha256, phash, width, height, bytes. In a group the largest photo
    (pixels, then bytes, then path) is kept; a group spanning labels is a conflict and keeps none.
    """
    return find_duplicates_indexed(photos, max_distance)[0]


def _kind(value: object) -> Literal["exact", "near"]:
    """A duplicate's kind, as dedup.json's contract (tasks.reports.reports.Duplicate) has it."""
    kind = str(value)
    if kind == "exact":
        return "exact"
    if kind == "near":
        return "near"
    raise ValueError(f"a duplicate's kind is exact or near, not {kind!r}")


def report(dd: pd.DataFrame, held: pd.DataFrame | None = None) -> DedupReport:
    """reports/dedup.json: counts, every duplicate group and label conflict, every photo held out
    (held: held_out's rows, with their reasons)."""
    groups: list[DuplicateGroup] = []
    for gid, g in dd[dd["status"] == Status.DUPLICATE].groupby("group"):
        kept = dd[(dd["group"] == gid) & (dd["status"] == Status.KEPT)].iloc[0]
        groups.append(
            {
                "group": str(gid),
                "label": str(kept.label),
                "kept": str(kept.path),
                "duplicates": [
                    {"path": str(r.path), "kind": _kind(r.kind), "distance": int(r.distance)}
                    for r in g.itertuples()
                ],
            }
        )
    conflicts: list[ConflictGroup] = [
        {"group": str(gid), "files": [{"path": str(r.path), "label": str(r.label)} for r in g.itertuples()]}
        for gid, g in dd[dd["status"] == Status.CONFLICT].groupby("group")
    ]

    def counted(status: Status) -> int:
        return int((dd["status"] == status).sum())

    held = held if held is not None else pd.DataFrame(columns=HELD_COLUMNS)

    def listed(status: Status) -> list:
        part = held[held["status"] == status]
        return [{"path": str(p), "reason": str(r)} for p, r in zip(part["path"], part["reason"], strict=True)]

    return {
        "photos": len(dd),
        "kept": counted(Status.KEPT),  # the photos of each status after dedup
        "duplicate": counted(Status.DUPLICATE),
        "conflict": counted(Status.CONFLICT),
        "excluded": counted(Status.EXCLUDED),
        "quarantined": counted(Status.QUARANTINED),
        "exact_duplicates": int((dd["kind"] == "exact").sum()),
        "near_duplicates": int((dd["kind"] == "near").sum()),
        "duplicate_groups": len(groups),
        "conflict_groups": len(conflicts),
        "kept_per_label": {
            str(k): int(v) for k, v in dd[dd["status"] == Status.KEPT].groupby("label").size().items()
        },
        "groups": groups,
        "conflicts": conflicts,
        "excluded_photos": listed(Status.EXCLUDED),
        "quarantined_photos": listed(Status.QUARANTINED),
    }
