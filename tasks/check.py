"""Checks that run before DVC touches anything: params.yaml is valid, ingest.source can be read and the
exclude list (paths.exclude) is well formed.

DVC removes a stage's outputs before it runs the stage's command, and hashes a folder dependency by
opening every file in it (a named pipe blocks it forever). So these checks run first, in the `check`
stage of dvc.yaml (every other stage depends on its output) and in pawflow's own entry points before
they call DVC. Light imports only (no Prefect, no TensorFlow): the check must cost about a second.
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

from tasks.core.errors import PawflowError
from tasks.core.fileio import write_bytes
from tasks.core.params import Params, load_params
from tasks.photos import exclude
from tasks.photos.listing import list_directory
from tasks.photos.splitrule import min_per_class, too_few

# What the check stage writes: constant, so its hash never makes a later stage out of date.
CHECKED_TEXT = "params.yaml and ingest.source passed the pawflow checks\n"
# Entries of the exclude list that name no photo, shown one per line up to this many.
MAX_UNMATCHED_SHOWN = 10
CHECKED_NAME = "checked.txt"
KINDS = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _special(path: Path) -> str | None:
    """What a non-regular, non-folder file is (following a symlink), or None for a file or folder."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # a dangling symlink: DVC and ingest skip it without opening anything
    return KINDS.get(stat.S_IFMT(mode))


def special_files(folder: Path) -> list[tuple[str, str]]:
    """(relative path, kind) of every pipe, socket or device under folder, symlinks followed as DVC does.

    Only directory entries are read (no file is opened), so a pipe cannot block this walk.
    """
    found: list[tuple[str, str]] = []
    stack = [folder]
    seen: set[tuple[int, int]] = set()
    while stack:
        current = stack.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue  # a symlink loop
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: ingest reports it
        for e in entries:
            if e.is_dir():  # follows symlinks, like DVC's walk
                stack.append(Path(e.path))
            elif not e.is_file():
                kind = _special(Path(e.path))
                if kind:
                    found.append((Path(e.path).relative_to(folder).as_posix(), kind))
    return sorted(found)


def check_source(source: str, root: Path = Path(".")) -> None:
    """ingest.source exists and is a folder, a zip/tar archive or an http(s) URL; a folder holds no
    pipe, socket or device (DVC would block on it). Raises PawflowError naming what is wrong."""
    if "://" in source:
        return  # an http(s) URL (params validation refused other schemes); ingest downloads it
    path = root / source
    fix = "Set ingest.source in params.yaml to a folder of class folders, a .zip/.tar(.gz) or an http(s) URL."
    if not path.exists():
        raise PawflowError(
            f"ingest.source {source!r} does not exist (looked at {path.resolve()}).",
            "To get photos: `make data` (or `pawflow data`) downloads Microsoft's PetImages, the cats and "
            "dogs pawflow is built for (about 800 MB, sha256-checked, resumed if cut off), and points "
            "ingest.source at it. Or set ingest.source in params.yaml to your own folder of class folders, "
            "a .zip/.tar(.gz) or an http(s) URL.",
        )
    kind = _special(path)
    if kind:
        raise PawflowError(f"ingest.source {source!r} is {kind}, not a folder or an archive.", fix)
    if path.is_dir():
        special = special_files(path)
        if special:
            listed = "\n".join(f"  {rel}: {k}" for rel, k in special[:20])
            more = f"\n  ... and {len(special) - 20} more" if len(special) > 20 else ""
            raise PawflowError(
                f"ingest.source {source!r} holds {len(special)} file(s) that are not regular files:\n"
                f"{listed}{more}\nDVC opens every file of the source to hash it and would block forever "
                "on a pipe or device; nothing was run.",
                "Move them out of the source folder (they are not photos), then run again.",
            )
        # At least two class folders holding files (lstat only, nothing opened): an empty or flat folder
        # is refused here, in about a second, not by ingest after a Prefect start.
        try:
            list_directory(path)
        except PawflowError as err:  # named by the key and the full path, not the path alone
            what = err.what.removeprefix(str(path))
            raise PawflowError(f"ingest.source {source!r} ({path.resolve()}){what}", err.fix) from None
        return
    try:
        readable = zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except OSError as err:
        raise PawflowError(f"ingest.source {source!r} cannot be read: {err.strerror}.", fix) from None
    if not readable:
        raise PawflowError(f"ingest.source {source!r} is a file but not a zip or tar archive.", fix)


def class_sizes(source: Path, raw: Path) -> dict[str, int]:
    """Files per class of a source folder that the collection can hold after ingesting it: the source's
    (listed as ingest lists it: classes found the same way, look-alike names refused) plus the files
    data/raw holds under the same class that the source does not have (an earlier ingest's). Directory
    entries only: nothing is opened. An upper bound of the photos clean and dedup will keep, whether
    data/raw keeps what left the source or not; a class data/raw alone holds is left to shard."""
    listing = list_directory(source)
    files = {e.path for e in listing.entries}
    labels = {e.label for e in listing.entries}
    if raw.is_dir():
        for label in sorted(labels):
            for folder, _, names in os.walk(raw / label):
                rel = Path(folder).relative_to(raw).as_posix()
                files.update(f"{rel}/{n}" for n in names)
    return dict(Counter(path.split("/", 1)[0] for path in files))


def check_class_sizes(params: Params, root: Path = Path(".")) -> None:
    """A local source folder whose classes cannot all reach every split of shard.split is refused before
    anything runs (tasks.photos.splitrule). An archive or a URL can only be counted once ingest has it: shard
    refuses the same way, before it writes a shard."""
    source = root / params.ingest.source
    if "://" in params.ingest.source or not source.is_dir():
        return
    fractions = params.shard.split.as_dict()
    need = min_per_class(fractions)
    sizes = class_sizes(source, root / params.paths.raw)
    short = {label: n for label, n in sizes.items() if n < need}
    if short:
        raise too_few(short, fractions, "files in ingest.source (with data/raw's)", f"{params.ingest.source}")


def check_source_of(params: Params, root: Path = Path(".")) -> None:
    """ingest.source can be read without blocking (check_source) and, for a folder, holds classes big
    enough for shard.split (check_class_sizes)."""
    check_source(params.ingest.source, root)
    check_class_sizes(params, root)


def check_exclude(params: Params, root: Path = Path(".")) -> list[str]:
    """The exclude list is well formed (PawflowError naming each malformed line otherwise); returns a
    warning per entry that names no photo of the collection as last ingested (data/interim/ingest.parquet,
    when there is one: the source itself is only read by ingest)."""
    path = root / params.paths.exclude
    if not path.is_file():  # DVC tracks it (an input of the check stage): without it no run can record
        raise PawflowError(
            f"the exclude list {params.paths.exclude} (paths.exclude) is missing; every run reads it.",
            f"Restore it (`git checkout -- {params.paths.exclude}`), or create it empty "
            f"(`touch {params.paths.exclude}`) if nothing is excluded.",
        )
    entries = exclude.read(path)
    manifest = root / params.paths.interim / "ingest.parquet"
    if not entries or not manifest.exists():
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["path", "sha256"])
    photos = {"path": table.column("path").to_pylist(), "sha256": table.column("sha256").to_pylist()}
    lost = [e for e in entries if e.key not in set(photos[e.kind])]
    lines = [f"{params.paths.exclude} line {e.line}: {e.key} names no photo of the collection" for e in lost]
    if len(lines) > MAX_UNMATCHED_SHOWN:
        lines = [*lines[:MAX_UNMATCHED_SHOWN], f"... and {len(lines) - MAX_UNMATCHED_SHOWN} more"]
    return lines


def check_planned(params: Params, root: Path = Path(".")) -> None:
    """Everything about a valid params file that can be checked before a run: the source (check_source_of)
    and the exclude list (check_exclude; entries that name no photo are warnings on stderr)."""
    check_source_of(params, root)
    for warning in check_exclude(params, root):
        print(f"warning: {warning} (a typo, or it left the source)", file=sys.stderr)


def preflight(params_path: Path = Path("params.yaml"), light: bool = False) -> Params:
    """Validate params.yaml, check ingest.source and the exclude list (relative to the workspace, the
    file's folder); warnings (exclude list entries that name no photo) go to stderr."""
    params = load_params(params_path, light=light)
    check_planned(params, params_path.parent)
    return params


def write_checked(params: Params) -> Path:
    """The check stage's output (constant text): what every other stage of dvc.yaml depends on."""
    path = params.paths.interim / CHECKED_NAME
    write_bytes(path, CHECKED_TEXT.encode())
    return path
