"""flows.pipeline. Bad params, a bad source and a second run, through every entry point: one message,
the right exit code, and nothing lost or half-recorded (byte comparisons, dvc status); the concurrency
limit of a served run.

One workspace for several cases (each `dvc repro` of the data stages costs ~1 min here).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import imagegen
import pytest
import yaml
from commands import dvc, py, sh, start_holding_the_workspace
from conftest import make_workspace
from workspace import FAST, up_to_date, workspace

from tasks.history import versioning

DATA_STAGES = (versioning.CHECK_STAGE, *versioning.DATA_STAGES)


def snapshot(ws: Path) -> dict[str, bytes]:
    """Every output of the data stages, and dvc.lock."""
    files = [ws / "dvc.lock", *sorted((ws / "reports").glob("*.json")), *sorted((ws / "data").rglob("*"))]
    return {str(f.relative_to(ws)): f.read_bytes() for f in files if f.is_file()}


def edit_params(ws: Path, section: str, **values: object) -> bytes:
    """Change params.yaml; returns the old bytes to restore."""
    old = (ws / "params.yaml").read_bytes()
    data = yaml.safe_load(old)
    data[section] = {**data[section], **values}
    (ws / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return old


def one_message(text: str, says: str) -> None:
    assert says in text, text[-3000:]
    assert text.count(says) == 1 and text.count("What to do") == 1, text[-3000:]
    assert "\\n" not in text and "Traceback" not in text, text[-3000:]


@pytest.mark.slow
def test_bad_params_and_a_bad_source_lose_nothing_whichever_entry_point(tmp_path: Path, prefect_server: str):
    api = prefect_server
    ws, source = workspace(tmp_path)
    assert dvc(ws, "repro", "shard", api=api).returncode == 0
    before = snapshot(ws)

    # dvc repro <stage> with a typo: the check stage stops DVC before it removes anything.
    old = edit_params(ws, "train", epochz=3)
    out = dvc(ws, "repro", "train", api=api)
    assert out.returncode != 0 and "Running stage 'train'" not in out.stdout
    one_message(out.stderr, "train.epochz: unknown key")
    # ... and the pipeline refuses it before any flow runs, exit 2.
    out = py(ws, "-m", "flows.pipeline", "--no-push", api=api)
    assert out.returncode == 2 and "Flow run" not in out.stderr
    one_message(out.stderr, "train.epochz: unknown key")
    (ws / "params.yaml").write_bytes(old)
    assert snapshot(ws) == before

    # The source is gone while params.yaml did not change: ingest's outputs persist.
    source.rename(tmp_path / "moved")
    out = dvc(ws, "repro", "shard", api=api)
    assert out.returncode != 0 and "No such file or directory" in out.stderr
    assert snapshot(ws) == before
    out = py(ws, "-m", "flows.pipeline", "--no-push", api=api)
    assert out.returncode == 2
    one_message(out.stderr, "does not exist")
    out = sh(ws, str(Path(sys.executable).parent / "pawflow"), "run", api=api)
    assert out.returncode == 2 and "failed to reproduce" not in out.stderr  # refused before dvc repro
    one_message(out.stderr, "does not exist")
    (tmp_path / "moved").rename(source)
    assert snapshot(ws) == before and up_to_date(ws, api, *DATA_STAGES)

    # A named pipe in the source: DVC would block hashing it; pawflow's entry points refuse at once.
    os.mkfifo(source / "Dog" / "fifo.jpg")
    started = time.monotonic()
    out = sh(ws, sys.executable, "-m", "flows.pipeline", "--no-push", api=api, timeout=120)
    assert out.returncode == 2 and time.monotonic() - started < 60
    one_message(out.stderr, "Dog/fifo.jpg: a named pipe")
    out = sh(ws, str(Path(sys.executable).parent / "pawflow"), "run", api=api, timeout=120)
    assert out.returncode == 2
    one_message(out.stderr, "Dog/fifo.jpg: a named pipe")
    (source / "Dog" / "fifo.jpg").unlink()

    # A stage that fails inside the pipeline: exit 1, its message once, its outputs as they were.
    old = edit_params(ws, "clean", min_side=4000)
    out = py(ws, "-m", "flows.pipeline", "--no-push", "--until", "clean", api=api)
    assert out.returncode == 1
    final = out.stderr[out.stderr.index("pawflow pipeline failed") :]
    one_message(final, "were rejected")
    assert out.stderr.count("What to do") == 1 and "\\n" not in out.stderr  # runs' states: one line each
    (ws / "params.yaml").write_bytes(old)
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k != "dvc.lock"} == {
        k: v for k, v in before.items() if k != "dvc.lock"
    }
    # The pipeline recorded its check of the edited params.yaml: only check is out of date now.
    status = dvc(ws, "status", *DATA_STAGES, api=api).stdout
    assert "check:" in status and not any(f"{s}:" in status for s in DATA_STAGES[1:]), status
    out = dvc(ws, "repro", "shard", api=api)
    assert out.returncode == 0 and re.findall(r"Running stage '(\w+)'", out.stdout) == ["check"]
    assert snapshot(ws) == before


@pytest.mark.slow
def test_a_second_run_is_refused_and_never_breaks_the_first(tmp_path: Path, prefect_server: str):
    api = prefect_server
    ws, _ = workspace(tmp_path)
    first = start_holding_the_workspace(ws, "-m", "flows.pipeline", "--no-push", "--until", "shard", api=api)
    second = dvc(ws, "repro", "shard", api=api)  # DVC's own lock is held by the pipeline
    stage = py(ws, "-m", "flows.ingest", api=api)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode != 0 and "Unable to acquire lock" in second.stderr
    assert stage.returncode == 2 and "another pawflow run is using this workspace" in stage.stderr
    assert up_to_date(ws, api, *DATA_STAGES)


@pytest.mark.slow
def test_classes_too_small_for_the_split_are_refused_and_the_last_shards_kept(
    tmp_path: Path, prefect_server: str
):
    api = prefect_server
    many = tmp_path / "many"
    for i in range(50 * 4):  # 50 labels x 4 photos: each label is split on its own
        folder = many / f"label{i % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(imagegen.jpeg(900_000 + i))
    halves = {"split": {"train": 0.5, "val": 0.25, "test": 0.25}}  # 2/1/1 per label
    ws = make_workspace(tmp_path / "ws", many, **FAST, shard=halves)
    assert dvc(ws, "repro", "shard", api=api).returncode == 0
    shards = {p.name: p.read_bytes() for p in (ws / "data/processed").iterdir()}
    edit_params(ws, "shard", split={"train": 0.7, "val": 0.15, "test": 0.15})  # 3/1/0 per label
    out = dvc(ws, "repro", "shard", api=api)
    assert out.returncode != 0
    # The check stage counts the source's files (4 per label, 5 needed) before DVC removes anything.
    said = "50 class(es) too small for shard.split (train 0.7, val 0.15, test 0.15); files in ingest.source"
    assert said in out.stderr and "'label00' 4; " in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("What to do") == 1
    assert {p.name: p.read_bytes() for p in (ws / "data/processed").iterdir()} == shards
    status = dvc(ws, "status", "shard", api=api).stdout
    assert "changed deps" in status and "changed outs" not in status  # not recorded, nothing removed


@pytest.mark.slow
def test_corrections_reach_the_collection_and_a_swapped_batch_is_quarantined(
    tmp_path: Path, prefect_server: str
):
    """docs/collection.md end to end, through the real entry points: a batch whose every label is swapped
    (quarantined, the champion kept); the next night a photo removed from the source, one moved to the
    other class folder, one excluded; then a source that lost 30 photos (refused, then accepted for one
    dvc repro), and a release."""
    import json

    api = prefect_server
    source = imagegen.make_dataset(tmp_path / "source", per_class=40, tinted=True)  # labels a model learns
    learnable = {**FAST["train"], "epochs": 3, "learning_rate": 0.01}
    ws = make_workspace(
        tmp_path / "ws", source, train=learnable, evaluate=FAST["evaluate"], audit={"min_photos": 10}
    )
    first = py(ws, "-m", "flows.pipeline", "--no-push", api=api)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((ws / "reports/audit.json").read_text())["reason"].startswith("no audit has run")
    champion = json.loads((ws / "models/champion/champion.json").read_text())
    assert champion["metrics"]["accuracy"] >= 0.9, champion  # a champion worth auditing with

    def last_run() -> dict:
        lines = (ws / "reports/runs.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if '"entry"' in x][-1]

    # A night whose labels are all swapped (cat-tinted photos in Dog/ and back), and nothing else: the
    # batch is quarantined, so the data the model learns from is what it was: nothing is retrained.
    model = (ws / "models/champion/model.keras").read_bytes()
    for i in range(20):
        truth = i % 2
        (source / ("Dog", "Cat")[truth] / f"night.{i}.jpg").write_bytes(
            imagegen.tinted_jpeg(60_000 + i, truth)
        )
    swapped = py(ws, "-m", "flows.pipeline", "--no-push", api=api)
    assert swapped.returncode == 0, swapped.stderr[-3000:]
    audit = json.loads((ws / "reports/audit.json").read_text())
    assert audit["tripped"] and audit["new_photos"] == audit["quarantined"] == 20, audit
    assert audit["disagreement_rate"] >= 0.9 and audit["p_value"] < 0.01
    stages = last_run()["stages"]
    assert stages["ingest"].startswith("ran") and stages["audit"].startswith("ran"), stages
    assert all(stages[s].startswith("skipped") for s in ("train", "evaluate")), stages
    assert (ws / "models/champion/model.keras").read_bytes() == model  # the champion kept
    assert last_run()["run"]["audit"]["tripped"]  # what the data_quality alert is sent for

    (source / "Cat" / "cat.0.jpg").unlink()
    (source / "Cat" / "cat.1.jpg").rename(source / "Dog" / "cat.1.jpg")  # relabelled by moving it
    (ws / "data/exclude.txt").write_text("Dog/dog.2.jpg  # blurred beyond recognition\n")
    night = py(ws, "-m", "flows.pipeline", "--no-push", api=api)
    assert night.returncode == 0, night.stderr[-3000:]
    figures = last_run()["collection"]
    assert (figures["copied"], figures["removed"], figures["relabelled"]) == (0, 1, 1), figures
    assert figures["relabelled_per_class"] == {"Cat": {"Dog": 1}}
    dd = __import__("pandas").read_parquet(ws / "data/interim/dedup.parquet").set_index("path")
    assert dd.at["Dog/cat.1.jpg", "label"] == "Dog" and dd.at["Dog/dog.2.jpg", "status"] == "excluded"
    assert (dd["status"] == "quarantined").sum() == 20 and "Cat/cat.0.jpg" not in dd.index
    info = json.loads((ws / "data/processed/dataset_info.json").read_text())
    assert sum(s["examples"] for s in info["splits"].values()) == 80 - 2  # removed and excluded; batch held
    page = (ws / "reports/data.html").read_text()
    assert f"batch {audit['batch']}: 20 photos held" in page and "blurred beyond recognition" in page
    assert up_to_date(ws, api)  # the night is recorded in dvc.lock: dvc repro has nothing to do

    # A source that lost 30 of the 99 photos (an unmounted share looks like this): refused before anything.
    for p in sorted((source / "Dog").glob("dog.*.jpg"))[:30]:
        p.unlink()
    lock = (ws / "dvc.lock").read_bytes()
    raw = sorted(p.relative_to(ws).as_posix() for p in (ws / "data/raw").rglob("*") if p.is_file())
    refused = py(ws, "-m", "flows.pipeline", "--no-push", "--until", "ingest", api=api)
    assert refused.returncode == 1 and "no longer holds 30 of the 99 photos" in refused.stderr
    repro = dvc(ws, "repro", "ingest", api=api)
    assert repro.returncode != 0 and "PAWFLOW_ACCEPT_REMOVALS=30 dvc repro" in repro.stderr, repro.stderr[
        -3000:
    ]
    assert sorted(p.relative_to(ws).as_posix() for p in (ws / "data/raw").rglob("*") if p.is_file()) == raw
    assert (ws / "dvc.lock").read_bytes() == lock
    accepted = sh(
        ws, sys.executable, "-m", "dvc", "repro", "ingest", api=api, env={"PAWFLOW_ACCEPT_REMOVALS": "30"}
    )
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert len(list((ws / "data/raw").rglob("*.jpg"))) == len(raw) - 30

    # The batch, checked by a person, is released: dvc.lock records it, and dedup is out of date.
    listed = sh(ws, str(Path(sys.executable).parent / "pawflow"), "quarantine", "list", api=api)
    assert audit["batch"] in listed.stdout and "20 photos" in listed.stdout
    released = sh(ws, str(Path(sys.executable).parent / "pawflow"), "quarantine", "release", "--all", api=api)
    assert released.returncode == 0 and f"released batch {audit['batch']} (20 photos)" in released.stdout
    assert "dedup" in dvc(ws, "status", "dedup", api=api).stdout and up_to_date(ws, api, "audit")
