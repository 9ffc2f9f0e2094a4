"""tasks/clean.py: the settings a verdict depends on, verdicts cached by content, the reject guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagegen
import pytest
from conftest import params_for
from test_images import SETTINGS

from tasks import clean, images
from tasks.errors import PawflowError


def test_check_settings_take_clean_and_the_shard_and_dedup_keys_it_borrows(tmp_path: Path):
    params = params_for(
        tmp_path,
        "unused",
        clean={"min_side": 17},
        shard={"max_side": 111, "jpeg_quality": 77},
        dedup={"hash_size": 12},
    )
    s = clean.check_settings(params)
    assert (s.min_side, s.max_side, s.jpeg_quality, s.hash_size) == (17, 111, 77, 12)
    assert s.formats == params.clean.formats and s.timeout_s == params.clean.timeout_s
    assert clean.settings_fingerprint(s) != clean.settings_fingerprint(
        clean.check_settings(params_for(tmp_path, "x"))
    )


def write_raw(raw: Path) -> list[tuple[str, str]]:
    files = {"Cat/a.jpg": imagegen.jpeg(1), "Dog/b.jpg": imagegen.jpeg(2), "Dog/bad.jpg": b"not a photo"}
    for rel, data in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    return [(rel, hashlib.sha256(data).hexdigest()) for rel, data in files.items()]


def test_verdicts_are_cached_by_content_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    items = write_raw(raw)
    first = clean.check_items(raw, items, SETTINGS, cache)
    assert [r["status"] for r in first] == ["kept", "kept", "rejected"]
    assert [r["label"] for r in first] == ["Cat", "Dog", "Dog"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached verdict was decoded again")

    monkeypatch.setattr(images, "check_file", no_decoding)
    assert clean.check_items(raw, items, SETTINGS, cache) == first
    with pytest.raises(AssertionError, match="decoded again"):
        clean.check_items(raw, items, SETTINGS, cache, refresh=True)


def test_a_missing_file_is_never_cached(tmp_path: Path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    items = write_raw(raw)
    (raw / "Cat/a.jpg").unlink()
    assert clean.check_items(raw, items, SETTINGS, cache)[0]["reason"] == "missing"
    (raw / "Cat/a.jpg").write_bytes(imagegen.jpeg(1))  # back again: judged from the file, not the cache
    assert clean.check_items(raw, items, SETTINGS, cache)[0]["status"] == "kept"


def test_report_counts_and_the_guard(tmp_path: Path):
    raw = tmp_path / "raw"
    df = clean.table(clean.check_items(raw, write_raw(raw), SETTINGS, None))
    rep = clean.report(df)
    assert (rep["files"], rep["kept"], rep["rejected"]) == (3, 2, 1)
    assert rep["per_label"] == {"Cat": {"kept": 1, "rejected": 0}, "Dog": {"kept": 1, "rejected": 1}}
    assert [f["path"] for f in rep["rejected_files"]] == ["Dog/bad.jpg"]
    clean.guard(df, 0.5)
    with pytest.raises(
        PawflowError, match=r"clean: 33% of 3 files were rejected .*most common: not_an_image"
    ):
        clean.guard(df, 0.3)
    with pytest.raises(PawflowError, match="lists no files"):
        clean.guard(df.iloc[:0], 0.3)


def test_a_run_being_stopped_leaves_its_chunk_at_the_next_photo(tmp_path: Path, monkeypatch):
    """Stopped (Ctrl-C, SIGTERM, a cancelled run) while a task runner's thread judges a chunk: the thread
    gives up before its next photo instead of decoding the rest of the chunk."""
    from tasks import stopping

    raw = tmp_path / "raw"
    items = write_raw(raw)
    decoded: list[Path] = []
    real = images.check_file

    def check_then_stop(path: Path, sha: str, settings) -> tuple:
        decoded.append(path)
        stopping.request()  # the stop comes while the first photo is being judged
        return real(path, sha, settings)

    monkeypatch.setattr(images, "check_file", check_then_stop)
    try:
        with pytest.raises(stopping.Stopped):
            clean.check_items(raw, items, SETTINGS, tmp_path / "cache")
    finally:
        stopping.clear()
    assert decoded == [raw / items[0][0]]
