"""Archives (zip, tar, compressed tar) as a source: every member checked and its data read to the end
before anything is extracted, then each member readable on demand for the copy into data/raw.

A hostile or damaged archive gets one message and writes nothing: zip-slip, links, devices, too many or
too large members, expansion ratios (zip bombs), duplicate names, a name both file and folder, bad
CRCs, truncated or trailing data.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from tasks.core.errors import PawflowError
from tasks.core.fileio import HASH_BLOCK
from tasks.photos.listing import Listing, bad_name, classify, shown
from tasks.reports.reports import Skipped

if TYPE_CHECKING:
    from tasks.core.params import Ingest

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _unsafe_member(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..' (zip-slip)"
    return None


def _refuse(archive: Path, member: str, why: str, fix: str | None = None) -> PawflowError:
    return PawflowError(
        f"{archive}: refused: entry {shown(member)!r} is unsafe ({why}). Nothing was extracted.",
        fix or "Only use archives you trust; repack it without that entry.",
    )


def _damaged(archive: Path, member: str | None, why: str) -> PawflowError:
    where = f"entry {shown(member)!r}: " if member else ""
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
        self.files: dict[str, tuple[int, int, Callable[[], IO[bytes]]]] = {}
        self.dirs: set[str] = set()
        self.skipped: list[Skipped] = []

    def header(self, name: str, refused: str | None, is_dir: bool) -> bool:
        """Check one member's header, in the same order for a zip and a tar: count and name, the kind
        of member refused (`refused`: a link, a device), a name that is not UTF-8 (skipped), a folder.
        True when it is a regular file: add_file takes it next."""
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
        if refused:
            raise _refuse(self.archive, name, refused)
        if problem := bad_name(name):
            self.skipped.append({"path": shown(name), "reason": problem})
            return False
        if is_dir:
            self.dirs.add(PurePosixPath(name).as_posix() + "/")
            return False
        return True

    def add_file(
        self, name: str, size: int, compressed: int | None, mtime_ns: int, opener: Callable[[], IO[bytes]]
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

    def read_fully(self, member: str, src: IO[bytes], declared: int) -> None:
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
            shown(err.object.decode("utf-8", "replace")) if isinstance(err.object, bytes) else "?",
            "its name is not valid UTF-8, though the archive says it is",
            "Repack the archive with a tool that writes UTF-8 names (e.g. `7z a` or Python's zipfile).",
        ) from None
    with zf:
        infos = zf.infolist()
        to_read = []
        for info in infos:
            name = info.filename
            link = "symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else None
            if not m.header(name, link, info.is_dir()):
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
COMPRESSED: dict[bytes, Callable[..., IO[bytes]]] = {
    b"\x1f\x8b": gzip.open,  # type: ignore[dict-item]  # typeshed: GzipFile is a BufferedIOBase, not an IO[bytes]
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
}


def _magic(archive: Path) -> bytes:
    with open(archive, "rb") as f:
        return f.read(8)


def _decompressed(archive: Path) -> IO[bytes]:
    """The archive's tar stream (decompressed when it is compressed)."""
    magic = _magic(archive)
    for start, reader in COMPRESSED.items():
        if magic.startswith(start):
            return reader(archive, "rb")
    return open(archive, "rb")


class _LastRead:
    """A reader that remembers its last read: the block tarfile took for the end of the archive."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.last = raw, b""

    def read(self, n: int = -1) -> bytes:
        self.last = self.raw.read(n)
        return self.last

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.last = b""
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _tar_refusal(info: tarfile.TarInfo) -> str | None:
    if info.issym() or info.islnk():
        return "link"
    if info.isdev() or not (info.isfile() or info.isdir()):
        return "device or special file"
    return None


def _check_tar(archive: Path, m: _Members) -> None:
    """One sequential pass: every header checked, every member's data read, then the rest of the
    stream read to its end: what follows the last entry must be the zeros of the end-of-archive marker
    (tarfile takes a damaged header for the end) and the compressed stream's checksum must match."""
    member = None
    shared = _Shared(archive)
    with _decompressed(archive) as raw:
        stream = _LastRead(raw)
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tf:  # type: ignore[call-overload]  # typeshed wants an IO[bytes]; reading needs read/seek/tell
                for info in tf:
                    member = info.name
                    if not m.header(info.name, _tar_refusal(info), info.isdir()):
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
    return classify(m.files, m.dirs, "archive", str(archive), m.skipped)


def _changed(archive: Path, name: str, err: Exception) -> PawflowError:
    return PawflowError(
        f"{archive}: entry {shown(name)!r} cannot be read any more ({type(err).__name__}: {err}); it was "
        "intact when listed: the archive changed during ingest.",
        "Leave the archive alone while ingest runs, then run it again.",
    )


class _Capped:
    """A member reader that refuses to return more bytes than the archive declared (zip bombs lie) and
    turns a read error into one message (the archive was verified: it changed since)."""

    def __init__(self, raw: IO[bytes], limit: int, archive: Path, name: str) -> None:
        self.raw, self.left, self.archive, self.name = raw, limit, archive, name

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(HASH_BLOCK if n < 0 else n)
        except (*ARCHIVE_ERRORS, RuntimeError) as err:
            raise _changed(self.archive, self.name, err) from None
        self.left -= len(data)
        if self.left < 0:
            raise PawflowError(
                f"{self.archive}: entry {shown(self.name)!r} expands beyond its declared size (a zip bomb?).",
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

    def zip_member(self, info: zipfile.ZipInfo) -> IO[bytes]:
        if self.zip is None:
            self.zip = zipfile.ZipFile(self.archive)
        return self.zip.open(info)

    def tar_member(self, info: tarfile.TarInfo) -> IO[bytes]:
        if self.tar is None:
            self.tar = tarfile.open(self.archive, "r:*")  # noqa: SIM115 (open while members are copied)
        member = self.tar.extractfile(info)  # the listing's TarInfo: its data offset, no second scan
        if member is None:
            raise PawflowError(
                f"{self.archive}: entry {shown(info.name)!r} has no data.", "Repack the archive."
            )
        return member


def _opener(
    shared: _Shared, name: str, size: int, open_raw: Callable[[], IO[bytes]]
) -> Callable[[], IO[bytes]]:
    """Opens one member of the shared archive for its copy, capped at its declared size."""

    def open_member() -> IO[bytes]:
        try:
            member = open_raw()
        except (*ARCHIVE_ERRORS, RuntimeError) as err:
            raise _changed(shared.archive, name, err) from None
        return _Capped(member, size, shared.archive, name)  # type: ignore[return-value]  # a reader (read, close, with): all a copy uses

    return open_member


def _zip_opener(shared: _Shared, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    return _opener(shared, info.filename, info.file_size, lambda: shared.zip_member(info))


def _tar_opener(shared: _Shared, info: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    return _opener(shared, info.name, info.size, lambda: shared.tar_member(info))
