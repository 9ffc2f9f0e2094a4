"""Atomic, deterministic file output: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

from tasks.core.errors import ExitCode, PawflowError

if TYPE_CHECKING:
    import pandas as pd

HASH_BLOCK = 1 << 20


def sha256_stream(stream: IO[bytes]) -> str:
    """Hex sha256 of what a reader holds from where it is to its end, read in blocks."""
    h = hashlib.sha256()
    while block := stream.read(HASH_BLOCK):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The key of model.json that holds the sha256 of the model.keras beside it: train writes it, evaluate and
# `pawflow predict` check the file against it before loading (tasks/predict.py model_files).
MODEL_SHA256 = "model_sha256"


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (cache keys, salts)."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


def _canonical(node: object) -> object:
    """A syntax tree as plain data: node types and fields, no positions; None and empty fields left out
    (Python 3.12 added empty fields, e.g. type_params, that 3.11's trees lack)."""
    if isinstance(node, ast.AST):
        fields = [(k, _canonical(v)) for k, v in ast.iter_fields(node) if v is not None and v != []]
        return [type(node).__name__, fields]
    if isinstance(node, list):
        return [_canonical(x) for x in node]
    return repr(node)


_CODE_LOCK = threading.Lock()
_CODE_FINGERPRINTS: dict[str, str] = {}  # sha256 of a module's source -> code_fingerprint


def code_fingerprint(module: ModuleType) -> str:
    """What a module's code computes, as a short hash: its syntax tree without docstrings. Comments,
    docstrings and formatting can change without changing it (so without invalidating the results the
    code produced: cached verdicts, shard contents keys); any change to the code itself changes it.

    Computed once per source text, under a lock: task threads call it at once, and CPython 3.11's ast
    module fails when two threads build trees concurrently ("AST constructor recursion depth mismatch").
    """
    return source_fingerprint(inspect.getsource(module))


def source_fingerprint(source: str) -> str:
    """code_fingerprint of a module's source text (a file not imported, or what a module was loaded from)."""
    key = sha256_bytes(source.encode())
    with _CODE_LOCK:
        if key not in _CODE_FINGERPRINTS:
            _CODE_FINGERPRINTS[key] = _tree_fingerprint(source)
        return _CODE_FINGERPRINTS[key]


def _tree_fingerprint(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return fingerprint(_canonical(tree))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_current_umask())


# Write errors that mean "no room": a person can fix these, so they get a message, not a traceback.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# The same, as libraries that do not raise OSError word them: TensorFlow's file writers (TensorBoard events,
# tf.io) raise ResourceExhaustedError "...; No space left on device"; SQLite says "database or disk is full".
NO_SPACE_TEXTS = (*(os.strerror(code) for code in sorted(NO_SPACE)), "database or disk is full")
# SQLite reports some writes that failed for want of room as a generic I/O error (SQLITE_IOERR_*, e.g. while
# it grows its WAL index): such an error counts as a full disk when less than this is free where it writes.
LOW_SPACE_BYTES = 16 * 2**20


class NoSpace(PawflowError):
    """A write failed for want of room: the run started and failed (exit 1), nothing half-written kept."""

    exit_code = ExitCode.FAILED


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds path (or would hold it: its nearest existing folder),
    symbolic links followed (`data` may be a link to another disk)."""
    p = Path(os.path.realpath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer can still use on the file system holding path (None if unknown)."""
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    """err, then what caused it or was being handled when it was raised, and so on."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def no_space_cause(err: BaseException, path: Path | None = None) -> BaseException | None:
    """The exception in err's chain that says a write found no room, or None: an OSError whose errno is
    in NO_SPACE; SQLite's SQLITE_FULL; an SQLite I/O error while the file system holding `path` has
    less than LOW_SPACE_BYTES free; any other library's error worded as the system words ENOSPC, EDQUOT
    or EFBIG (NO_SPACE_TEXTS)."""
    import sqlite3

    for e in _chain(err):
        if isinstance(e, OSError):
            if e.errno in NO_SPACE:
                return e
        elif isinstance(e, sqlite3.Error):
            name = getattr(e, "sqlite_errorname", "") or ""
            if name == "SQLITE_FULL":
                return e
            if name.startswith("SQLITE_IOERR") and path is not None:
                free = free_bytes(path)
                if free is not None and free < LOW_SPACE_BYTES:
                    return e
        if any(text in str(e) for text in NO_SPACE_TEXTS):
            return e
    return None


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    if n < 2**20:
        return f"{n:,} bytes"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _reason(cause: BaseException) -> str:
    """What the system or the library said, in its own short words."""
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(cause)
    return next((t for t in NO_SPACE_TEXTS if t in text), " ".join(text.split()) or type(cause).__name__)


def no_space_error(path: Path, cause: BaseException) -> NoSpace:
    """One message for a write that found no room: the file, the file system, what is free, what to do."""
    mount = mount_point(path)
    return NoSpace(
        f"no space left while writing {path} ({_reason(cause)}); the file system at {mount} has "
        f"{_size(free_bytes(path))} free. Nothing was half-written: what was there before is untouched.",
        f"Free space on the file system at {mount} (it holds {path.parent}), or point params.yaml paths.* "
        "at another disk, then run again.",
    )


def no_space_somewhere(cause: BaseException, places: list[Path]) -> NoSpace:
    """NoSpace for a write that found no room where the failing file is not known (a library's own
    write, e.g. Prefect persisting a task result): the file if the error names it, else every file
    system among `places` (where the stage writes) with what it has free."""
    named = getattr(cause, "filename", None)
    if named:
        return no_space_error(Path(named), cause)
    mounts: dict[Path, list[str]] = {}
    for place in places:
        mounts.setdefault(mount_point(place), []).append(str(place))
    listed = "; ".join(f"{m}: {_size(free_bytes(m))} free (holds {', '.join(p)})" for m, p in mounts.items())
    return NoSpace(
        f"no space left on a disk this stage writes to ({_reason(cause)}): {listed}. Nothing was "
        "half-written: what was there before is untouched.",
        "Free space on the fullest of these file systems, or point params.yaml paths.* at another disk, "
        "then run again.",
    )


@contextlib.contextmanager
def no_space_is_a_clear_error(path: Path) -> Iterator[None]:
    """A write in the block that finds no room (no_space_cause) ends it with NoSpace naming path."""
    try:
        yield
    except PawflowError:
        raise
    except Exception as err:
        cause = no_space_cause(err, path)
        if cause is None:
            raise
        raise no_space_error(path, cause) from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    with no_space_is_a_clear_error(path):  # creating the temporary name needs room too
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short temporary name: a 255-byte final name must still fit the file system's limit.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _usual_mode(tmp_path, is_dir=False)
        with no_space_is_a_clear_error(path):
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, dumps_json(obj).encode("utf-8"))


def write_parquet(path: Path, df: pd.DataFrame, metadata: dict[str, str] | None = None) -> None:
    """Write a DataFrame as parquet without the index; same frame -> same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({f"pawflow.{k}".encode(): v.encode() for k, v in sorted(metadata.items())})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path)


def parquet_metadata(path: Path) -> dict[str, str]:
    """The pawflow.* key-value metadata written by write_parquet."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    return {k.decode()[len("pawflow.") :]: v.decode() for k, v in raw.items() if k.startswith(b"pawflow.")}


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it takes `path`'s place.

    Readers never see a half-written folder: either the old one or the complete new one.
    """
    with no_space_is_a_clear_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _usual_mode(tmp, is_dir=True)
        with no_space_is_a_clear_error(path):
            yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Names only this module creates: ".tmp-XXXXXXXX" (mkstemp), ".<name>.tmp-XXXXXXXX", ".<name>.old-<pid>".
_LEFTOVER = re.compile(r"^\.(?:tmp-[a-z0-9_]{8}|.+\.tmp-[a-z0-9_]{8}|.+\.old-\d+)$")


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete temporaries that a killed run left in folder (never a final name); returns them."""
    removed = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if _LEFTOVER.match(p.name):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def append_history(path: Path, record: dict) -> None:
    """Append one JSON line (a single write, so a crash cannot leave half a line in the middle). A write
    that finds no room is undone (the file cut back to its last whole line) and ends with NoSpace."""
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
    with no_space_is_a_clear_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
            end = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line)
                while rest:  # a disk filling up mid-line takes part of it, then refuses the rest
                    rest = rest[f.write(rest) :]
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(end)
                raise
