"""Clean: a verdict for every ingested file (kept or rejected with a reason), cached by content."""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.core import stopping
from tasks.core.errors import PawflowError
from tasks.core.fileio import code_fingerprint, fingerprint
from tasks.core.status import Status
from tasks.photos import images, store
from tasks.photos.images import FLAGS, REASONS, CheckSettings, PhotoCheck
from tasks.reports.reports import CleanReport, LabelVerdicts

if TYPE_CHECKING:
    from tasks.core.params import CleanFlags, Params

COLUMNS = [
    "path",
    "label",
    "sha256",
    "bytes",
    "status",
    "reason",
    "detail",
    "format",
    "width",
    "height",
    "mode",
    "normalised",
    "phash",
    *images.QUALITY_COLUMNS,
    "flags",  # quality flags of a kept photo (tasks.photos.images.FLAGS), ";"-separated
]
# Verdicts that depend on the machine at this moment (its file system, its load), not on the bytes: never
# cached, in any cache (docs/scale-out.md). A failure of the machine itself (out of memory, an I/O error) is
# no verdict at all: it fails the run (tasks.photos.images).
UNCACHEABLE = {"missing", "unreadable", "changed_since_ingest", "timeout"}


def check_settings(params: Params) -> CheckSettings:
    """Judging a photo depends on clean.*, and it also prepares the shard image and the dedup hash."""
    c = params.clean
    return CheckSettings(
        min_side=c.min_side,
        max_aspect_ratio=c.max_aspect_ratio,
        max_pixels=c.max_pixels,
        formats=c.formats,
        max_side=params.shard.max_side,
        jpeg_quality=params.shard.jpeg_quality,
        hash_size=params.dedup.hash_size,
        timeout_s=c.timeout_s,
    )


def settings_fingerprint(settings: CheckSettings) -> str:
    """Verdicts depend on the bytes, the settings and the code that judges them (its syntax tree:
    tasks/photos/images.py's comments and docstrings can change without invalidating a verdict)."""
    return fingerprint(asdict(settings), code_fingerprint(images))


def cache_key(sha256: str, settings_fp: str) -> str:
    return f"{sha256}:{settings_fp}"


def stored_verdicts(
    items: list[tuple[str, str]], settings: CheckSettings, cache_dir: Path
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The rows of the (path, sha256) pairs whose verdict the cache holds (one look-up for all), and
    the pairs still to judge. A night with new photos judges only them: the rest costs no task run."""
    fp = settings_fingerprint(settings)
    keys = {sha: cache_key(sha, fp) for _, sha in items}
    with store.connect(cache_dir) as con:
        cached = store.get_checks(con, set(keys.values()))
    rows, todo = [], []
    for path, sha in items:
        record = cached.get(keys[sha])
        if record is None:
            todo.append((path, sha))
        else:
            rows.append(_row(path, record))
    return rows, todo


def _row(path: str, record: dict) -> dict:
    return {"path": path, "label": path.split("/", 1)[0], **record}


@dataclass
class Judged:
    """A chunk's verdicts: its rows (one per file, in order), and what the cache may keep of them."""

    rows: list[dict]
    checks: dict[str, dict]  # cache key -> verdict, environment verdicts (UNCACHEABLE) left out
    thumbs: dict[str, bytes]  # cache key -> normalised JPEG of a kept photo


def judge_items(items: list[tuple[str, str]], settings: CheckSettings, raw: Path) -> Judged:
    """Decode and judge (path, sha256) pairs under raw; writes nothing (it may run on a Dask worker: the
    stage's process stores what it returns, store_judged)."""
    fp = settings_fingerprint(settings)
    out = Judged([], {}, {})
    for path, sha in items:
        stopping.check()  # a run being stopped leaves its chunk here, not at the chunk's end
        check, thumb = images.check_file(raw / path, sha, settings)
        record = check.record()
        if check.reason == "missing":  # the detail is where it was looked for: not the workspace's business
            record["detail"] = ""
        if check.reason not in UNCACHEABLE:
            out.checks[cache_key(sha, fp)] = record
            if thumb is not None:
                out.thumbs[cache_key(sha, fp)] = thumb
        out.rows.append(_row(path, record))
    return out


def store_judged(cache_dir: Path, judged: Judged) -> None:
    """Keep a chunk's cacheable verdicts and thumbnails in the per-photo cache (the stage's process only)."""
    if judged.checks:

        def fill(con: sqlite3.Connection) -> None:
            store.put_checks(con, judged.checks)
            store.put_thumbs(con, judged.thumbs)

        store.write(cache_dir, fill)  # a stop still reaches this process while another holds the cache


def check_items(
    raw: Path,
    items: list[tuple[str, str]],
    settings: CheckSettings,
    cache_dir: Path | None,
    refresh: bool = False,
) -> list[dict]:
    """Verdicts for (path, sha256) pairs under raw in this process: those the cache holds (stored_verdicts),
    then the others, judged now and cached."""
    rows, todo = ([], items) if cache_dir is None or refresh else stored_verdicts(items, settings, cache_dir)
    judged = judge_items(todo, settings, raw)
    if cache_dir is not None:
        store_judged(cache_dir, judged)
    return rows + judged.rows


def flagged(df: pd.DataFrame, limits: CleanFlags) -> dict[str, pd.Series]:
    """flag -> which rows it flags (kept photos past a clean.flags limit; see tasks.photos.images.FLAGS)."""
    kept = df["status"] == Status.KEPT
    tests = {
        "near_blank": df["grey_std"] < limits.near_blank_contrast,
        "dark": df["grey_p99"] < limits.dark_level,
        "bright": df["grey_p05"] > limits.bright_level,
        "blurry": df["sharpness"] < limits.blurry_sharpness,
        "low_information": df["entropy"] < limits.low_information_bits,
    }
    assert tests.keys() == FLAGS.keys(), "every flag has a test and a meaning"
    return {flag: kept & hit.fillna(False).astype(bool) for flag, hit in tests.items()}


def table(rows: list[dict], limits: CleanFlags) -> pd.DataFrame:
    """clean.parquet: one row per ingested file, sorted by path, with the quality flags of kept photos."""
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    df = df.astype(
        {
            "bytes": "int64",
            "width": "int64",
            "height": "int64",
            **dict.fromkeys(images.QUALITY_COLUMNS, "float64"),  # NaN for a rejected file
        }
    )
    hits = flagged(df, limits)
    names = np.array(list(FLAGS))
    matrix = np.zeros((len(df), len(names)), bool)
    for k, flag in enumerate(FLAGS):
        matrix[:, k] = hits[flag].to_numpy()
    df["flags"] = [";".join(names[row]) if row.any() else "" for row in matrix]
    return df


def report(df: pd.DataFrame) -> CleanReport:
    """reports/clean.json: counts per reason and label, normalisations, and every rejected file."""
    rejected = df[df["status"] == Status.REJECTED]
    kept = df[df["status"] == Status.KEPT]
    steps = Counter(s.split(":", 1)[0] for n in kept["normalised"] for s in n.split(";") if s)
    flags = Counter(f for fs in kept["flags"] for f in fs.split(";") if f)
    per_label: dict[str, LabelVerdicts] = {
        str(label): {
            "kept": int((g["status"] == Status.KEPT).sum()),
            "rejected": int((g["status"] == Status.REJECTED).sum()),
        }
        for label, g in df.groupby("label")
    }
    return {
        "files": len(df),
        "kept": len(kept),
        "rejected": len(rejected),
        "per_reason": {str(k): int(v) for k, v in rejected["reason"].value_counts().sort_index().items()},
        "per_label": per_label,
        "normalised": dict(sorted(steps.items())),
        "flagged": int((kept["flags"] != "").sum()),
        "per_flag": {f: flags[f] for f in FLAGS},
        "reasons": {k: v for k, v in REASONS.items() if k in set(rejected["reason"])},
        "rejected_files": rejected[["path", "reason", "detail"]].to_dict(orient="records"),
    }


# Rejected files named in the message when clean refuses a collection (the page lists them all).
NAMED_IN_MESSAGE = 5
# The page of rejected files written when clean refuses a collection: beside the reports, not a DVC
# output (it describes the run that failed, and is removed by the next run that passes).
REJECTED_PAGE = "rejected.html"


def guard(df: pd.DataFrame, max_reject_fraction: float, page: Path | None = None) -> None:
    """Fail when so much is rejected that the source is probably wrong, naming the first rejected
    files with their reasons (and `page`, where every one of them is shown)."""
    if df.empty:
        raise PawflowError(
            "clean: the ingest manifest lists no files.",
            "Check ingest.source: it should hold one folder of photos per label.",
        )
    rejected = df[df["status"] == Status.REJECTED]
    fraction = len(rejected) / len(df)
    if fraction <= max_reject_fraction:
        return
    top = rejected["reason"].value_counts().head(3)
    reasons = ", ".join(f"{r} ({n})" for r, n in top.items())
    first = rejected.sort_values("path", kind="stable").head(NAMED_IN_MESSAGE)
    named = "\n".join(
        f"  {r.path}: {r.reason} ({r.detail or REASONS.get(r.reason, r.reason)})" for r in first.itertuples()
    )
    more = f"\n  ... and {len(rejected) - len(first):,} more" if len(rejected) > len(first) else ""
    where = f"\nEvery rejected file is shown in {page}." if page is not None else ""
    share = "all" if len(rejected) == len(df) else f"{fraction:.0%} of"
    limit = f"(limit clean.max_reject_fraction={max_reject_fraction}); most common: {reasons}."
    unread = int(rejected["reason"].isin(UNCACHEABLE).sum())
    if 2 * unread > len(rejected):  # mostly files that could not be read: the machine, not the photos
        raise PawflowError(
            f"clean: {share} {len(df):,} files were rejected {limit} {unread:,} of them could not be read "
            f"as ingest recorded them (missing, unreadable, changed or too slow here).\n{named}{more}{where}",
            "Check that data/raw is intact (`dvc checkout data/raw`, or run ingest again) and, with "
            "runner.kind: dask, that every worker sees the project folder at the same path "
            "(docs/scale-out.md). These verdicts are never cached: run again once it is fixed.",
        )
    raise PawflowError(
        f"clean: {share} {len(df):,} files were rejected {limit} Is ingest.source the right collection?\n"
        f"{named}{more}{where}",
        "Point ingest.source at a folder of photos (one subfolder per label); if these files really are "
        "photos, relax the clean.* limits.",
    )


def summary_rows(rep: CleanReport) -> list[list]:
    rows = [["files", rep["files"]], ["kept", rep["kept"]], ["rejected", rep["rejected"]]]
    rows += [[f"  {reason}", n] for reason, n in rep["per_reason"].items()]
    rows += [[f"normalised: {step}", n] for step, n in rep["normalised"].items()]
    rows += [["flagged (kept, worth a look)", rep["flagged"]]]
    rows += [[f"  {flag}", n] for flag, n in rep["per_flag"].items() if n]
    return rows


__all__ = [
    "COLUMNS",
    "Judged",
    "PhotoCheck",
    "check_items",
    "guard",
    "judge_items",
    "report",
    "store_judged",
    "stored_verdicts",
    "table",
]
