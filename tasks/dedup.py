"""Dedup: exact and near-duplicate photos collapse to one; one photo under two labels is a conflict.

Near pairs are found with multi-index hashing (split each hash into max_distance+1 pieces: two hashes
within the distance agree exactly on at least one piece), so only photos sharing a piece are compared.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

KEPT, DUPLICATE, CONFLICT = "kept", "duplicate", "conflict"
COLUMNS = ["path", "label", "sha256", "group", "status", "duplicate_of", "kind", "distance"]


def hash_bits(hex_hashes: list[str]) -> np.ndarray:
    """Hex perceptual hashes -> (n, bits) array of 0/1."""
    if not hex_hashes:
        return np.zeros((0, 0), dtype=np.uint8)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hex_hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hex_hashes), -1), axis=1)


def distances(bits: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.count_nonzero(bits[i] != bits[j], axis=1)


def near_pairs(bits: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= max_distance, without comparing all pairs."""
    n, nbits = bits.shape
    if n < 2:
        return []
    # Identical hashes first: each distinct hash is indexed once, then expanded.
    packed = np.packbits(bits, axis=1)
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    ubits = bits[first]
    pieces = min(max_distance + 1, nbits)
    bounds = np.linspace(0, nbits, pieces + 1).astype(int)
    found: list[np.ndarray] = []
    for lo, hi in itertools.pairwise(bounds):
        weights = (1 << np.arange(hi - lo - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
        keys = ubits[:, lo:hi].astype(np.uint64) @ weights
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Rows k apart in sorted order share a bucket when their keys are equal: all in-bucket pairs
        # come out of a few vectorised comparisons (k up to the largest bucket).
        for k in range(1, len(order)):
            same = np.flatnonzero(sorted_keys[k:] == sorted_keys[:-k])
            if not len(same):
                break
            a, b = order[same], order[same + k]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    candidates = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), dtype=int)
    upairs: list[tuple[int, int, int]] = []
    if len(candidates):
        d = distances(ubits, candidates[:, 0], candidates[:, 1])
        keep = d <= max_distance
        upairs = [(int(a), int(b), int(x)) for (a, b), x in zip(candidates[keep], d[keep], strict=True)]
    # Expand distinct hashes back to photos: same hash = distance 0.
    members_of: dict[int, list[int]] = {}
    for idx, u in enumerate(inverse.tolist()):
        members_of.setdefault(u, []).append(idx)
    out: list[tuple[int, int, int]] = []
    for group in members_of.values():
        out += [(a, b, 0) for k, a in enumerate(group) for b in group[k + 1 :]]
    for ua, ub, d in upairs:
        out += [(min(a, b), max(a, b), d) for a in members_of[ua] for b in members_of[ub]]
    return sorted(out)


def brute_force_pairs(bits: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """The reference answer: every pair compared (tests and benchmarks only)."""
    n = len(bits)
    i, j = np.triu_indices(n, k=1)
    d = distances(bits, i, j) if n > 1 else np.zeros(0, dtype=int)
    keep = d <= max_distance
    return [(int(a), int(b), int(x)) for a, b, x in zip(i[keep], j[keep], d[keep], strict=True)]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(photos: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """One row per photo: its duplicate group and whether it is kept, a duplicate or in conflict.

    `photos` needs path, label, sha256, phash, width, height, bytes. In a group the largest photo
    (pixels, then bytes, then path) is kept; a group spanning labels is a conflict and keeps none.
    """
    df = photos.sort_values("path", kind="stable").reset_index(drop=True)
    n = len(df)
    uf = _UnionFind(n)
    for _, idx in df.groupby("sha256").indices.items():
        for k in idx[1:]:
            uf.union(int(idx[0]), int(k))
    bits = hash_bits(df["phash"].tolist())
    for a, b, _ in near_pairs(bits, max_distance):
        uf.union(a, b)
    roots = np.array([uf.find(i) for i in range(n)], dtype=int)
    out = pd.DataFrame(
        {
            "path": df["path"],
            "label": df["label"],
            "sha256": df["sha256"],
            "group": df["sha256"].str[:16],
            "status": KEPT,
            "duplicate_of": "",
            "kind": "",
            "distance": 0,
        }
    )
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]]) if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n]
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2:
            continue
        idx = np.sort(order[start:end])
        g = df.iloc[idx]
        out.loc[idx, "group"] = min(g["sha256"])[:16]
        if g["label"].nunique() > 1:
            out.loc[idx, ["status", "kind", "distance"]] = [CONFLICT, "conflict", -1]
            continue
        rank = g.assign(pixels=-(g["width"] * g["height"]), neg_bytes=-g["bytes"]).sort_values(
            ["pixels", "neg_bytes", "path"], kind="stable"
        )
        keeper = int(rank.index[0])
        for i in rank.index[1:]:
            same_bytes = df.at[i, "sha256"] == df.at[keeper, "sha256"]
            dist = int(distances(bits, np.array([i]), np.array([keeper]))[0])
            out.loc[i, ["status", "duplicate_of", "kind", "distance"]] = [
                DUPLICATE,
                df.at[keeper, "path"],
                "exact" if same_bytes else "near",
                dist,
            ]
    return out.astype({"distance": "int64"}).reset_index(drop=True)


def report(dd: pd.DataFrame) -> dict:
    """reports/dedup.json: counts, every duplicate group and every label conflict."""
    groups = []
    for gid, g in dd[dd["status"] == DUPLICATE].groupby("group"):
        kept = dd[(dd["group"] == gid) & (dd["status"] == KEPT)].iloc[0]
        groups.append(
            {
                "group": str(gid),
                "label": str(kept.label),
                "kept": str(kept.path),
                "duplicates": [
                    {"path": str(r.path), "kind": str(r.kind), "distance": int(r.distance)}
                    for r in g.itertuples()
                ],
            }
        )
    conflicts = [
        {"group": str(gid), "files": [{"path": str(r.path), "label": str(r.label)} for r in g.itertuples()]}
        for gid, g in dd[dd["status"] == CONFLICT].groupby("group")
    ]
    counts = {s: int((dd["status"] == s).sum()) for s in (KEPT, DUPLICATE, CONFLICT)}
    return {
        "photos": len(dd),
        **counts,
        "exact_duplicates": int((dd["kind"] == "exact").sum()),
        "near_duplicates": int((dd["kind"] == "near").sum()),
        "duplicate_groups": len(groups),
        "conflict_groups": len(conflicts),
        "kept_per_label": {
            str(k): int(v) for k, v in dd[dd["status"] == KEPT].groupby("label").size().items()
        },
        "groups": groups,
        "conflicts": conflicts,
    }
