"""tasks.base: when train fine-tunes a starting model; models/base as train and the pipeline see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shipped
from infos import dataset_info

from tasks import base
from tasks.base import Base
from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_bytes
from tasks.core.params import Train

INFO = dataset_info(["Cat", "Dog"], {"train": [("train.tfrecord-00000-of-00001", 110)]})
FINETUNE = shipped("train.finetune", max_growth=0.25, max_warm_starts=3)
DEFAULT = shipped("train")  # the shipped params.yaml train: section


def made_base(count: int = 0, full: int = 100, train: Train = DEFAULT, data: bytes = b"weights") -> Base:
    return Base(sha256_bytes(data), count, full, base.shaping(train, INFO))


def test_shaping_follows_the_architecture_and_the_classes_not_the_schedule():
    now = base.shaping(DEFAULT, INFO)
    assert now == base.shaping(
        shipped("train", epochs=3, learning_rate=0.1, seed=1, finetune={"epochs": 1}), INFO
    )
    assert now != base.shaping(shipped("train", width=8), INFO)
    assert now != base.shaping(DEFAULT, INFO.model_copy(update={"class_names": ["Cat", "Dog", "Fox"]}))
    assert now["class_names"] == ["Cat", "Dog"] and now["image_size"] == DEFAULT.image_size == 160


def test_plan_warm_starts_a_compatible_base_and_counts():
    b = made_base(count=1)
    p = base.plan(b, base.shaping(DEFAULT, INFO), 110, FINETUNE)
    assert p.warm and p.count == 2 and p.from_sha256 == b.sha256 and p.full_retrain_examples == 100
    assert "10.0% more train photos" in p.reason
    assert base.warm_start_report(p) == {"from_sha256": b.sha256, "count": 2}


@pytest.mark.parametrize(
    ("b", "train", "n_train", "reason"),
    [
        (None, DEFAULT, 110, "no starting model"),
        (
            made_base(),
            shipped("train", width=8),
            110,
            "model-shaping settings changed since the starting model: width",
        ),
        (made_base(), shipped("train", image_size=64, augment={"flip": False}), 110, "augment, image_size"),
        (made_base(count=3), DEFAULT, 110, "3 warm starts in a row"),
        (
            made_base(),
            DEFAULT,
            126,
            "grew by 26.0% since the last full retrain (> train.finetune.max_growth 25.0%)",
        ),
        (made_base(), DEFAULT, 99, "the train split shrank (100 -> 99 photos)"),
    ],
)
def test_plan_retrains_from_scratch(b: Base | None, train: Train, n_train: int, reason: str):
    p = base.plan(b, base.shaping(train, INFO), n_train, FINETUNE)
    assert not p.warm and p.count == 0 and p.from_sha256 is None and p.full_retrain_examples == n_train
    assert reason in p.reason
    assert base.warm_start_report(p) is None
    assert base.lineage(p, {"x": 1}) == {
        "shaping": {"x": 1},
        "warm_start": None,
        "full_retrain_examples": n_train,
    }


def test_no_limit_on_warm_starts_when_max_warm_starts_is_null():
    p = base.plan(
        made_base(count=50), base.shaping(DEFAULT, INFO), 100, shipped("train.finetune", max_warm_starts=None)
    )
    assert p.warm and p.count == 51


def test_base_folder_round_trip_and_checks(tmp_path: Path):
    folder = tmp_path / "models" / "base"
    assert base.read_base(folder) is None  # no models/base (a stage run outside DVC): from scratch
    assert base.ensure_base(folder) is None
    assert json.loads((folder / "base.json").read_text()) is None
    b = made_base(count=2)
    base.write_base(folder, (b"weights", b))
    assert base.read_base(folder) == b
    assert base.ensure_base(folder) == b  # an existing base is kept
    (folder / "model.keras").write_bytes(b"other weights")
    with pytest.raises(PawflowError, match="is not the model it names"):
        base.read_base(folder)
    (folder / "base.json").rename(folder / "moved.json")
    with pytest.raises(PawflowError, match=r"base\.json: not found beside .*model\.keras"):
        base.read_base(folder)
    (folder / "moved.json").rename(folder / "base.json")
    (folder / "model.keras").unlink()
    with pytest.raises(PawflowError, match=r"model\.keras is missing"):
        base.read_base(folder)
    (folder / "base.json").write_text('{"sha256": "x"}')
    with pytest.raises(PawflowError, match=r"not a starting-model description.*count"):
        base.read_base(folder)
    (folder / "base.json").write_text("{")
    with pytest.raises(PawflowError, match="not valid JSON"):
        base.read_base(folder)
    base.write_base(folder, None)
    assert sorted(p.name for p in folder.iterdir()) == ["base.json"] and base.read_base(folder) is None
    with pytest.raises(ValueError, match="do not match"):
        base.write_base(folder, (b"not the weights", b))


def champion(tmp_path: Path, training: dict | None) -> Path:
    folder = tmp_path / "champion"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"champion weights")
    card = {"class_names": ["Cat", "Dog"]} | ({base.LINEAGE_KEY: training} if training else {})
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_base_from_champion_reads_its_lineage(tmp_path: Path):
    assert base.base_from_champion(tmp_path / "none") is None
    now = base.shaping(DEFAULT, INFO)
    lineage = {
        "shaping": now,
        "warm_start": {"from_sha256": "a" * 64, "count": 2},
        "full_retrain_examples": 90,
    }
    data, b = base.base_from_champion(champion(tmp_path, lineage))
    assert data == b"champion weights" and b == Base(sha256_bytes(data), 2, 90, now)


def test_a_champion_from_before_warm_starts_is_not_a_starting_model(tmp_path: Path):
    assert base.base_from_champion(champion(tmp_path, None)) is None


@pytest.mark.parametrize(
    ("warm", "full", "will_run", "current", "champ", "train", "choice", "why"),
    [
        (True, True, False, made_base(), made_base(data=b"c"), DEFAULT, "scratch", "full retrain was asked"),
        (True, False, False, None, made_base(data=b"c"), DEFAULT, "keep", "up to date"),
        (False, False, True, made_base(), made_base(data=b"c"), DEFAULT, "scratch", "no warm start asked"),
        (True, False, True, None, None, DEFAULT, "scratch", "no champion"),
        (
            True,
            False,
            True,
            None,
            made_base(data=b"c"),
            shipped("train", width=8),
            "scratch",
            "model-shaping settings changed",
        ),
        (
            True,
            False,
            True,
            made_base(data=b"c"),
            made_base(data=b"c"),
            DEFAULT,
            "keep",
            "already holds the champion",
        ),
        (True, False, True, made_base(), made_base(data=b"c"), DEFAULT, "champion", "fine-tuning"),
    ],
)
def test_choose_base(warm, full, will_run, current, champ, train, choice, why):
    got = base.choose_base(
        warm,
        full,
        will_run,
        current,
        None if champ is None else (b"c", champ),
        base.shaping(train, INFO),
        110,
        FINETUNE,
    )
    assert got[0] == choice and why in got[1]


def test_deployments_warm_start_nightly_and_retrain_full_weekly():
    from flows.cli import deployments

    found = {d.name: d for d in deployments(Path(__file__).resolve().parents[1] / "params.yaml")}
    assert set(found) == {"manual", "retrain-nightly", "retrain-full"}
    # Every parameter shown (test_cli checks the defaults); each schedule sets its own.
    assert found["retrain-nightly"].parameters["warm_start"] is True
    assert found["retrain-nightly"].parameters["full_retrain"] is False
    assert found["retrain-full"].parameters["full_retrain"] is True
    assert found["retrain-full"].parameters["warm_start"] is False
    assert (
        found["manual"].parameters["warm_start"] is False
        and found["manual"].parameters["full_retrain"] is False
    )
    assert [s.schedule.cron for s in found["retrain-full"].schedules] == ["0 4 * * 0"]


# --------------------------------------------------------------------------- end to end


def train_report(ws: Path) -> dict:
    return json.loads((ws / "reports/train.json").read_text())


@pytest.mark.slow
def test_nightly_warm_starts_from_the_champion_and_dvc_rebuilds_it(tmp_path: Path, prefect_server: str):
    """The pipeline as pipeline/retrain-nightly runs it (--warm-start) on a tiny generated collection."""
    import shutil

    import imagegen
    from commands import dvc, py
    from workspace import FAST, assert_up_to_date, history, workspace

    from tasks.core.fileio import sha256_file
    from tasks.history import versioning

    fast = {**FAST, "train": {**FAST["train"], "finetune": {"epochs": 1, "max_growth": 0.5}}}
    ws, source = workspace(tmp_path, **fast)
    # (each run's stage times go to reports/runs.jsonl; the test asserts what is decided, not how fast)

    def nightly() -> tuple[dict, str]:
        run = py(ws, "-m", "flows.pipeline", "--no-push", "--warm-start", api=prefect_server)
        assert run.returncode == 0, run.stderr[-3000:]
        return history(ws)[-1], run.stderr

    def status_clean() -> None:
        status = dvc(ws, "status", api=prefect_server)
        assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout

    first, _ = nightly()  # no champion yet: from scratch
    assert train_report(ws)["warm_start"] is None and first["warm_start"] is None
    assert json.loads((ws / "models/base/base.json").read_text()) is None
    assert (ws / "models/champion/model.keras").exists()  # min_accuracy 0: the first model is promoted
    assert_up_to_date(ws, prefect_server)

    for i in range(6):  # +6 photos: the train split grows by well under max_growth
        (source / ("Cat" if i % 2 else "Dog") / f"new.{i}.jpg").write_bytes(imagegen.jpeg(800_000 + i))
    champion_sha = sha256_file(ws / "models/champion/model.keras")
    second, _ = nightly()
    report = train_report(ws)
    assert report["warm_start"] == {"from_sha256": champion_sha, "count": 1}, report["start_reason"]
    assert second["warm_start"] == report["warm_start"] and second["stages"]["train"].startswith("ran")
    assert report["epochs_run"] == 1  # train.finetune.epochs
    assert sha256_file(ws / "models/base/model.keras") == champion_sha
    status_clean()

    # No new photos: the nightly run retrains nothing, even if the gate just crowned a new champion.
    third, _ = nightly()
    assert third["no_new_data"] and third["stages"]["train"].startswith("skipped")

    # dvc repro rebuilds the warm-started model from dvc.lock, byte for byte, with no cache to help.
    model, lock = (ws / "models/model.keras").read_bytes(), (ws / "dvc.lock").read_text()
    shutil.rmtree(ws / ".pawflow/cache")
    (ws / "models/model.keras").unlink()
    rebuilt = dvc(ws, "repro", "--single-item", "--force", "train", api=prefect_server)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (ws / "models/model.keras").read_bytes() == model
    assert (ws / "dvc.lock").read_text() == lock
    status_clean()

    # A model-shaping change (the width) makes the next nightly model a from-scratch one.
    versioning.set_params(ws / "params.yaml", {"train.width": 12})
    fourth, log = nightly()
    report = train_report(ws)
    assert report["warm_start"] is None and fourth["warm_start"] is None
    assert "models/base: scratch (model-shaping settings changed since the starting model: width)" in log
    assert json.loads((ws / "models/base/base.json").read_text()) is None
    status_clean()
