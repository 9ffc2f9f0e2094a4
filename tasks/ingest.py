"""Ingest: copy a labelled photo collection (folder, archive or URL of one) into data/raw, incrementally.

Labels are folder names. data/raw only grows: a file is copied when it is new or its bytes changed in
the source, never deleted; the manifest lists every file in data/raw with its sha256.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import logging
import lzma
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
from typing import TYPE_CHECKING, BinaryIO

import pandas as pd
import requests
from tqdm import tqdm

from tasks import store
from tasks.errors import PawflowError
from tasks.fileio import HASH_BLOCK, NO_SPACE, no_space_is_a_clear_error, sha256_file

if TYPE_CHECKING:
    from tasks.params import Ingest

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
    # Position in the source (archive order): copies are made in this order, reading an archive forward.
    order: int = field(default=0, compare=False, repr=False)

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
    # Junk and hidden folders where classes were looked for (path, reason, files): reported, not classes.
    ignored: list[dict[str, str | int]] = field(default_factory=list)


# --------------------------------------------------------------------------- source kinds


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename it"
    return None


def _shown(name: str) -> str:
    """A name that may hold undecodable bytes (surrogate escapes), printable in JSON and logs: each
    such byte shown as U+FFFD."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return name.encode("utf-8", "replace").decode()


def _junk_reason(name: str) -> str | None:
    if name in JUNK_DIRS:
        return "folder added by an archiver or operating system, not a class: ignored"
    if name.startswith("."):
        return "hidden folder (its name starts with '.'), not a class: ignored"
    return None


def _is_junk_dir(name: str) -> bool:
    return _junk_reason(name) is not None


@dataclass(frozen=True)
class ClassRoot:
    """Where the class folders are, and what was left out (every path POSIX, folders end in '/')."""

    prefix: str
    classes: list[str]
    empty: list[str]
    outside: list[str]  # files beside the class folders or above them
    ignored: list[dict[str, str | int]]  # junk/hidden folders: path, reason, files


def find_class_root(files: list[str], dirs: set[str]) -> ClassRoot:
    """From POSIX file and folder paths (folders end in '/'), find the folder whose subfolders are classes.

    Descends while there is a single (non-junk) folder, so `PetImages/Cat/1.jpg` works like `Cat/1.jpg`.
    Junk and hidden folders met on the way (`__MACOSX`, `.git`, `...`) are ignored and listed.
    """
    all_dirs = set(dirs)
    for f in files:
        parts = f.split("/")[:-1]
        all_dirs.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    prefix = ""
    outside: list[str] = []
    ignored: list[dict[str, str | int]] = []
    while True:
        names = sorted(
            {d[len(prefix) :].split("/", 1)[0] for d in all_dirs if d.startswith(prefix) and d != prefix}
        )
        children = [c for c in names if c and not _is_junk_dir(c)]
        for junk in (c for c in names if c and _is_junk_dir(c)):
            folder = prefix + junk + "/"
            held = sum(1 for f in files if f.startswith(folder))
            ignored.append({"path": folder, "reason": _junk_reason(junk) or "", "files": held})
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
    return ClassRoot(prefix, classes, empty, outside, ignored)


def same_but_for_case(labels: list[str]) -> list[list[str]]:
    """Groups of labels that differ only in case (`cat`, `Cat`): one class to a person, two to a model."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def _refuse_case_twins(location: str, twins: list[list[str]], where: str) -> PawflowError:
    shown = "; ".join(" and ".join(f"{label!r}" for label in group) for group in twins)
    return PawflowError(
        f"{location}: class folders that differ only in case: {shown}{where}. They would become separate "
        "classes of the same animal (and collide on a case-insensitive disk). Nothing was copied.",
        "Merge each group into one folder with one spelling (or rename one if they really are different "
        "classes), then run ingest again.",
    )


def _classify(
    entries_by_path: dict[str, tuple[int, int, Callable[[], BinaryIO]]],
    dirs: set[str],
    kind: str,
    location: str,
    skipped: list[dict[str, str]],
) -> Listing:
    root = find_class_root(sorted(entries_by_path), dirs)
    prefix, classes, empty = root.prefix, root.classes, root.empty
    skipped += [{"path": f, "reason": "not inside a class folder"} for f in root.outside]
    skipped += [{"path": prefix + d + "/", "reason": "empty class folder: ignored"} for d in empty]
    if len(classes) < 2:
        found = ", ".join(repr(c) for c in classes) or "none"
        hint = f"; empty: {', '.join(empty)}" if empty else ""
        raise PawflowError(
            f"{location}: found {len(classes)} class folder(s) with files: {found}{hint}. "
            "A classifier needs at least two, one folder per label (e.g. Cat/ and Dog/).",
            "Point ingest.source at the folder (or archive) that holds one subfolder per label.",
        )
    if twins := same_but_for_case(classes):
        raise _refuse_case_twins(location, twins, "")
    entries = []
    order = {path: i for i, path in enumerate(entries_by_path)}  # the source's own order
    for path, (size, mtime_ns, opener) in sorted(entries_by_path.items()):
        if path.startswith(prefix):
            label, _, rel = path[len(prefix) :].partition("/")
            if label in classes and rel:
                entries.append(Entry(label, rel, size, mtime_ns, opener, order[path]))
    return Listing(kind, location, entries, skipped, ignored=root.ignored)


def _open_regular(p: Path) -> BinaryIO:
    """Open a file for reading only if it is (still) a regular file: a FIFO put in its place since the
    listing would block open() forever, a device could be read forever. Never follows a symlink."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more (device, pipe or socket)", str(p))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def list_directory(root: Path) -> Listing:
    """Every regular file under root, found with lstat only: nothing is opened here, so a FIFO, socket
    or device cannot block or be read; they, symlinks and names that are not UTF-8 are listed as skipped."""
    files: dict[str, tuple[int, int, Callable[[], BinaryIO]]] = {}
    dirs: set[str] = set()
    skipped: list[dict[str, str]] = []

    def opener(p: Path) -> Callable[[], BinaryIO]:
        return lambda: _open_regular(p)

    def walk_error(err: OSError) -> None:
        skipped.append(
            {
                "path": _shown(str(Path(err.filename).relative_to(root))) if err.filename else "?",
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
                        "path": _shown(rel_dir + d),
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
                skipped.append({"path": _shown(rel), "reason": problem})
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
    return None


def _refuse(archive: Path, member: str, why: str, fix: str | None = None) -> PawflowError:
    return PawflowError(
        f"{archive}: refused: entry {_shown(member)!r} is unsafe ({why}). Nothing was extracted.",
        fix or "Only use archives you trust; repack it without that entry.",
    )


def _damaged(archive: Path, member: str | None, why: str) -> PawflowError:
    where = f"entry {_shown(member)!r}: " if member else ""
    return PawflowError(
        f"{archive}: the archive is damaged ({where}{why}). Nothing was extracted.",
        "Download or copy it again (a partial or corrupted transfer?) and check it with `unzip -t` or "
        "`tar tzf`; ingest takes an archive only when every entry reads back intact.",
    )


class _Members:
    """The metadata checks every archive gets before any data is read or written: member count and
    total size, per-member and whole-archive expansion ratio (zip bombs), duplicate names, a name used
    both as a file and as a folder. Names that are not UTF-8 are skipped with a reason."""

    def __init__(self, archive: Path, cfg: Ingest) -> None:
        self.archive, self.cfg = archive, cfg
        self.size = archive.stat().st_size
        self.count = 0
        self.total = 0
        self.files: dict[str, tuple[int, int, Callable[[], BinaryIO]]] = {}
        self.dirs: set[str] = set()
        self.skipped: list[dict[str, str]] = []

    def counted(self, name: str) -> None:
        self.count += 1
        if self.count > self.cfg.max_archive_files:
            raise _refuse(
                self.archive,
                name,
                f"more than {self.cfg.max_archive_files} entries (ingest.max_archive_files)",
                "Only use archives you trust; if it is genuine, raise ingest.max_archive_files.",
            )
        if why := _unsafe_member(name):
            raise _refuse(self.archive, name, why)

    def usable_name(self, name: str) -> bool:
        if problem := _bad_name(name):
            self.skipped.append({"path": _shown(name), "reason": problem})
            return False
        return True

    def add_dir(self, name: str) -> None:
        self.dirs.add(PurePosixPath(name).as_posix() + "/")

    def add_file(
        self, name: str, size: int, compressed: int | None, mtime_ns: int, opener: Callable[[], BinaryIO]
    ) -> str:
        """Check one regular member before its data is read; returns its normalised path."""
        cfg = self.cfg
        path = PurePosixPath(name).as_posix()  # 'Cat//a.jpg' and 'Cat/./a.jpg' are 'Cat/a.jpg' on disk
        if path in self.files:
            raise _refuse(
                self.archive,
                name,
                f"a second entry named {path!r}: one would silently overwrite the other",
                "Repack the archive with each file once (or rename one of the two).",
            )
        self.total += size
        if self.total > cfg.max_archive_bytes:
            raise _refuse(
                self.archive,
                name,
                f"with it the entries expand beyond ingest.max_archive_bytes={cfg.max_archive_bytes:,}",
                "Only use archives you trust; if it is genuine, raise ingest.max_archive_bytes.",
            )
        if compressed is not None and size > cfg.max_member_ratio * compressed + cfg.ratio_grace_bytes:
            raise _refuse(
                self.archive,
                name,
                f"expands from {compressed:,} to {size:,} bytes, more than ingest.max_member_ratio="
                f"{cfg.max_member_ratio:g} times: a zip bomb?",
                "Only use archives you trust. Photos barely compress; if this entry is genuine, raise "
                "ingest.max_member_ratio in params.yaml.",
            )
        if self.total > cfg.max_archive_ratio * self.size + cfg.ratio_grace_bytes:
            raise _refuse(
                self.archive,
                name,
                f"with it the entries expand to {self.total:,} bytes, more than ingest.max_archive_ratio="
                f"{cfg.max_archive_ratio:g} times the archive's {self.size:,} bytes: a zip bomb?",
                "Only use archives you trust. Photos barely compress; if the archive is genuine, raise "
                "ingest.max_archive_ratio in params.yaml.",
            )
        self.files[path] = (size, mtime_ns, opener)
        return path

    def check_tree(self) -> None:
        """A name that is a file and also a folder of other entries cannot be written to disk."""
        for path in [*sorted(self.files), *sorted(self.dirs)]:
            parts = path.rstrip("/").split("/")
            for i in range(1, len(parts) + (path.endswith("/"))):
                parent = "/".join(parts[:i])
                if parent in self.files:
                    raise _refuse(
                        self.archive,
                        parent,
                        "the same name is a file and a folder",
                        "Repack the archive so that no file has the name of a folder.",
                    )

    def read_fully(self, member: str, src: BinaryIO, declared: int) -> None:
        """Stream one member's data to its end (the reader checks its CRC there); never held whole."""
        got = 0
        while block := src.read(HASH_BLOCK):
            got += len(block)
            if got > declared:
                break
        if got != declared:
            more = "more than " if got > declared else ""
            raise _damaged(
                self.archive, member, f"holds {more}{got:,} bytes of data, but its header says {declared:,}"
            )


# Errors an archive reader raises on damaged data (bad CRC, truncated or invalid compressed data).
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _check_zip(archive: Path, m: _Members) -> None:
    shared = _Shared(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except UnicodeDecodeError as err:
        raise _refuse(
            archive,
            _shown(err.object.decode("utf-8", "replace")) if isinstance(err.object, bytes) else "?",
            "its name is not valid UTF-8, though the archive says it is",
            "Repack the archive with a tool that writes UTF-8 names (e.g. `7z a` or Python's zipfile).",
        ) from None
    with zf:
        infos = zf.infolist()
        to_read = []
        for info in infos:
            name = info.filename
            m.counted(name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _refuse(archive, name, "symbolic link")
            if not m.usable_name(name):
                continue
            if info.is_dir():
                m.add_dir(name)
                continue
            mtime_ns = int(datetime(*info.date_time).timestamp()) * 1_000_000_000
            m.add_file(name, info.file_size, info.compress_size, mtime_ns, _zip_opener(shared, info))
            to_read.append(info)
        m.check_tree()
        for info in to_read:
            try:
                with zf.open(info) as src:
                    m.read_fully(info.filename, src, info.file_size)
            except RuntimeError as err:  # zipfile: "File ... is encrypted, password required"
                why = f"encrypted ({err})"
                raise _refuse(archive, info.filename, why, "Repack it without a password.") from None
            except NotImplementedError as err:
                raise _refuse(
                    archive, info.filename, str(err), "Repack it with the usual deflate compression."
                ) from None
            except zipfile.BadZipFile as err:
                why = "its data does not match its CRC-32" if "CRC" in str(err) else str(err)
                raise _damaged(archive, info.filename, why) from None
            except (EOFError, zlib.error, lzma.LZMAError, OSError) as err:
                raise _damaged(archive, info.filename, f"{type(err).__name__}: {err}") from None


# How compressed tar streams start, and the reader of each: it checks the stream's own checksum (gzip
# CRC-32 and length, bzip2 block and stream CRCs, xz check) when it is read to its end.
COMPRESSED: dict[bytes, Callable[..., BinaryIO]] = {
    b"\x1f\x8b": gzip.open,  # type: ignore[dict-item]
    b"BZh": bz2.open,  # type: ignore[dict-item]
    b"\xfd7zXZ\x00": lzma.open,  # type: ignore[dict-item]
}


def _magic(archive: Path) -> bytes:
    with open(archive, "rb") as f:
        return f.read(8)


def _decompressed(archive: Path) -> BinaryIO:
    """The archive's tar stream (decompressed when it is compressed)."""
    magic = _magic(archive)
    for start, reader in COMPRESSED.items():
        if magic.startswith(start):
            return reader(archive, "rb")
    return open(archive, "rb")


class _LastRead:
    """A reader that remembers its last read: the block tarfile took for the end of the archive."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.last = raw, b""

    def read(self, n: int = -1) -> bytes:
        self.last = self.raw.read(n)
        return self.last

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.last = b""
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _check_tar(archive: Path, m: _Members) -> None:
    """One sequential pass: every header checked, every member's data read, then the rest of the
    stream read to its end: what follows the last entry must be the zeros of the end-of-archive marker
    (tarfile takes a damaged header for the end) and the compressed stream's checksum must match."""
    member = None
    shared = _Shared(archive)
    with _decompressed(archive) as raw:
        stream = _LastRead(raw)
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tf:  # type: ignore[call-overload]
                for info in tf:
                    member = info.name
                    m.counted(info.name)
                    if info.issym() or info.islnk():
                        raise _refuse(archive, info.name, "link")
                    if info.isdev() or not (info.isfile() or info.isdir()):
                        raise _refuse(archive, info.name, "device or special file")
                    if not m.usable_name(info.name):
                        continue
                    if info.isdir():
                        m.add_dir(info.name)
                        continue
                    mtime_ns = int(info.mtime) * 1_000_000_000
                    m.add_file(info.name, info.size, None, mtime_ns, _tar_opener(shared, info))
                    src = tf.extractfile(info)
                    if src is None:
                        raise _damaged(archive, info.name, "a regular file without data")
                    m.read_fully(info.name, src, info.size)
                member = None
                end = tf.offset
            # The block tarfile read where it stopped, then everything after it, up to the end.
            head = stream.last if stream.tell() - len(stream.last) == end else b""
            if not head:
                raw.seek(end)
            seen = 0
            block = head
            while block or (block := raw.read(HASH_BLOCK)):
                if block.count(0) != len(block):
                    at = end + seen + len(block) - len(block.lstrip(bytes(1)))
                    raise _damaged(
                        archive,
                        None,
                        f"unreadable data at byte {at:,} of the tar stream, after {m.count} entries: "
                        "a damaged header hides whatever follows it",
                    )
                seen += len(block)
                block = b""
            if seen < tarfile.BLOCKSIZE:
                raise _damaged(
                    archive,
                    None,
                    f"it ends after {m.count} entries without the end-of-archive marker: cut short?",
                )
        except PawflowError:
            raise
        except ARCHIVE_ERRORS as err:
            what = f"{type(err).__name__}: {err}"
            if not m.count:
                what += "; or it is not a tar archive inside the compression"
            raise _damaged(archive, member, what) from None
    m.check_tree()


def list_archive(archive: Path, cfg: Ingest) -> Listing:
    """Check every member (zip-slip, links, devices, size, count, expansion ratio, duplicate names) and
    read every member's data to its end (CRC, declared vs real size, the compressed stream's checksum)
    before anything is extracted: a damaged or hostile archive writes nothing."""
    m = _Members(archive, cfg)
    try:
        magic = _magic(archive)
        if zipfile.is_zipfile(archive):
            _check_zip(archive, m)
        elif tarfile.is_tarfile(archive) or magic.startswith(tuple(COMPRESSED)):
            _check_tar(archive, m)  # a damaged compressed stream is not "not a tar": it says what broke
        elif magic.startswith(b"PK\x03\x04"):
            raise _damaged(archive, None, "a zip whose central directory is missing: cut short?")
        else:
            raise PawflowError(
                f"{archive}: not a zip or tar archive.",
                "ingest.source must be a folder, a .zip/.tar(.gz) archive or a URL of one.",
            )
    except PawflowError:
        raise
    except ARCHIVE_ERRORS as err:
        raise PawflowError(
            f"{archive}: the archive is corrupt or unreadable ({type(err).__name__}: {err}).",
            "Download it again (a partial download?) or check the file.",
        ) from None
    return _classify(m.files, m.dirs, "archive", str(archive), m.skipped)


def _changed(archive: Path, name: str, err: Exception) -> PawflowError:
    return PawflowError(
        f"{archive}: entry {_shown(name)!r} cannot be read any more ({type(err).__name__}: {err}); it was "
        "intact when listed: the archive changed during ingest.",
        "Leave the archive alone while ingest runs, then run it again.",
    )


class _Capped:
    """A member reader that refuses to return more bytes than the archive declared (zip bombs lie) and
    turns a read error into one message (the archive was verified: it changed since)."""

    def __init__(self, raw: BinaryIO, limit: int, archive: Path, name: str) -> None:
        self.raw, self.left, self.archive, self.name = raw, limit, archive, name

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(HASH_BLOCK if n < 0 else n)
        except (*ARCHIVE_ERRORS, RuntimeError) as err:
            raise _changed(self.archive, self.name, err) from None
        self.left -= len(data)
        if self.left < 0:
            raise PawflowError(
                f"{self.archive}: entry {_shown(self.name)!r} expands beyond its declared size "
                "(a zip bomb?).",
                "Do not use this archive.",
            )
        return data

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Shared:
    """One open archive for the copies of all its members. Opening it again for each member re-read
    the whole zip directory (or decompressed a .tar.gz from its start) every time: quadratic in the
    number of members (283 s for the 4,007 photos of the sample as a zip). Members are copied in
    archive order, so a compressed tar is decompressed once, forward."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.zip: zipfile.ZipFile | None = None
        self.tar: tarfile.TarFile | None = None

    def zip_member(self, info: zipfile.ZipInfo) -> BinaryIO:
        if self.zip is None:
            self.zip = zipfile.ZipFile(self.archive)
        return self.zip.open(info)  # type: ignore[return-value]

    def tar_member(self, info: tarfile.TarInfo) -> BinaryIO:
        if self.tar is None:
            self.tar = tarfile.open(self.archive, "r:*")  # noqa: SIM115 (open while members are copied)
        member = self.tar.extractfile(info)  # the listing's TarInfo: its data offset, no second scan
        if member is None:
            raise PawflowError(
                f"{self.archive}: entry {_shown(info.name)!r} has no data.", "Repack the archive."
            )
        return member  # type: ignore[return-value]


def _zip_opener(shared: _Shared, info: zipfile.ZipInfo) -> Callable[[], BinaryIO]:
    def open_member() -> BinaryIO:
        try:
            member = shared.zip_member(info)
        except (*ARCHIVE_ERRORS, RuntimeError) as err:
            raise _changed(shared.archive, info.filename, err) from None
        return _Capped(member, info.file_size, shared.archive, info.filename)  # type: ignore[return-value]

    return open_member


def _tar_opener(shared: _Shared, info: tarfile.TarInfo) -> Callable[[], BinaryIO]:
    def open_member() -> BinaryIO:
        try:
            member = shared.tar_member(info)
        except (*ARCHIVE_ERRORS, RuntimeError) as err:
            raise _changed(shared.archive, info.name, err) from None
        return _Capped(member, info.size, shared.archive, info.name)  # type: ignore[return-value]

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


def resolve(cfg: Ingest, downloads: Path, progress: bool = True) -> Listing:
    """Turn ingest.source into a Listing, downloading a URL first; an archive is verified whole."""
    source = cfg.source
    if is_url(source):
        d = download(source, downloads, cfg.download_retries, cfg.download_timeout_s, cfg.sha256, progress)
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


def check_labels_against_raw(entries: list[Entry], raw: Path) -> None:
    """data/raw only grows: a source whose `Cat/` was `cat/` last time would leave both as classes."""
    if not raw.is_dir():
        return
    present = {p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for label in sorted({e.label for e in entries} - present):
        if twins := same_but_for_case([label, *(p for p in present if p.casefold() == label.casefold())]):
            raise _refuse_case_twins(
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
