"""flows/ingest.py in-process and as `python -m flows.ingest`: awkward and hostile sources give reasons
or one clear message."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import imagegen
import pandas as pd
import pytest
from commands import py
from conftest import make_workspace
from dataflows import run
from sources import flip_byte, snapshot, ten_photos, zip_of

from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.shard import shard_flow

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_awkward_names_labels_and_file_kinds(tmp_path: Path, make_params):
    src = imagegen.make_dataset(tmp_path / "src", per_class=6, classes=("Cats & Kittens (big)", "Dog=1"))
    cat, dog = src / "Cats & Kittens (big)", src / "Dog=1"
    names = ["with space.jpg", "paren (1).jpg", "a=b.jpg", "ünïcödé.jpg", "x" * 251 + ".jpg"]
    for i, name in enumerate(names):
        (cat / name).write_bytes(imagegen.jpeg(500 + i))
    (dog / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (dog / "._dog.0.jpg").write_bytes(b"\0\5\26\7" + bytes(200))  # AppleDouble
    (dog / "folder.jpg").mkdir()  # a directory named like an image
    (dog / "folder.jpg" / "inner.jpg").write_bytes(imagegen.jpeg(600))
    (dog / "empty_dir.jpg").mkdir()
    bad_name = os.fsencode(str(dog)) + b"/bad\xff\xfe.jpg"
    with open(bad_name, "wb") as f:
        f.write(imagegen.jpeg(601))
    (src / "Empty").mkdir()
    params = make_params(src)
    run(params, ingest_flow, clean_flow, dedup_flow, shard_flow)

    ingest = json.loads((params.paths.reports / "ingest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in ingest["skipped"]}
    assert any("not valid UTF-8" in r for r in skipped.values())
    assert skipped["Empty/"].startswith("empty class folder")
    clean = pd.read_parquet(params.paths.interim / "clean.parquet").set_index("path")
    for name in names:
        assert clean.at[f"Cats & Kittens (big)/{name}", "status"] == "kept"
    assert clean.at["Dog=1/folder.jpg/inner.jpg", "status"] == "kept"
    for junk in (".DS_Store", "._dog.0.jpg"):
        assert clean.at[f"Dog=1/{junk}", "reason"] == "not_an_image"
    info = json.loads((params.paths.processed / "dataset_info.json").read_text())
    assert info["class_names"] == ["Cats & Kittens (big)", "Dog=1"]
    # the raw copies have exactly the source's bytes, 255-byte name included
    assert (params.paths.raw / "Cats & Kittens (big)" / names[-1]).read_bytes() == (
        cat / names[-1]
    ).read_bytes()


def test_unreadable_files_are_skipped_with_a_reason(dataset: Path, make_params, monkeypatch):
    target = dataset / "Cat" / "cat.4.jpg"
    target.chmod(0)
    real_access = os.access
    # root reads anything; pretend to be a user without the permission for this one file
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == target else real_access(p, mode)
    )
    params = make_params(dataset)
    run(params, ingest_flow)
    rep = json.loads((params.paths.reports / "ingest.json").read_text())
    assert {"path": "Cat/cat.4.jpg", "reason": "unreadable: permission denied"} in rep["skipped"]


@pytest.mark.slow
def test_damaged_archive_through_the_entry_point_is_one_message(tmp_path: Path, prefect_server: str):
    z = zip_of(ten_photos(tmp_path / "src"), tmp_path / "pets.zip")
    info = zipfile.ZipFile(z).getinfo("Dog/dog.2.jpg")
    flip_byte(z, info.header_offset + 30 + len(info.filename) + info.compress_size // 2)
    ws = make_workspace(tmp_path / "ws", z)
    earlier = ws / "data" / "raw" / "Cat" / "earlier.jpg"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(imagegen.jpeg(5))
    out = py(ws, "-m", "flows.ingest", api=prefect_server)
    assert out.returncode != 0, out.stdout
    assert "entry 'Dog/dog.2.jpg': its data does not match its CRC-32" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(ws / "data" / "raw") == {"Cat/earlier.jpg": imagegen.jpeg(5)}
    assert (
        not (ws / "data" / "interim" / "ingest.parquet").exists()
        and not (ws / "reports" / "ingest.json").exists()
    )


@pytest.mark.slow
def test_bad_input_is_one_clear_error_without_traceback(tmp_path: Path, prefect_server: str):
    ws = make_workspace(tmp_path / "ws", tmp_path / "does-not-exist")
    out = py(ws, "-m", "flows.ingest", api=prefect_server)
    assert out.returncode != 0
    assert "does not exist" in out.stderr and "set ingest.source in params.yaml" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (ws / "data" / "interim" / "ingest.parquet").exists()

    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nbogus: 1\n")
    out = py(ws, "-m", "flows.clean", api=prefect_server)
    assert out.returncode == 2 and "bogus: unknown key" in out.stderr and "Traceback" not in out.stderr


def test_a_download_that_trickles_is_stopped_at_the_deadline(tmp_path: Path, make_params):
    """A server sending a byte every 0.2 s never trips the per-read timeout: the task's deadline
    (ingest.download_deadline_s) ends it, in one message naming the key."""
    from httpserver import FileServer

    with FileServer() as srv:
        srv.files["/pets.zip"] = b"x" * 10_000
        srv.drip = 0.2
        params = make_params(srv.url + "/pets.zip", ingest={"download_deadline_s": 1, "download_retries": 1})
        started = time.monotonic()
        state = ingest_flow(params=params, return_state=True)
    assert state.is_failed() and time.monotonic() - started < 30
    err = state.result(raise_on_failure=False)
    assert "took longer than ingest.download_deadline_s (1 s); stopped." in err.what
    assert "resumed by the next run" in err.fix


def test_pawflow_accept_removals_takes_a_count_or_any():
    from flows.ingest import accepted_removals
    from tasks.core.errors import PawflowError

    assert accepted_removals(None) == accepted_removals("  ") == (False, None)
    assert accepted_removals("any") == (True, None)
    assert accepted_removals("120") == (False, 120)
    for wrong in ("yes", "-3", "true", "1.5"):
        with pytest.raises(PawflowError, match="expected the number of photos whose removal you accept"):
            accepted_removals(wrong)


def test_the_flow_returns_and_records_what_the_run_changed(dataset: Path, make_params):
    params = make_params(dataset)
    run(params, ingest_flow)
    (dataset / "Cat" / "cat.0.jpg").unlink()
    (dataset / "Cat" / "cat.1.jpg").rename(dataset / "Dog" / "cat.1.jpg")
    (dataset / "Dog" / "new.jpg").write_bytes(imagegen.jpeg(31337))
    state = ingest_flow(params=params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["report"]["files"] == 40 and out["report"]["mode"] == "mirror"
    figures = out["figures"]
    assert (figures["copied"], figures["removed"], figures["relabelled"]) == (1, 1, 1)
    assert figures["copied_per_class"] == {"Dog": 1} and figures["removed_per_class"] == {"Cat": 1}
    assert figures["relabelled_per_class"] == {"Cat": {"Dog": 1}}
    lines = [json.loads(x) for x in params.pipeline.history.read_text().splitlines()]
    assert lines[-1]["stage"] == "ingest" and lines[-1]["relabelled_per_class"] == {"Cat": {"Dog": 1}}
    tracked = (params.paths.reports / "ingest.json").read_text()
    assert "relabel" not in tracked and "removed" not in tracked  # per-run deltas stay out of tracked files


def test_a_refused_removal_fails_the_flow_with_one_message_and_changes_nothing(dataset: Path, make_params):
    from tasks.core.errors import Refused

    params = make_params(dataset)
    run(params, ingest_flow)
    before = snapshot(params.paths.raw), (params.paths.interim / "ingest.parquet").read_bytes()
    for p in sorted((dataset / "Dog").iterdir())[:15]:
        p.unlink()
    state = ingest_flow(params=params, return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), Refused)
    assert "no longer holds 15 of the 40 photos" in state.message
    assert (snapshot(params.paths.raw), (params.paths.interim / "ingest.parquet").read_bytes()) == before
    state = ingest_flow(params=params, accept_count=15, return_state=True)
    assert state.is_completed() and state.result()["figures"]["removed"] == 15
