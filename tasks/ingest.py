"""Ingest: copy a labelled photo collection (folder, archive or URL of one) into data/raw, incrementally.

Labels are folder names. A file is copied when it is new or its bytes changed in the source. In
ingest.mode `mirror` (the default) data/raw then holds exactly the source's files: a file the source no
longer has leaves data/raw, and one moved to another place (recognised by its sha256) is moved in
data/raw too, so a photo moved to another class folder changes label. A run that would remove more
than ingest.max_removed_fraction of data/raw is refused before anything is touched, unless it is told
to accept it (an unmounted share looks like a source that lost every photo). The versions of data/raw
that runs recorded stay in the DVC cache and remote. In mode `append` data/raw only grows.

The manifest lists every file in data/raw with its sha256. Listing a folder is in tasks/photos/listing.py,
verifying an archive in tasks/photos/archives.py, downloading a URL in tasks/photos/download.py; this module
resolves the source, mirrors and copies, and writes the manifest and report.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
from tqdm import tqdm

from tasks.core.errors import PawflowError, Refused
from tasks.core.fileio import HASH_BLOCK, NO_SPACE, no_space_is_a_clear_error, sha256_file, sha256_stream
from tasks.photos import store
from tasks.photos.archives import list_archive
from tasks.photos.download import download
from tasks.photos.listing import (
    Entry,
    Listing,
    list_directory,
    look_alikes,
    name_key,
    refuse_look_alikes,
    spelled,
)
from tasks.reports.reports import IngestReport, Skipped

if TYPE_CHECKING:
    from tasks.core.params import Ingest

MANIFEST_COLUMNS = ["path", "label", "bytes", "sha256"]
# `dvc repro` cannot pass a flag to a stage: a big removal is accepted there for one command with
# PAWFLOW_ACCEPT_REMOVALS=<the count the refusal names> (or `any`, what `pawflow run --accept-removals`
# sets for its own dvc repro). A count, so that a variable left set in a shell accepts nothing else.
# (Read by flows/ingest.py: tasks take plain arguments.)
ACCEPT_ENV = "PAWFLOW_ACCEPT_REMOVALS"
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
    failed: list[Skipped] = field(default_factory=list)
    hashes: dict[str, tuple[tuple[int, int, int], str]] = field(default_factory=dict)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path): same bytes
    removed: list[str] = field(default_factory=list)


@dataclass
class MirrorPlan:
    """What makes data/raw hold exactly the source's files, before any of it is done."""

    moves: list[tuple[str, str]]  # (path in data/raw, path in the source) of the same bytes
    removals: list[str]  # paths in data/raw whose bytes the source no longer holds anywhere
    raw_files: int  # files in data/raw before the run


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


def raw_files(raw: Path) -> dict[str, Path]:
    """Every regular file in data/raw by its path there (<label>/<file>), sorted."""
    if not raw.is_dir():
        return {}
    files = sorted(p for p in raw.rglob("*") if p.is_file() and not p.is_symlink())
    return {p.relative_to(raw).as_posix(): p for p in files}


# Skip reasons of source files that are not there as photos at all: the others (unreadable, a symlink,
# a name that is not UTF-8, a folder that cannot be read) are still in the source.
NOT_IN_SOURCE = ("not inside a class folder", "empty class folder")


def still_in_source(rel: str, skipped: list[Skipped]) -> bool:
    """Whether data/raw's `rel` (<label>/<file>) is a file or under a folder that the source still has
    but could not read (listing.skipped, whose paths may start with folders above the class folders)."""
    for s in skipped:
        if s["reason"].startswith(NOT_IN_SOURCE):
            continue
        parts = s["path"].rstrip("/").split("/")
        for k in range(len(parts)):
            tail = "/".join(parts[k:])
            if rel == tail or rel.startswith(tail + "/"):
                return True
    return False


def plan_mirror(
    entries: list[Entry],
    raw: Path,
    known: dict[str, tuple[tuple[int, int, int], str]],
    skipped: list[Skipped] | None = None,
    progress: bool = True,
) -> MirrorPlan:
    """The moves and removals that make data/raw hold exactly the source's files. A file the source still
    has but cannot read (skipped: unreadable, a symlink, ...) is neither: it stays as it is. Reads
    nothing but the files that could be moves: a source file at a new path whose size equals that of a
    data/raw file at a path the source lost (their sha256 decides), read in source order (an archive
    forward, once)."""
    present = raw_files(raw)
    in_source = {e.path for e in entries}
    gone = [rel for rel in present if rel not in in_source and not still_in_source(rel, skipped or [])]
    if not gone:
        return MirrorPlan([], [], len(present))
    arrivals = [e for e in entries if e.path not in present]
    arrival_sizes = {e.size for e in arrivals}
    gone_by_sha: dict[str, list[str]] = {}
    for rel in gone:
        st = present[rel].stat()
        if st.st_size in arrival_sizes:
            digest, _ = _known_sha256(known, rel, st, present[rel])
            gone_by_sha.setdefault(digest, []).append(rel)
    sizes = {present[r].stat().st_size for rels in gone_by_sha.values() for r in rels}
    candidates = sorted((e for e in arrivals if e.size in sizes), key=lambda e: e.order)
    arrived_by_sha: dict[str, list[str]] = {}
    for e in tqdm(candidates, desc="moves", unit="file", disable=None if progress else True, leave=False):
        arrived_by_sha.setdefault(_entry_sha256(e), []).append(e.path)
    moves: list[tuple[str, str]] = []
    for digest, olds in gone_by_sha.items():
        moves += zip(sorted(olds), sorted(arrived_by_sha.get(digest, [])), strict=False)
    moved = {old for old, _ in moves}
    return MirrorPlan(sorted(moves), [rel for rel in gone if rel not in moved], len(present))


def guard_removals(
    plan: MirrorPlan, max_fraction: float, location: str, accept_all: bool, accept_count: int | None
) -> None:
    """Refuse (before anything is touched) a run that would remove more than max_fraction of data/raw,
    unless it was told to accept all removals or exactly this many."""
    n = len(plan.removals)
    if not n or n / plan.raw_files <= max_fraction or accept_all or accept_count == n:
        return
    per_label: dict[str, int] = {}
    for rel in plan.removals:
        per_label[rel.split("/", 1)[0]] = per_label.get(rel.split("/", 1)[0], 0) + 1
    per = ", ".join(f"{label} {count:,}" for label, count in sorted(per_label.items()))
    told = f" (PAWFLOW_ACCEPT_REMOVALS={accept_count} was given)" if accept_count is not None else ""
    raise Refused(
        f"the source {location} no longer holds {n:,} of the {plan.raw_files:,} photos in data/raw "
        f"({n / plan.raw_files:.1%}: {per}; e.g. {plan.removals[0]}), more than ingest.max_removed_fraction "
        f"{max_fraction:g}{told}. Nothing was removed or copied: an unmounted share, an emptied folder or a "
        "wrong path looks like this.",
        "Check ingest.source. If these photos really left the source, accept their removal for one run: "
        "`pawflow run --accept-removals`, `python -m flows.pipeline --accept-removals` (a deployment: "
        f"--param accept_removals=true) or `PAWFLOW_ACCEPT_REMOVALS={n} dvc repro`. Removed photos stay "
        "reachable through DVC (docs/collection.md).",
    )


def apply_mirror(plan: MirrorPlan, entries: list[Entry], raw: Path) -> SyncResult:
    """Move and remove files in data/raw as planned (each move one rename: the bytes are not copied)."""
    result = SyncResult()
    by_path = {e.path: e for e in entries}
    emptied: set[Path] = set()
    for old, new in plan.moves:
        src, dest = raw / old, raw / new
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        entry = by_path[new]
        os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))  # as a copy would have it: no re-read next run
        emptied.add(src.parent)
        result.moved.append((old, new))
    for rel in plan.removals:
        (raw / rel).unlink(missing_ok=True)
        emptied.add((raw / rel).parent)
        result.removed.append(rel)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        while folder != raw and folder.is_relative_to(raw) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return result


def update(
    listing: Listing,
    raw: Path,
    known: dict[str, tuple[tuple[int, int, int], str]],
    mode: str,
    max_removed_fraction: float,
    accept_all: bool = False,
    accept_count: int | None = None,
    progress: bool = True,
) -> SyncResult:
    """Bring data/raw up to date with the source: in mirror mode, moves and removals first (refused as a
    whole when too many: guard_removals), then the copies of new and changed files."""
    entries = listing.entries
    if mode == "append":
        return sync(entries, raw, known, progress)
    plan = plan_mirror(entries, raw, known, listing.skipped, progress)
    guard_removals(plan, max_removed_fraction, listing.location, accept_all, accept_count)
    mirrored = apply_mirror(plan, entries, raw)
    result = sync(entries, raw, known, progress, check_raw_labels=False)
    result.moved, result.removed = mirrored.moved, mirrored.removed
    return result


def sync(
    entries: list[Entry],
    raw: Path,
    known: dict[str, tuple[tuple[int, int, int], str]],
    progress: bool = True,
    check_raw_labels: bool = True,
) -> SyncResult:
    """Copy new or changed entries into raw; unchanged files (size and mtime equal) are not read.
    check_raw_labels: refuse a class that differs from one already in raw by case only (append mode,
    where raw keeps its old classes; a mirrored raw holds the source's classes only)."""
    if check_raw_labels:
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
    """data/raw only grows: a source whose `Cat/` was `cat/` (or `Café/` spelled another way) last time
    would leave both as classes."""
    if not raw.is_dir():
        return
    present = {p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for label in sorted({e.label for e in entries} - present):
        if twins := look_alikes([label, *(p for p in present if name_key(p) == name_key(label))]):
            raise refuse_look_alikes(
                str(raw),
                twins,
                f" (the source has {spelled(label)}, {raw} already holds the other from an earlier ingest)",
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
    files = raw_files(raw)
    for rel, p in tqdm(
        files.items(), desc="hash", unit="file", disable=None if progress else True, leave=False
    ):
        st = p.stat()
        digest, hashed = _known_sha256(known, rel, st, p)
        if hashed:
            fresh[rel] = (store.stat_key(st), digest)
        rows.append({"path": rel, "label": rel.split("/", 1)[0], "bytes": st.st_size, "sha256": digest})
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"bytes": "int64"})
    return df, fresh


def report(
    listing: Listing, result: SyncResult, df: pd.DataFrame, mode: Literal["mirror", "append"]
) -> IngestReport:
    """reports/ingest.json: the source, what data/raw holds, what was skipped (a function of the
    source and data/raw: what this run copied, moved or removed is in run_figures)."""
    in_source = {e.path for e in listing.entries}
    not_in_source = sorted(set(df["path"]) - in_source)
    return {
        "source": {
            "kind": listing.kind,
            "location": listing.location,
            "archive_sha256": listing.archive_sha256,
        },
        "mode": mode,
        "files": len(df),
        "bytes": int(df["bytes"].sum()) if len(df) else 0,
        "per_label": {str(k): int(v) for k, v in df.groupby("label").size().items()},
        "skipped": sorted(listing.skipped + result.failed, key=lambda s: s["path"]),
        "ignored_folders": sorted(listing.ignored, key=lambda s: s["path"]),
        "not_in_source": not_in_source,
    }


def _label(path: str) -> str:
    return path.split("/", 1)[0]


def run_figures(result: SyncResult, hashed: int) -> dict:
    """What this run did (for the run history and the run's summary, never a tracked output): files
    copied, updated, left as they were, hashed (the rest had an unchanged size, mtime and inode);
    removed (per class), relabelled (moved to another class folder: per old class, per new class) and
    renamed (moved within its class folder)."""
    relabelled = [(old, new) for old, new in result.moved if _label(old) != _label(new)]
    per_move: dict[str, dict[str, int]] = {}
    for old, new in relabelled:
        to = per_move.setdefault(_label(old), {})
        to[_label(new)] = to.get(_label(new), 0) + 1
    copied_per_class: dict[str, int] = {}
    for path in result.copied:
        copied_per_class[_label(path)] = copied_per_class.get(_label(path), 0) + 1
    removed_per_class: dict[str, int] = {}
    for path in result.removed:
        removed_per_class[_label(path)] = removed_per_class.get(_label(path), 0) + 1
    return {
        "copied": len(result.copied),
        "updated": len(result.updated),
        "unchanged": result.unchanged,
        "hashed": hashed,
        "removed": len(result.removed),
        "relabelled": len(relabelled),
        "renamed": len(result.moved) - len(relabelled),
        "copied_per_class": dict(sorted(copied_per_class.items())),
        "removed_per_class": dict(sorted(removed_per_class.items())),
        "relabelled_per_class": {k: dict(sorted(v.items())) for k, v in sorted(per_move.items())},
    }
