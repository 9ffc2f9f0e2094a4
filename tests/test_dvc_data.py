"""End to end through the real entry point: `dvc repro` of the data stages in a fresh workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagegen
import pytest
import yaml
from conftest import make_workspace, tool_env
from PIL import Image, ImageEnhance

pytestmark = pytest.mark.slow


def dvc(ws: Path, *args: str, api_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, env=tool_env(api_url), capture_output=True, text=True
    )


def ran(out: str) -> list[str]:
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_data_stages(tmp_path: Path, prefect_server: str):
    source = imagegen.make_dataset(tmp_path / "source", per_class=20)
    (source / "Cat" / "Thumbs.db").write_bytes(imagegen.OLE2_MAGIC + bytes(512))
    # A near duplicate at perceptual distance 2 of dog.2 (lower contrast, recompressed).
    near = ImageEnhance.Contrast(Image.open(source / "Dog" / "dog.2.jpg")).enhance(0.9)
    (source / "Dog" / "dog.2 edited.jpg").write_bytes(imagegen.encode(near, "JPEG", quality=60))
    ws = make_workspace(tmp_path / "ws", source)

    first = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran(first.stdout) == ["check", "ingest", "clean", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 40
    assert json.loads((ws / "reports/dedup.json").read_text())["near_duplicates"] == 1
    clean = json.loads((ws / "reports/clean.json").read_text())
    assert clean["per_reason"] == {"not_an_image": 1}

    again = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout
    # The data stages are up to date; train and evaluate were never asked for.
    status = dvc(ws, "status", "shard", api_url=prefect_server)
    assert "up to date" in status.stdout, status.stdout

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dedup"]["max_distance"] = 0  # the edited copy is no longer a duplicate
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert changed.returncode == 0, changed.stderr
    assert ran(changed.stdout) == ["check", "dedup", "shard"]  # check: params.yaml changed
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 41

    for i in range(3):
        (source / "Dog" / f"new.{i}.jpg").write_bytes(imagegen.jpeg(50_000 + i))
    grown = dvc(ws, "repro", "shard", api_url=prefect_server)
    assert ran(grown.stdout) == ["ingest", "clean", "dedup", "shard"]
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(info["splits"][s]["examples"] for s in ("train", "val", "test")) == 44
    assert json.loads((ws / "reports/ingest.json").read_text())["copied"] == 3


def test_bad_input_is_one_clear_error_without_traceback(tmp_path: Path, prefect_server: str):
    ws = make_workspace(tmp_path / "ws", tmp_path / "does-not-exist")
    out = subprocess.run(
        [sys.executable, "-m", "flows.ingest"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "does not exist" in out.stderr and "Set ingest.source" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (ws / "data" / "interim" / "ingest.parquet").exists()

    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nbogus: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "flows.clean"],
        cwd=ws,
        env=tool_env(prefect_server),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "bogus: unknown key" in out.stderr and "Traceback" not in out.stderr
