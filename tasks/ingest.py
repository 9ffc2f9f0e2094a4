"""Ingest: copy a labelled photo collection (folder, archive or URL of one) into data/raw, incrementally.

Labels are folder names. data/raw only grows: a file is copied when it is new or its bytes changed in
the source, never deleted; the manifest lists every file in data/raw with its sha256. Listing a folder
is in tasks/listing.py, verifying an archive in tasks/archives.py, downloading a URL in
tasks/download.py; this module resolves the source, copies and writes the manifest and report.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from tasks import store
from tasks.archives import list_archive
from tasks.download import download
from tasks.errors import PawflowError
from tasks.fileio import HASH_BLOCK, NO_SPACE, no_space_is_a_clear_error, sha256_file, sha256_stream
from tasks.listing import Entry, Listing, list_directory, refuse_case_twins, same_but_for_case
from tasks.reports import IngestReport

if TYPE_CHECKING:
    from tasks.params import Ingest

MANIFEST_COLUMNS = ["path", "label", "bytes", "sha256"]
TEMP_PREFIX = ".tmp-"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def resolve(cfg: Ingest, downloads: Path, progress: bool = True) -> Listing:
    """Turn ingest.source into a Listing, downloading a URL first; an archive is verified whole."""
    source = cfg.source
    if is_url(source):
        d = download(
            source,
            downloads,
            cfg.download_retries,
            cfg.download_timeout_s,
            cfg.sha256,
            deadline_s=cfg.download_deadline_s,
            max_bytes=cfg.max_download_bytes,
            progress=progress,
        )
        listing = list_archive(d.path, cfg)
        listing.kind, listing.location, listing.archive_sha256 = "url", source, d.sha256
        return listing
    path = Path(source)
    if not path.exists():
        raise PawflowError(
            f"ingest.source {source!r} does not exist (looked at {path.resolve()}).",
            "Set ingest.source in params.yaml to a folder of class folders, an archive, "
            "or an http(s) URL of one.",
        )
    if path.is_dir():
        return list_directory(path)
    if not path.is_file():
        raise PawflowError(
            f"ingest.source {source!r} is not a regular file or folder (a pipe, socket or device).",
            "Point ingest.source at a folder of class folders, a .zip/.tar(.gz) archive or a URL.",
        )
    listing = list_archive(path, cfg)
    listing.archive_sha256 = sha256_file(path)
    if cfg.sha256 and listing.archive_sha256 != cfg.sha256:
        raise PawflowError(
            f"{path}: sha256 is {listing.archive_sha256}, but ingest.sha256 expects {cfg.sha256}.",
            "Check the file, or update ingest.sha256 (or null).",
        )
    return listing


@dataclass
class SyncResult:
    copied: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    hashes: dict[str, tuple[tuple[int, int, int], str]] = field(default_factory=dict)


@contextmanager
def _temp_beside(dest: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # raw copies are readable like any ingested photo
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _copy_entry(entry: Entry, dest: Path) -> str:
    """Stream an entry to dest atomically (temp name, then rename); returns its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with _temp_beside(dest) as tmp:
        with entry.open() as src, open(tmp, "wb") as out:
            while block := src.read(HASH_BLOCK):
                h.update(block)
                out.write(block)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(tmp, dest)
    return h.hexdigest()


def _entry_sha256(entry: Entry) -> str:
    with entry.open() as src:
        return sha256_stream(src)


def _known_sha256(
    known: dict[str, tuple[tuple[int, int, int], str]], rel: str, st: os.stat_result, path: Path
) -> tuple[str, bool]:
    """The sha256 of the file at path: the known one when its size, mtime and inode are unchanged,
    else read from the file; and whether it was read."""
    cached = known.get(rel)
    if cached and cached[0] == store.stat_key(st):
        return cached[1], False
    return sha256_file(path), True


def sync(
    entries: list[Entry], raw: Path, known: dict[str, tuple[tuple[int, int, int], str]], progress: bool = True
) -> SyncResult:
    """Copy new or changed entries into raw; unchanged files (size and mtime equal) are not read."""
    check_labels_against_raw(entries, raw)
    result = SyncResult()
    in_source_order = sorted(entries, key=lambda e: e.order)  # an archive is read forward, once
    for entry in tqdm(
        in_source_order, desc="ingest", unit="file", disable=None if progress else True, leave=False
    ):
        dest = raw / entry.label / entry.rel
        try:
            st = dest.stat() if dest.exists() else None
            if st is not None and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
                result.unchanged += 1
                continue
            if st is not None and st.st_size == entry.size:
                dest_sha, _ = _known_sha256(known, entry.path, st, dest)
                if dest_sha == _entry_sha256(entry):
                    # Same bytes, other timestamp (e.g. after `dvc checkout`): nothing to copy.
                    result.hashes[entry.path] = (store.stat_key(st), dest_sha)
                    result.unchanged += 1
                    continue
            digest = _copy_entry(entry, dest)
            result.hashes[entry.path] = (store.stat_key(dest.stat()), digest)
            (result.updated if st is not None else result.copied).append(entry.path)
        except PawflowError:
            raise
        except OSError as err:
            if err.errno in NO_SPACE:  # a full disk is not one bad file: stop, say so
                with no_space_is_a_clear_error(dest):
                    raise
            result.failed.append({"path": entry.path, "reason": f"copy failed: {err.strerror or err}"})
    return result


def check_labels_against_raw(entries: list[Entry], raw: Path) -> None:
    """data/raw only grows: a source whose `Cat/` was `cat/` last time would leave both as classes."""
    if not raw.is_dir():
        return
    present = {p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for label in sorted({e.label for e in entries} - present):
        if twins := same_but_for_case([label, *(p for p in present if p.casefold() == label.casefold())]):
            raise refuse_case_twins(
                str(raw),
                twins,
                f" (the source has {label!r}, {raw} already holds the other from an earlier ingest)",
            )


def remove_temporaries(raw: Path) -> int:
    """Delete temporary files that an interrupted copy left (they never carry a final name)."""
    removed = 0
    if raw.is_dir():
        for p in raw.rglob(f"{TEMP_PREFIX}*"):
            if p.is_file() and len(p.name) == len(TEMP_PREFIX) + 8:
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def manifest(
    raw: Path, known: dict[str, tuple[tuple[int, int, int], str]], progress: bool = True
) -> tuple[pd.DataFrame, dict[str, tuple[tuple[int, int, int], str]]]:
    """One row per file in raw (path, label, bytes, sha256), sorted; hashes reused when stat matches."""
    rows = []
    fresh: dict[str, tuple[tuple[int, int, int], str]] = {}
    files = sorted(p for p in raw.rglob("*") if p.is_file() and not p.is_symlink()) if raw.is_dir() else []
    for p in tqdm(files, desc="hash", unit="file", disable=None if progress else True, leave=False):
        rel = p.relative_to(raw).as_posix()
        st = p.stat()
        digest, hashed = _known_sha256(known, rel, st, p)
        if hashed:
            fresh[rel] = (store.stat_key(st), digest)
        rows.append({"path": rel, "label": rel.split("/", 1)[0], "bytes": st.st_size, "sha256": digest})
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"bytes": "int64"})
    return df, fresh


def report(listing: Listing, result: SyncResult, df: pd.DataFrame) -> IngestReport:
    """reports/ingest.json: the source, what data/raw holds, what was skipped (a function of the
    source and data/raw: what this run copied is in run_figures)."""
    in_source = {e.path for e in listing.entries}
    not_in_source = sorted(set(df["path"]) - in_source)
    return {
        "source": {
            "kind": listing.kind,
            "location": listing.location,
            "archive_sha256": listing.archive_sha256,
        },
        "files": len(df),
        "bytes": int(df["bytes"].sum()) if len(df) else 0,
        "per_label": {str(k): int(v) for k, v in df.groupby("label").size().items()},
        "skipped": sorted(listing.skipped + result.failed, key=lambda s: s["path"]),
        "ignored_folders": sorted(listing.ignored, key=lambda s: s["path"]),
        "not_in_source": not_in_source,
    }


def run_figures(result: SyncResult, hashed: int) -> dict[str, int]:
    """What this run did (for the run history): files copied, updated, left as they were, hashed
    (the rest had an unchanged size, mtime and inode)."""
    return {
        "copied": len(result.copied),
        "updated": len(result.updated),
        "unchanged": result.unchanged,
        "hashed": hashed,
    }
