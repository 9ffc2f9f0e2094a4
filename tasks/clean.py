"""Clean: a verdict for every ingested file (kept or rejected with a reason), cached by content."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks import images, stopping, store
from tasks.errors import PawflowError
from tasks.fileio import code_fingerprint, fingerprint
from tasks.images import REASONS, CheckSettings, PhotoCheck
from tasks.reports import CleanReport
from tasks.status import Status

if TYPE_CHECKING:
    from tasks.params import Params

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
]
# Verdicts that depend on the file system at this moment, not on the bytes: never cached.
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
    tasks/images.py's comments and docstrings can change without invalidating a verdict)."""
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


def check_items(
    raw: Path,
    items: list[tuple[str, str]],
    settings: CheckSettings,
    cache_dir: Path | None,
    refresh: bool = False,
) -> list[dict]:
    """Verdicts for (path, sha256) pairs under raw: those the cache holds (stored_verdicts), then the
    others, decoded now and cached."""
    fp = settings_fingerprint(settings)
    rows, todo = ([], items) if cache_dir is None or refresh else stored_verdicts(items, settings, cache_dir)
    new_checks, new_thumbs = {}, {}
    for path, sha in todo:
        stopping.check()  # a run being stopped leaves its chunk here, not at the chunk's end
        check, thumb = images.check_file(raw / path, sha, settings)
        record = check.record()
        if check.reason not in UNCACHEABLE:
            new_checks[cache_key(sha, fp)] = record
            if thumb is not None:
                new_thumbs[cache_key(sha, fp)] = thumb
        rows.append(_row(path, record))
    if cache_dir is not None and new_checks:
        with store.connect(cache_dir) as con:
            store.put_checks(con, new_checks)
            store.put_thumbs(con, new_thumbs)
    return rows


def table(rows: list[dict]) -> pd.DataFrame:
    """clean.parquet: one row per ingested file, sorted by path."""
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    return df.astype({"bytes": "int64", "width": "int64", "height": "int64"})


def report(df: pd.DataFrame) -> CleanReport:
    """reports/clean.json: counts per reason and label, normalisations, and every rejected file."""
    rejected = df[df["status"] == Status.REJECTED]
    kept = df[df["status"] == Status.KEPT]
    steps = Counter(s.split(":", 1)[0] for n in kept["normalised"] for s in n.split(";") if s)
    per_label = {
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
        "reasons": {k: v for k, v in REASONS.items() if k in set(rejected["reason"])},
        "rejected_files": rejected[["path", "reason", "detail"]].to_dict(orient="records"),
    }


def guard(df: pd.DataFrame, max_reject_fraction: float) -> None:
    """Fail when so much is rejected that the source is probably wrong."""
    if df.empty:
        raise PawflowError(
            "clean: the ingest manifest lists no files.",
            "Check ingest.source: it should hold one folder of photos per label.",
        )
    fraction = float((df["status"] == Status.REJECTED).mean())
    if fraction > max_reject_fraction:
        top = df[df["status"] == Status.REJECTED]["reason"].value_counts().head(3)
        reasons = ", ".join(f"{r} ({n})" for r, n in top.items())
        raise PawflowError(
            f"clean: {fraction:.0%} of {len(df)} files were rejected (limit clean.max_reject_fraction="
            f"{max_reject_fraction}); most common: {reasons}. Is ingest.source the right collection?",
            "Look at the files named above; if they are really photos, relax the clean.* limits.",
        )


def summary_rows(rep: CleanReport) -> list[list]:
    rows = [["files", rep["files"]], ["kept", rep["kept"]], ["rejected", rep["rejected"]]]
    rows += [[f"  {reason}", n] for reason, n in rep["per_reason"].items()]
    rows += [[f"normalised: {step}", n] for step, n in rep["normalised"].items()]
    return rows


__all__ = ["COLUMNS", "PhotoCheck", "check_items", "guard", "report", "stored_verdicts", "table"]
