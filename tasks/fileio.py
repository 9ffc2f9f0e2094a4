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
from typing import TYPE_CHECKING, Any, BinaryIO

from tasks.errors import PawflowError

if TYPE_CHECKING:
    import pandas as pd

HASH_BLOCK = 1 << 20


def sha256_stream(stream: BinaryIO) -> str:
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


@contextlib.contextmanager
def no_space_is_a_clear_error(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise PawflowError(
            f"no space left while writing {path} ({err.strerror}). The previous version of it is untouched.",
            f"Free space on the disk holding {path.parent} (or point params.yaml paths.* elsewhere), then "
            "run again.",
        ) from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short temporary name: a 255-byte final name must still fit the file system's limit.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _usual_mode(tmp_path, is_dir=False)
    try:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    _usual_mode(tmp, is_dir=True)
    try:
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
    """Append one JSON line (a single write, so a crash cannot leave half a line in the middle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
