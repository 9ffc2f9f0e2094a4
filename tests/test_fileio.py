"""tasks/fileio.py: hashes, deterministic JSON, atomic writes and the temporaries a killed run leaves."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from tasks.fileio import (
    HASH_BLOCK,
    atomic_path,
    code_fingerprint,
    dumps_json,
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
    """Shard contents keys and cached verdicts hold it: editing a comment of tasks/images.py must not
    invalidate them (nor rewrite dataset_info.json), editing what the code does must."""
    a = code_fingerprint(_module(tmp_path, "a", CODE))
    b = code_fingerprint(_module(tmp_path, "b", edited))
    assert (a == b) is same
