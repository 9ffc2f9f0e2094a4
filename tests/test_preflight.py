"""The checks that run before DVC touches anything: the source is readable without blocking."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import imagegen
import pytest
import yaml

from tasks.errors import PawflowError
from tasks.preflight import CHECKED_TEXT, check_source, special_files

ROOT = Path(__file__).resolve().parents[1]


def source_with_photos(tmp_path: Path) -> Path:
    return imagegen.make_dataset(tmp_path / "source", per_class=2)


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
    src = source_with_photos(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ingest"]["source"] = str(src)
    (ws / "params.yaml").write_text(yaml.safe_dump(data))
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
