"""tasks/core/fileio.py: hashes, deterministic JSON, atomic writes and the temporaries a killed run leaves."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT

from tasks.core import fileio
from tasks.core.fileio import (
    HASH_BLOCK,
    NoSpace,
    append_history,
    atomic_path,
    code_fingerprint,
    dumps_json,
    mount_point,
    no_space_cause,
    remove_leftovers,
    sha256_file,
    sha256_stream,
    write_json,
)


def test_hashes_of_a_file_and_of_a_stream_agree_across_blocks(tmp_path: Path):
    data = bytes(range(256)) * (HASH_BLOCK // 256 * 2 + 7)  # more than two blocks, a partial last one
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f") == expected == sha256_stream(io.BytesIO(data))
    stream = io.BytesIO(b"skip" + data)
    stream.read(4)
    assert sha256_stream(stream) == expected  # from where the reader is to its end


def test_json_is_sorted_and_byte_identical_for_equal_objects(tmp_path: Path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "é": "x"})
    write_json(tmp_path / "b.json", {"é": "x", "a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert dumps_json({"b": 1, "a": 2}) == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        dumps_json({"x": float("nan")})


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_leftovers_are_removed_and_final_names_kept(tmp_path: Path):
    for name in (".tmp-abcd1234", ".data.tmp-x1y2z3w4", ".data.old-4242", "data", ".tmp-short", "keep.json"):
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_leftovers(tmp_path))
    assert removed == [".data.old-4242", ".data.tmp-x1y2z3w4", ".tmp-abcd1234"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-short", "data", "keep.json"]


def _module(tmp_path: Path, name: str, source: str):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CODE = '''"""A module."""

LIMIT = 3  # photos


def judge(x: int) -> bool:
    """Docstring."""
    return x > LIMIT
'''


@pytest.mark.parametrize(
    ("edited", "same"),
    [
        (CODE.replace("# photos", "# photos per side, see README"), True),
        (CODE.replace('"""Docstring."""', '"""Another docstring,\n    on two lines."""'), True),
        (CODE.replace('"""A module."""\n', ""), True),
        (CODE.replace("return x > LIMIT", "return (\n        x > LIMIT\n    )"), True),
        (CODE.replace("x > LIMIT", "x >= LIMIT"), False),
        (CODE.replace("LIMIT = 3", "LIMIT = 4"), False),
        (CODE.replace('    """Docstring."""\n', '    """Docstring."""\n    print("judging")\n'), False),
        (CODE.replace('    """Docstring."""\n    return x > LIMIT', "    return x > LIMIT"), True),
    ],
)
def test_code_fingerprint_follows_the_code_not_its_comments(tmp_path: Path, edited: str, same: bool):
    """Shard contents keys and cached verdicts hold it: editing a comment of tasks/photos/images.py must not
    invalidate them (nor rewrite dataset_info.json), editing what the code does must."""
    a = code_fingerprint(_module(tmp_path, "a", CODE))
    b = code_fingerprint(_module(tmp_path, "b", edited))
    assert (a == b) is same


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_message_naming_the_file_its_file_system_and_what_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "reports" / "clean.json"
    write_json(target, {"old": True})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", full)  # even the temporary name finds no room
    with pytest.raises(NoSpace) as caught:
        write_json(target, {"new": True})
    err = caught.value
    assert err.exit_code == 1  # a run that started and failed
    assert f"no space left while writing {target} (No space left on device)" in str(err)
    assert f"the file system at {mount_point(target)} has " in str(err) and " free" in str(err)
    assert str(err).count("What to do") == 1 and "Free space on the file system at" in err.fix
    assert json.loads(target.read_text()) == {"old": True}


def test_a_full_disk_is_recognised_in_any_librarys_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import sqlite3

    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:
        try:
            raise enospc
        except OSError as err:
            raise RuntimeError("the writer failed") from err
    except RuntimeError as wrapped:
        assert no_space_cause(wrapped) is enospc  # found under what a library raised instead
    tf_like = RuntimeError("Failed to flush 3 events to /x/events.out.tfevents; No space left on device")
    assert no_space_cause(tf_like) is tf_like  # TensorFlow's ResourceExhaustedError says it in words
    db = sqlite3.connect(tmp_path / "full.sqlite")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")  # SQLite's own "database or disk is full"
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert no_space_cause(full.value) is full.value
    ioerr = sqlite3.OperationalError("disk I/O error")
    ioerr.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert no_space_cause(ioerr, tmp_path) is None  # an I/O error with room to spare is not a full disk
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 4096)
    assert no_space_cause(ioerr, tmp_path) is ioerr  # the same error on a disk that is full is
    assert no_space_cause(ValueError("bad value")) is None


HISTORY_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from tasks.core.fileio import NoSpace, append_history

path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = path.stat().st_size + 40  # room for part of the next line only
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    append_history(path, {"stage": "train", "note": "x" * 200})
except NoSpace as err:
    print(err.what)
"""


def test_a_history_line_that_finds_no_room_is_undone(tmp_path: Path):
    """A disk that fills up in the middle of a line takes part of it: the file is cut back to its last
    whole line (the run history is read line by line). The size limit (RLIMIT_FSIZE) makes a real
    write fail half-way, as a full disk does, without needing one."""
    history = tmp_path / "runs.jsonl"
    append_history(history, {"stage": "ingest"})
    before = history.read_bytes()
    out = subprocess.run(
        [sys.executable, "-c", HISTORY_UNDER_A_SIZE_LIMIT, str(history)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"no space left while writing {history}" in out.stdout
    assert history.read_bytes() == before


def test_the_file_system_of_a_path_is_found_through_symbolic_links(tmp_path: Path):
    (tmp_path / "data").symlink_to("/proc/self")  # /proc is a file system of its own
    assert mount_point(tmp_path / "data" / "status") == Path("/proc")
    assert mount_point(tmp_path / "not" / "yet" / "there") == mount_point(tmp_path)
