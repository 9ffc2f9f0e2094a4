"""tasks/clean.py: the settings a verdict depends on, verdicts cached by content, the reject guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagegen
import pytest
from conftest import params_for, shipped
from test_images import SETTINGS

from tasks import clean
from tasks.core.errors import PawflowError
from tasks.photos import images


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
    df = clean.table(clean.check_items(raw, write_raw(raw), SETTINGS, None), shipped("clean.flags"))
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


# --------------------------------------------------------------------------- quality flags


def flag_sets(df) -> dict[str, set[str]]:
    return {p: set(f.split(";")) - {""} for p, f in zip(df["path"], df["flags"], strict=True)}


def quality_raw(raw: Path) -> list[tuple[str, str]]:
    """Every made-up quality issue, a sharp ordinary photo and a file that is not an image."""
    files = {f"Cat/{name}": data for name, (data, _) in imagegen.quality_issues().items()}
    files["Dog/sharp.png"] = imagegen.encode(imagegen.textured(7), "PNG")
    files["Dog/bad.jpg"] = b"not a photo"
    for rel, data in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    return sorted((rel, hashlib.sha256(data).hexdigest()) for rel, data in files.items())


def test_kept_photos_are_flagged_never_rejected(tmp_path: Path):
    raw = tmp_path / "raw"
    df = clean.table(clean.check_items(raw, quality_raw(raw), SETTINGS, None), shipped("clean.flags"))
    flags = flag_sets(df)
    assert flags["Dog/sharp.png"] == set()
    assert flags["Cat/flat.png"] == {"near_blank", "blurry", "low_information"}  # flat is all three
    for name, (_, flag) in imagegen.quality_issues().items():
        assert flag in flags[f"Cat/{name}"], name
        if name != "flat.png":
            assert flags[f"Cat/{name}"] == {flag}, name
    assert set(df[df["path"] != "Dog/bad.jpg"]["status"]) == {"kept"}  # flagged, not rejected
    bad = df.set_index("path").loc["Dog/bad.jpg"]
    assert (
        bad["status"] == "rejected" and bad["flags"] == "" and bad[list(images.QUALITY_COLUMNS)].isna().all()
    )
    rep = clean.report(df)
    assert rep["per_flag"] == {"near_blank": 1, "dark": 1, "bright": 1, "blurry": 2, "low_information": 2}
    assert rep["flagged"] == 5 and rep["kept"] == 6
    # a photo rejected after it was measured (too slow to decode) keeps its measures but no flag
    rows = clean.check_items(raw, quality_raw(raw), SETTINGS, None)
    for r in rows:
        if r["path"] == "Cat/night.png":
            r.update(status="rejected", reason="timeout", detail="31.0s")
    assert flag_sets(clean.table(rows, shipped("clean.flags")))["Cat/night.png"] == set()
    assert ["flagged (kept, worth a look)", 5] in clean.summary_rows(rep)


def test_flag_limits_are_strict_bounds_and_zero_turns_a_flag_off(tmp_path: Path):
    raw = tmp_path / "raw"
    rows = clean.check_items(raw, quality_raw(raw), SETTINGS, None)
    night = next(r for r in rows if r["path"] == "Cat/night.png")
    at = shipped("clean.flags", dark_level=night["grey_p99"])
    above = shipped("clean.flags", dark_level=night["grey_p99"] + 1)
    assert "dark" not in flag_sets(clean.table(rows, at))["Cat/night.png"]
    assert "dark" in flag_sets(clean.table(rows, above))["Cat/night.png"]
    off = shipped(
        "clean.flags",
        near_blank_contrast=0,
        dark_level=0,
        bright_level=256,
        blurry_sharpness=0,
        low_information_bits=0,
    )
    assert set(clean.table(rows, off)["flags"]) == {""}


def test_the_cache_holds_the_quality_measures(tmp_path: Path):
    from tasks.photos import store

    raw, cache = tmp_path / "raw", tmp_path / "cache"
    items = quality_raw(raw)
    clean.check_items(raw, items, SETTINGS, cache)
    fp = clean.settings_fingerprint(SETTINGS)
    with store.connect(cache) as con:
        records = store.get_checks(con, [clean.cache_key(sha, fp) for _, sha in items])
    kept = [r for r in records.values() if r["status"] == "kept"]
    assert len(kept) == 6
    for r in kept:
        assert all(isinstance(r[k], int | float) for k in images.QUALITY_COLUMNS), r


def test_a_run_being_stopped_leaves_its_chunk_at_the_next_photo(tmp_path: Path, monkeypatch):
    """Stopped (Ctrl-C, SIGTERM, a cancelled run) while a task runner's thread judges a chunk: the thread
    gives up before its next photo instead of decoding the rest of the chunk."""
    from tasks.core import stopping

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
