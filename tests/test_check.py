"""The checks that run before DVC touches anything: the source is readable without blocking."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import imagegen
import pytest
import yaml

from tasks.check import CHECKED_TEXT, check_source, preflight, special_files
from tasks.core.errors import PawflowError

ROOT = Path(__file__).resolve().parents[1]


def source_with_photos(tmp_path: Path) -> Path:
    return imagegen.make_dataset(tmp_path / "source", per_class=5)  # the fewest the shipped split takes


def test_a_named_pipe_in_the_source_is_refused_without_opening_it(tmp_path: Path):
    src = source_with_photos(tmp_path)
    os.mkfifo(src / "Dog" / "fifo.jpg")
    (src / "Cat" / "link.jpg").symlink_to(src / "Dog" / "fifo.jpg")  # DVC follows links: so do we
    assert special_files(src) == [("Cat/link.jpg", "a named pipe"), ("Dog/fifo.jpg", "a named pipe")]
    with pytest.raises(PawflowError) as info:
        check_source(str(src))
    msg = str(info.value)
    assert "Dog/fifo.jpg: a named pipe" in msg and "would block forever" in msg
    assert msg.count("What to do") == 1


def test_a_regular_folder_an_archive_and_a_url_pass(tmp_path: Path):
    src = source_with_photos(tmp_path)
    (src / "Cat" / "dangling.jpg").symlink_to(tmp_path / "gone")  # skipped by DVC and ingest alike
    check_source(str(src))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Cat/1.jpg", imagegen.jpeg(1))
    (tmp_path / "photos.zip").write_bytes(buf.getvalue())
    check_source(str(tmp_path / "photos.zip"))
    check_source("https://example.com/photos.zip")  # ingest downloads it; nothing to look at here


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not an archive"), "not a zip or tar archive"),
        (lambda p: os.mkfifo(p), "is a named pipe"),
    ],
)
def test_a_source_that_is_not_a_folder_or_archive_is_refused(tmp_path: Path, make, says: str):
    target = tmp_path / "photos.zip"
    make(target)
    with pytest.raises(PawflowError, match=says):
        check_source(str(target))


def workspace_on(src: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A folder with the shipped params.yaml on src and an empty exclude list; and those params."""
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data/exclude.txt").write_text("")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ingest"]["source"] = str(src)
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    return ws, data


def run_check(ws: Path, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """`python -m flows.check` in ws; max_file_bytes: no file it writes may grow past this (RLIMIT_FSIZE:
    a write past it fails with EFBIG, as one on a full disk fails with ENOSPC)."""

    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error to handle, not a signal that kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flows.check"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if max_file_bytes is None else limit,
    )


def test_the_check_stage_exits_2_with_one_message_or_writes_its_constant_output(tmp_path: Path):
    ws, data = workspace_on(source_with_photos(tmp_path), tmp_path)
    ok = run_check(ws)
    assert ok.returncode == 0, ok.stderr
    assert (ws / "data/interim/checked.txt").read_text() == CHECKED_TEXT

    data["train"]["epochz"] = 3
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    bad = run_check(ws)
    assert bad.returncode == 2
    assert "train.epochz: unknown key" in bad.stderr and bad.stderr.count("What to do") == 1
    assert "Traceback" not in bad.stderr
    assert (ws / "data/interim/checked.txt").read_text() == CHECKED_TEXT  # untouched

    del data["train"]["epochz"]
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    full = run_check(ws, max_file_bytes=0)  # no room for a byte
    assert full.returncode == 1  # the check ran; writing its result failed
    checked = ws / "data/interim/checked.txt"
    assert f"no space left while writing {checked.relative_to(ws)} (File too large)" in full.stderr
    assert full.stderr.count("What to do") == 1 and "Traceback" not in full.stderr
    assert checked.read_text() == CHECKED_TEXT


@pytest.mark.parametrize(
    ("layout", "says"),
    [
        ({}, "found 0 class folder(s) with files: none"),
        ({"Cat/": None, "Dog/": None}, "found 0 class folder(s) with files: none; empty: Cat, Dog"),
        ({"Cat/1.jpg": b"x"}, "found 1 class folder(s) with files: 'Cat'"),
        ({"1.jpg": b"x", "2.jpg": b"y"}, "found 0 class folder(s) with files"),  # photos, no class folders
    ],
)
def test_a_folder_without_two_class_folders_is_refused_by_the_check(tmp_path: Path, layout: dict, says: str):
    src = tmp_path / "photos"
    src.mkdir()
    for rel, data in layout.items():
        if data is None:
            (src / rel).mkdir()
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
    with pytest.raises(PawflowError) as info:
        check_source(str(src))
    assert says in info.value.what and "one folder per label" in info.value.what


def test_an_empty_source_is_refused_by_the_check_stage_at_once(tmp_path: Path):
    """The check stage (dvc repro's first) refuses an empty source in one message, exit 2, in about a
    second (Python's start included): before, ingest failed 26 s later with the message four times."""
    ws = tmp_path / "ws"
    (tmp_path / "empty").mkdir()
    ws.mkdir()
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ingest"]["source"] = str(tmp_path / "empty")
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    started = time.monotonic()
    out = run_check(ws)
    seconds = time.monotonic() - started
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("found 0 class folder(s) with files") == 1 and out.stderr.count("What to do") == 1
    assert len(out.stderr.strip().splitlines()) == 2 and "Traceback" not in out.stderr
    assert seconds < 5, seconds  # ~1 s alone; a loaded 2-core machine is slower
    assert not (ws / "data/interim/checked.txt").exists()


def test_a_class_too_small_for_every_split_is_refused_by_the_check_with_the_minimum(tmp_path: Path):
    """Counted from directory entries (nothing opened), with the photos data/raw already holds."""
    src = source_with_photos(tmp_path)
    imagegen.make_dataset(src, per_class=2, classes=("Bird",), seed=500)
    ws, data = workspace_on(src, tmp_path)
    bad = run_check(ws)
    assert bad.returncode == 2 and bad.stderr.count("What to do") == 1 and "Traceback" not in bad.stderr
    assert "1 class(es) too small for shard.split (train 0.7, val 0.15, test 0.15)" in bad.stderr
    assert "files in ingest.source (with data/raw's): 'Bird' 2." in bad.stderr
    assert "at least 5 distinct photos per class" in bad.stderr
    assert not (ws / "data/interim/checked.txt").exists()  # nothing written
    with pytest.raises(PawflowError, match="'Bird' 2"):
        preflight(ws / "params.yaml", light=True)
    # Photos an earlier ingest brought count too; one of the source's names counts once.
    (ws / "data/raw/Bird").mkdir(parents=True)
    for name in ("bird.0.jpg", "old.1.jpg"):
        (ws / "data/raw/Bird" / name).write_bytes(imagegen.jpeg(700))
    with pytest.raises(PawflowError, match="'Bird' 3"):
        preflight(ws / "params.yaml", light=True)
    for name in ("old.2.jpg", "old.3.jpg"):
        (ws / "data/raw/Bird" / name).write_bytes(imagegen.jpeg(701))
    assert preflight(ws / "params.yaml", light=True).ingest.source == str(src)
    # Without a validation split, two photos per class reach train and test.
    data["shard"]["split"] = {"train": 0.7, "val": 0.0, "test": 0.3}
    data["ingest"]["source"] = str(imagegen.make_dataset(tmp_path / "pairs", per_class=2))
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    assert run_check(ws).returncode == 0


def test_the_check_stage_refuses_a_malformed_exclude_list_and_warns_of_entries_naming_nothing(tmp_path: Path):
    import pandas as pd

    from tasks.core.fileio import write_parquet

    src = source_with_photos(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ingest"]["source"] = str(src)
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
    (ws / "data").mkdir()
    (ws / "data/exclude.txt").write_text("# my list\nCat/cat.0.jpg # blurred\nCat/cat.1.jpg\n")
    bad = run_check(ws)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "data/exclude.txt: 1 line(s) cannot be read:\n  line 3: give the reason after ' # '" in bad.stderr
    assert not (ws / "data/interim/checked.txt").exists()  # refused before anything

    (ws / "data/exclude.txt").write_text("Cat/cat.0.jpg # blurred\nCat/typo.jpg # a typo\n")
    assert run_check(ws).returncode == 0  # nothing ingested yet: nothing to compare with
    manifest = pd.DataFrame({"path": ["Cat/cat.0.jpg", "Dog/dog.0.jpg"], "sha256": ["1" * 64, "2" * 64]})
    write_parquet(ws / "data/interim/ingest.parquet", manifest)
    warned = run_check(ws)
    assert warned.returncode == 0, warned.stderr
    assert "warning: data/exclude.txt line 2: Cat/typo.jpg names no photo of the collection" in warned.stderr
    assert "line 1" not in warned.stderr

    (ws / "data/exclude.txt").unlink()  # a deleted list: DVC cannot record a run without it
    gone = run_check(ws)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert gone.stderr.count("the exclude list data/exclude.txt (paths.exclude) is missing") == 1
    assert "git checkout -- data/exclude.txt" in gone.stderr
