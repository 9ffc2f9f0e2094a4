"""What a source holds: its files by class (labels are folder names) and what was left out, with why.

A folder is listed here; an archive is verified and listed by tasks/photos/archives.py, which shares the
class layout (`classify`) and the name checks.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tasks.core.errors import PawflowError

if TYPE_CHECKING:  # the check stage, which lists sources, stays light: no pydantic contracts loaded
    from tasks.reports.reports import IgnoredFolder, Skipped

# Folders that archivers and operating systems add; never a class.
JUNK_DIRS = {"__MACOSX", "$RECYCLE.BIN", "System Volume Information"}


@dataclass(frozen=True)
class Entry:
    """One file of the source, placed under a label."""

    label: str
    rel: str  # path inside the label folder, POSIX
    size: int
    mtime_ns: int
    open: Callable[[], IO[bytes]] = field(compare=False, repr=False)
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
    skipped: list[Skipped]
    archive_sha256: str | None = None
    # Junk and hidden folders where classes were looked for (path, reason, files): reported, not classes.
    ignored: list[IgnoredFolder] = field(default_factory=list)


def bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename it"
    return None


def shown(name: str) -> str:
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
    ignored: list[IgnoredFolder]  # junk/hidden folders: path, reason, files


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
    ignored: list[IgnoredFolder] = []
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


def name_key(label: str) -> str:
    """What a person reads in a folder name: Unicode compatibility form (NFKC: `Café` typed on a Mac,
    decomposed, equals the composed one; full-width letters equal plain ones), without invisible format
    characters (zero-width spaces and joiners, a byte-order mark), case folded, surrounding spaces
    removed. Two labels with the same key are one class to a person and two to a model."""
    visible = "".join(c for c in unicodedata.normalize("NFKC", label) if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", visible.casefold()).strip()


def look_alikes(labels: list[str]) -> list[list[str]]:
    """Groups of labels that differ only in case, Unicode form, invisible characters or surrounding
    spaces (`cat` and `Cat`, `Café` composed and decomposed, `Dog` and `Dog `)."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(name_key(label), []).append(label)
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def spelled(label: str) -> str:
    """A label as its spelling can be told apart from a look-alike: quoted (spaces show), and for a name
    that is not plain ASCII its code points too (`'Café' (Caf\\xe9)` and `'Café' (Cafe\\u0301)`)."""
    shown = repr(label)  # escapes what does not print (a zero-width space shows as \\u200b)
    return shown if shown.isascii() else f"{shown} ({ascii(label)[1:-1]})"


def refuse_look_alikes(location: str, twins: list[list[str]], where: str) -> PawflowError:
    groups = "; ".join(" and ".join(spelled(label) for label in group) for group in twins)
    return PawflowError(
        f"{location}: class folders whose names differ only in case, Unicode form, invisible characters "
        f"or surrounding spaces: {groups}{where}. They would become separate classes of the same animal "
        "(and collide on a case-insensitive disk). Nothing was copied.",
        "Merge each group into one folder with one spelling (move the photos of one folder into the other "
        "and remove the empty one), or rename one if they really are different classes; then run again.",
    )


def classify(
    entries_by_path: dict[str, tuple[int, int, Callable[[], IO[bytes]]]],
    dirs: set[str],
    kind: str,
    location: str,
    skipped: list[Skipped],
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
    if twins := look_alikes(classes):
        raise refuse_look_alikes(location, twins, "")
    entries = []
    order = {path: i for i, path in enumerate(entries_by_path)}  # the source's own order
    for path, (size, mtime_ns, opener) in sorted(entries_by_path.items()):
        if path.startswith(prefix):
            label, _, rel = path[len(prefix) :].partition("/")
            if label in classes and rel:
                entries.append(Entry(label, rel, size, mtime_ns, opener, order[path]))
    return Listing(kind, location, entries, skipped, ignored=root.ignored)


def _open_regular(p: Path) -> IO[bytes]:
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
    files: dict[str, tuple[int, int, Callable[[], IO[bytes]]]] = {}
    dirs: set[str] = set()
    skipped: list[Skipped] = []

    def opener(p: Path) -> Callable[[], IO[bytes]]:
        return lambda: _open_regular(p)

    def walk_error(err: OSError) -> None:
        skipped.append(
            {
                "path": shown(str(Path(err.filename).relative_to(root))) if err.filename else "?",
                "reason": f"folder cannot be read: {err.strerror}",
            }
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for d in list(dirnames):
            full = Path(dirpath, d)
            problem = bad_name(d)
            if full.is_symlink() or problem:
                skipped.append(
                    {
                        "path": shown(rel_dir + d),
                        "reason": problem or "symlink to a folder: not followed",
                    }
                )
                dirnames.remove(d)
            else:
                dirs.add(rel_dir + d + "/")
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = rel_dir + name
            problem = bad_name(rel)
            if problem:
                skipped.append({"path": shown(rel), "reason": problem})
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
    return classify(files, dirs, "directory", str(root), skipped)
