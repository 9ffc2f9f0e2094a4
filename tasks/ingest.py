"""Ingest: copy a labelled photo collection (folder, archive or URL of one) into data/raw, incrementally.

Labels are folder names. data/raw only grows: a file is copied when it is new or its bytes changed in
the source, never deleted; the manifest lists every file in data/raw with its sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pandas as pd
import requests
from tqdm import tqdm

from tasks import store
from tasks.errors import PawflowError
from tasks.fileio import HASH_BLOCK, NO_SPACE, no_space_is_a_clear_error, sha256_file

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "label", "bytes", "sha256"]
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Folders that archivers and operating systems add; never a class.
JUNK_DIRS = {"__MACOSX", "$RECYCLE.BIN", "System Volume Information"}
TEMP_PREFIX = ".tmp-"
# Small enough that a dropped connection loses little of what was already received.
DOWNLOAD_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """One file of the source, placed under a label."""

    label: str
    rel: str  # path inside the label folder, POSIX
    size: int
    mtime_ns: int
    open: Callable[[], BinaryIO] = field(compare=False, repr=False)

    @property
    def path(self) -> str:
        return f"{self.label}/{self.rel}"


@dataclass
class Listing:
    """What a source holds: entries by class plus everything that was not taken, with why."""

    kind: str
    location: str
    entries: list[Entry]
    skipped: list[dict[str, str]]
    archive_sha256: str | None = None


# --------------------------------------------------------------------------- source kinds


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename it"
    return None


def _is_junk_dir(name: str) -> bool:
    return name.startswith(".") or name in JUNK_DIRS


def find_class_root(files: list[str], dirs: set[str]) -> tuple[str, list[str], list[str], list[str]]:
    """From POSIX file and folder paths (folders end in '/'), find the folder whose subfolders are classes.

    Descends while there is a single (non-junk) folder, so `PetImages/Cat/1.jpg` works like `Cat/1.jpg`.
    Returns (prefix, classes with files, empty class folders, files outside any class folder).
    """
    all_dirs = set(dirs)
    for f in files:
        parts = f.split("/")[:-1]
        all_dirs.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    prefix = ""
    outside: list[str] = []
    while True:
        children = sorted(
            {d[len(prefix) :].split("/", 1)[0] for d in all_dirs if d.startswith(prefix) and d != prefix}
        )
        children = [c for c in children if c and not _is_junk_dir(c)]
        outside += [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        if len(children) != 1:
            break
        prefix += children[0] + "/"
    with_files = {f[len(prefix) :].split("/", 1)[0] for f in files if f.startswith(prefix)}
    classes = [c for c in children if c in with_files]
    empty = [c for c in children if c not in with_files]
    if not children and prefix:
        # A single folder of files: it is one class, and the error below says so.
        classes = [prefix.rstrip("/").rsplit("/", 1)[-1]]
    return prefix, classes, empty, outside


def _classify(
    entries_by_path: dict[str, tuple[int, int, Callable[[], BinaryIO]]],
    dirs: set[str],
    kind: str,
    location: str,
    skipped: list[dict[str, str]],
) -> Listing:
    prefix, classes, empty, outside = find_class_root(sorted(entries_by_path), dirs)
    skipped += [{"path": f, "reason": "not inside a class folder"} for f in outside]
    skipped += [{"path": prefix + d + "/", "reason": "empty class folder: ignored"} for d in empty]
    if len(classes) < 2:
        found = ", ".join(repr(c) for c in classes) or "none"
        hint = f"; empty: {', '.join(empty)}" if empty else ""
        raise PawflowError(
            f"{location}: found {len(classes)} class folder(s) with files: {found}{hint}. "
            "A classifier needs at least two, one folder per label (e.g. Cat/ and Dog/).",
            "Point ingest.source at the folder (or archive) that holds one subfolder per label.",
        )
    entries = []
    for path, (size, mtime_ns, opener) in sorted(entries_by_path.items()):
        if path.startswith(prefix):
            label, _, rel = path[len(prefix) :].partition("/")
            if label in classes and rel:
                entries.append(Entry(label, rel, size, mtime_ns, opener))
    return Listing(kind, location, entries, skipped)


def list_directory(root: Path) -> Listing:
    """Every regular file under root (symlinks are not followed; they are listed as skipped)."""
    files: dict[str, tuple[int, int, Callable[[], BinaryIO]]] = {}
    dirs: set[str] = set()
    skipped: list[dict[str, str]] = []

    def opener(p: Path) -> Callable[[], BinaryIO]:
        return lambda: open(p, "rb")

    def walk_error(err: OSError) -> None:
        skipped.append(
            {
                "path": str(Path(err.filename).relative_to(root)) if err.filename else "?",
                "reason": f"folder cannot be read: {err.strerror}",
            }
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for d in list(dirnames):
            full = Path(dirpath, d)
            problem = _bad_name(d)
            if full.is_symlink() or problem:
                skipped.append(
                    {
                        "path": (rel_dir + d).encode("utf-8", "replace").decode(),
                        "reason": problem or "symlink to a folder: not followed",
                    }
                )
                dirnames.remove(d)
            else:
                dirs.add(rel_dir + d + "/")
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = rel_dir + name
            problem = _bad_name(rel)
            if problem:
                skipped.append({"path": rel.encode("utf-8", "replace").decode(), "reason": problem})
                continue
            try:
                st = full.lstat()
            except OSError as err:
                skipped.append({"path": rel, "reason": f"cannot stat: {err.strerror}"})
                continue
            if stat.S_ISLNK(st.st_mode):
                skipped.append({"path": rel, "reason": "symlink: not followed"})
            elif not stat.S_ISREG(st.st_mode):
                skipped.append({"path": rel, "reason": "not a regular file (device, pipe or socket)"})
            elif not os.access(full, os.R_OK):
                skipped.append({"path": rel, "reason": "unreadable: permission denied"})
            else:
                files[rel] = (st.st_size, st.st_mtime_ns, opener(full))
    return _classify(files, dirs, "directory", str(root), skipped)


def _unsafe_member(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..' (zip-slip)"
    return _bad_name(name)


def _refuse(archive: Path, member: str, why: str) -> PawflowError:
    return PawflowError(
        f"{archive}: refused: entry {member!r} is unsafe ({why}). Nothing was extracted.",
        "Only use archives you trust; repack it without that entry.",
    )


def list_archive(archive: Path, max_bytes: int, max_files: int) -> Listing:
    """Check every member (zip-slip, links, devices, bomb size) before anything is extracted."""
    files: dict[str, tuple[int, int, Callable[[], BinaryIO]]] = {}
    dirs: set[str] = set()
    total = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
            if len(infos) > max_files:
                raise _refuse(archive, infos[max_files].filename, f"more than {max_files} entries")
            for info in infos:
                name = info.filename
                if why := _unsafe_member(name):
                    raise _refuse(archive, name, why)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _refuse(archive, name, "symbolic link")
                if info.is_dir():
                    dirs.add(name if name.endswith("/") else name + "/")
                    continue
                total += info.file_size
                if total > max_bytes:
                    raise _refuse(archive, name, f"expands beyond ingest.max_archive_bytes={max_bytes}")
                mtime_ns = int(datetime(*info.date_time).timestamp()) * 1_000_000_000
                files[name] = (info.file_size, mtime_ns, _zip_opener(archive, name, info.file_size))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
            if len(members) > max_files:
                raise _refuse(archive, members[max_files].name, f"more than {max_files} entries")
            for m in members:
                if why := _unsafe_member(m.name):
                    raise _refuse(archive, m.name, why)
                if m.issym() or m.islnk():
                    raise _refuse(archive, m.name, "link")
                if m.isdev() or not (m.isfile() or m.isdir()):
                    raise _refuse(archive, m.name, "device or special file")
                if m.isdir():
                    dirs.add(m.name.rstrip("/") + "/")
                    continue
                total += m.size
                if total > max_bytes:
                    raise _refuse(archive, m.name, f"expands beyond ingest.max_archive_bytes={max_bytes}")
                files[m.name] = (m.size, int(m.mtime) * 1_000_000_000, _tar_opener(archive, m.name))
        else:
            raise PawflowError(
                f"{archive}: not a zip or tar archive.",
                "ingest.source must be a folder, a .zip/.tar(.gz) archive or a URL of one.",
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise PawflowError(
            f"{archive}: the archive is corrupt or unreadable ({type(err).__name__}: {err}).",
            "Download it again (a partial download?) or check the file.",
        ) from None
    return _classify(files, dirs, "archive", str(archive), [])


class _Capped:
    """A reader that refuses to return more bytes than the archive declared (zip bombs lie)."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.left = raw, limit

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(HASH_BLOCK if n < 0 else n)
        self.left -= len(data)
        if self.left < 0:
            raise PawflowError(
                "an archive entry expands beyond its declared size (a zip bomb?).", "Do not use this archive."
            )
        return data

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zip_opener(archive: Path, name: str, size: int) -> Callable[[], BinaryIO]:
    def open_member() -> BinaryIO:
        zf = zipfile.ZipFile(archive)
        member = zf.open(name)
        original_close = member.close

        def close() -> None:
            original_close()
            zf.close()

        member.close = close  # type: ignore[method-assign]
        return _Capped(member, size)  # type: ignore[return-value]

    return open_member


def _tar_opener(archive: Path, name: str) -> Callable[[], BinaryIO]:
    def open_member() -> BinaryIO:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed with the member)
        member = tf.extractfile(name)
        if member is None:
            tf.close()
            raise PawflowError(f"{archive}: entry {name!r} has no data.", "Repack the archive.")
        original_close = member.close

        def close() -> None:
            original_close()
            tf.close()

        member.close = close  # type: ignore[method-assign]
        return member  # type: ignore[return-value]

    return open_member


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    bytes: int
    from_cache: bool


def _filename_for(url: str) -> str:
    name = PurePosixPath(requests.utils.urlparse(url).path).name or "download"
    return name if name.lower().endswith(ARCHIVE_SUFFIXES) else name + ".archive"


def download(
    url: str,
    folder: Path,
    retries: int,
    timeout_s: float,
    expected_sha256: str | None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Downloaded:
    """Download url into folder, resuming a partial file and retrying with exponential backoff.

    A complete earlier download is revalidated with If-Modified-Since/If-None-Match, not fetched again.
    """
    folder = folder / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / _filename_for(url)
    part = final.with_name(final.name + ".part")
    meta_path = final.with_name(final.name + ".meta.json")
    meta = _read_meta(meta_path) if final.exists() else {}
    last_error: Exception | None = None
    for attempt in range(retries):
        if attempt:
            delay = min(30.0, 0.5 * 2 ** (attempt - 1))
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs",
                url,
                last_error,
                attempt,
                retries - 1,
                delay,
            )
            sleep(delay)
        try:
            headers = {}
            if meta and final.exists():
                if meta.get("etag"):
                    headers["If-None-Match"] = meta["etag"]
                if meta.get("last_modified"):
                    headers["If-Modified-Since"] = meta["last_modified"]
            elif part.exists() and part.stat().st_size:
                headers["Range"] = f"bytes={part.stat().st_size}-"
            with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
                if resp.status_code == 304:
                    digest = meta.get("sha256") or sha256_file(final)
                    return _verified(
                        Downloaded(final, digest, final.stat().st_size, True), expected_sha256, url
                    )
                if resp.status_code == 416 and part.exists():
                    part.unlink()  # the server has less than we have: start over
                    raise OSError("range not satisfiable; restarting")
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise OSError(f"HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise PawflowError(
                        f"{url}: HTTP {resp.status_code} {resp.reason}.",
                        "Check ingest.source: the URL must point to a .zip or .tar(.gz) file.",
                    )
                append = resp.status_code == 206
                done = part.stat().st_size if append and part.exists() else 0
                size = resp.headers.get("Content-Length")
                total = done + int(size) if size is not None else None
                with (
                    open(part, "ab" if append else "wb") as out,
                    tqdm(
                        total=total,
                        initial=done,
                        unit="B",
                        unit_scale=True,
                        desc=f"download {final.name}",
                        disable=None if progress else True,
                        leave=False,
                    ) as bar,
                ):
                    for block in resp.iter_content(DOWNLOAD_BLOCK):
                        out.write(block)
                        bar.update(len(block))
                got = part.stat().st_size
                if total is not None and got != total:
                    raise OSError(f"connection closed after {got} of {total} bytes")
                digest = sha256_file(part)
                os.replace(part, final)
                _write_meta(
                    meta_path,
                    {
                        "url": url,
                        "etag": resp.headers.get("ETag"),
                        "last_modified": resp.headers.get("Last-Modified"),
                        "sha256": digest,
                        "bytes": got,
                    },
                )
                return _verified(Downloaded(final, digest, got, False), expected_sha256, url)
        except (requests.RequestException, OSError) as err:
            last_error = err
    raise PawflowError(
        f"{url}: download failed after {retries} attempts ({last_error}).",
        "Check the URL and the network, or download it yourself and set ingest.source to the local file.",
    )


def _verified(d: Downloaded, expected: str | None, url: str) -> Downloaded:
    if expected and d.sha256 != expected:
        raise PawflowError(
            f"{url}: sha256 is {d.sha256}, but ingest.sha256 expects {expected}.",
            "The file changed on the server or was corrupted: check it, then update "
            "ingest.sha256 (or set it to null).",
        )
    return d


def _read_meta(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    from tasks.fileio import write_json

    write_json(path, meta)


# --------------------------------------------------------------------------- listing a source


def resolve(
    source: str,
    downloads: Path,
    max_bytes: int,
    max_files: int,
    retries: int,
    timeout_s: float,
    expected_sha256: str | None,
    progress: bool = True,
) -> Listing:
    """Turn ingest.source into a Listing, downloading a URL first."""
    if is_url(source):
        d = download(source, downloads, retries, timeout_s, expected_sha256, progress)
        listing = list_archive(d.path, max_bytes, max_files)
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
    listing = list_archive(path, max_bytes, max_files)
    listing.archive_sha256 = sha256_file(path)
    if expected_sha256 and listing.archive_sha256 != expected_sha256:
        raise PawflowError(
            f"{path}: sha256 is {listing.archive_sha256}, but ingest.sha256 expects {expected_sha256}.",
            "Check the file, or update ingest.sha256 (or null).",
        )
    return listing


# --------------------------------------------------------------------------- copying into data/raw


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
    h = hashlib.sha256()
    with entry.open() as src:
        while block := src.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def sync(
    entries: list[Entry], raw: Path, known: dict[str, tuple[tuple[int, int, int], str]], progress: bool = True
) -> SyncResult:
    """Copy new or changed entries into raw; unchanged files (size and mtime equal) are not read."""
    result = SyncResult()
    for entry in tqdm(entries, desc="ingest", unit="file", disable=None if progress else True, leave=False):
        dest = raw / entry.label / entry.rel
        try:
            st = dest.stat() if dest.exists() else None
            if st is not None and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
                result.unchanged += 1
                continue
            if st is not None and st.st_size == entry.size:
                cached = known.get(entry.path)
                dest_sha = cached[1] if cached and cached[0] == store.stat_key(st) else sha256_file(dest)
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
        key = store.stat_key(st)
        cached = known.get(rel)
        digest = cached[1] if cached and cached[0] == key else sha256_file(p)
        if not cached or cached[0] != key:
            fresh[rel] = (key, digest)
        rows.append({"path": rel, "label": rel.split("/", 1)[0], "bytes": st.st_size, "sha256": digest})
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"bytes": "int64"})
    return df, fresh


def report(listing: Listing, result: SyncResult, df: pd.DataFrame) -> dict:
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
