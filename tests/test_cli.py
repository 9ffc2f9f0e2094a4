"""The `pawflow` command: version, help, usage errors with suggestions, one message per error with its
exit code (2 usage/params, 1 failed run, 130 Ctrl-C), predict's paths checked before TensorFlow, and the
three lines a finished run ends with."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import imagegen
import pytest
from conftest import workspace_of

from flows import cli
from flows.cli import RunFailed, main, run_overrides, summary_line
from flows.stops import Terminated
from tasks.core.errors import PawflowError
from tasks.core.params import Params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # typer's error box wraps at the terminal width


def test_version_comes_from_the_package_metadata(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pawflow {version('pawflow')}"


def test_the_changelogs_top_entry_is_the_version_pawflow_prints():
    """CHANGELOG.md (Keep a Changelog), pyproject.toml and `pawflow --version` name the same version."""
    import re
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version("pawflow") == declared, "pyproject.toml's version changed: reinstall (make install)"
    entries = re.findall(r"^## \[([^\]]+)\] - (.+)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert entries, "CHANGELOG.md has no '## [VERSION] - DATE' entry"
    assert entries[0][0] == declared, f"CHANGELOG.md's top entry is {entries[0][0]}, pawflow is {declared}"
    for number, date in entries:
        assert re.fullmatch(r"\d+\.\d+\.\d+", number), number
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) or (date == "Unreleased" and number == declared), date


@pytest.mark.parametrize(
    "command",
    [["run"], ["serve"], ["predict"], ["server"], ["server", "status"]]
    + [[c] for c in ("history", "restore", "diff", "gc", "logs")]
    + [["quarantine"], ["quarantine", "list"], ["quarantine", "release"]],
)
def test_every_command_has_help(command: list[str], capsys):
    assert main([*command, "-h"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: pawflow {' '.join(command)}" in out
    assert "<bool>" not in out and "<list" not in out  # the project's plain value names (_Command)


def test_examples_show_real_run_ids(capsys):
    """The ids in history's and restore's examples are ids tasks.history.runs.run_id makes."""
    from datetime import UTC, datetime

    from tasks.history.runs import run_id

    made = run_id(datetime(2026, 12, 5, 3, 0, 1, tzinfo=UTC))
    for command in ("history", "restore"):
        main([command, "--help"])
        assert f"pawflow {command} {made}" in capsys.readouterr().out


def test_every_option_has_help(capsys):
    main(["run", "--help"])
    run_help = capsys.readouterr().out
    assert "Re-run every stage" in run_help and "dvc push data and model" in run_help
    main(["predict", "--help"])
    predict_help = capsys.readouterr().out
    assert "model.keras + model.json" in predict_help and "path,label,confidence,error" in predict_help


def test_a_typod_option_shows_the_subcommands_usage_and_a_suggestion(capsys):
    assert main(["run", "--forse"]) == 2
    err = capsys.readouterr().err
    assert "Usage: pawflow run [OPTIONS]" in err
    assert "No such option: --forse" in err and "--force" in err.split("--forse", 1)[1]


def test_a_typod_command_gets_a_did_you_mean(capsys):
    assert main(["predcit", "x.jpg"]) == 2
    assert "Did you mean 'predict'?" in capsys.readouterr().err


def test_bad_params_exit_2_with_one_message(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("ingest:\n  sourse: photos\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--no-push"]) == 2
    err = capsys.readouterr().err
    assert err.count("pawflow run:") == 1 and "sourse" in err


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (RunFailed("`dvc repro` failed (exit 1); its message is above."), 1, "`dvc repro` failed"),
        (PawflowError("bad", "fix it"), 2, "What to do: fix it"),
        (KeyboardInterrupt(), 130, "pawflow run: interrupted. Finished stages are recorded"),
        (Terminated(), 143, "pawflow run: terminated (SIGTERM). Finished stages are recorded"),
    ],
)
def test_exit_code_per_kind_of_error(raised: BaseException, code: int, message: str, monkeypatch, capsys):
    seen = {}

    def fake_run(force: bool, push: bool, **overrides: object) -> int:
        seen.update(force=force, push=push, **overrides)
        raise raised

    monkeypatch.setattr(cli, "cmd_run", fake_run)
    assert main(["run", "--force", "--no-push", "--accept-removals"]) == code
    assert seen["force"] is True and seen["push"] is False and seen["accept_removals"] is True
    err = capsys.readouterr().err
    assert message in err and err.count("pawflow run:") == 1


def test_a_missing_model_path_is_not_train_one_first(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert main(["predict", "a.jpg", "--model", "/nope/model.keras"]) == 2
    err = capsys.readouterr().err
    assert "--model /nope/model.keras: the path does not exist" in err and "make run" not in err


def test_the_default_champion_missing_says_train_one_first(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert main(["predict", "a.jpg"]) == 2
    assert "Train one first (`make run`)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["predict", "/nope/cat.jpg"], ["predict", "{tmp}", "--model", "/nope/model.keras"]],
)
def test_bad_predict_paths_are_refused_without_importing_tensorflow(argv: list[str], tmp_path: Path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (
        "import sys\nfrom flows.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\nsys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
    assert "does not exist" in proc.stderr or "no such file or folder" in proc.stderr


def test_tensorflow_start_up_lines_are_silenced_but_an_import_error_is_shown(capfd):
    import os

    with cli.quiet_native_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError), cli.quiet_native_stderr():
        os.write(2, b"native detail\n")
        raise ImportError("no tensorflow")
    assert "native detail" in capfd.readouterr().err


def test_server_status_outside_a_project_is_one_message(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["server", "status"]) == 2
    assert "not inside a pawflow project" in capsys.readouterr().err


def test_server_status_in_a_project_without_a_server(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["server", "status"]) == 0
    assert capsys.readouterr().out == "no background Prefect server is running\n"


@pytest.mark.slow
def test_predict_shows_no_tensorflow_start_up_lines(tmp_path: Path):
    import imagegen
    from test_predict import SMALL_CARD, write_model

    model = write_model(tmp_path / "model", SMALL_CARD)
    (tmp_path / "a.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no TF_CPP_* set
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "predict", "a.jpg", "--model", str(model)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("a.jpg\t")
    assert "absl" not in proc.stderr and "oneDNN" not in proc.stderr and "I0000" not in proc.stderr, (
        proc.stderr
    )


def test_predict_good_corrupt_and_directory(trained: Params, tmp_path: Path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(imagegen.jpeg(1, (120, 90)))
    (photos / "nested" / "b.png").write_bytes(imagegen.encode(imagegen.photo(2, (80, 80)), "PNG"))
    (photos / "nested" / "broken.jpg").write_bytes(imagegen.truncated_jpeg(3))
    (photos / "bomb.png").write_bytes(imagegen.png_header_only(30_000, 30_000))
    monkeypatch.chdir(workspace_of(trained))
    code = main(
        [
            "predict",
            str(photos),
            str(photos / "a.jpg"),
            "--csv",
            "--model",
            str(workspace_of(trained) / "models/champion"),
        ]
    )
    out = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert code == 1  # some files could not be labelled
    # The summary closes the run, on stderr: stdout stays one CSV table.
    labels = Counter(r["label"] for r in rows if not r["error"])
    assert out.err.strip().splitlines()[-1] == summary_line(labels, 2)
    assert summary_line(labels, 2).startswith("5 photos: ") and summary_line(labels, 2).endswith(", 2 errors")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "bomb.png", "b.png", "broken.jpg", "a.jpg"]
    for name in ("a.jpg", "b.png"):
        assert by_name[name]["label"] in {"Cat", "Dog"} and 0.5 <= float(by_name[name]["confidence"]) <= 1
        assert by_name[name]["error"] == ""
    assert by_name["broken.jpg"]["label"] == "" and by_name["broken.jpg"]["error"].startswith("truncated")
    assert by_name["bomb.png"]["error"].startswith("decompression_bomb")


def test_predict_without_a_model_is_a_clear_error(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "none")]) == 2
    assert "--model " + str(tmp_path / "none") + ": the path does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["run"], ["serve"], ["predict"], ["server", "status"]])
def test_help_names_values_not_python_types_and_shows_examples(command: list[str], capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    # typer's own display of Python types: <bool>, <path>, <list[Path]>, <int>, <str>
    assert not re.search(r"<(bool|path|int|str|list\[\w+\])>", out), out
    if command != ["server", "status"]:
        assert "Examples:" in out and "pawflow" in out.split("Examples:", 1)[1]


def test_run_and_predict_name_their_values(capsys):
    main(["run", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"--source\s+│?\s*PATH_OR_URL", out) or "--source PATH_OR_URL" in out
    assert "--epochs" in out and " N " in out and "--warm-start" in out
    main(["predict", "--help"])
    assert "PATH" in capsys.readouterr().out


def test_shell_completion_is_on():
    env = {**os.environ, "_PAWFLOW_COMPLETE": "complete_bash", "COMP_WORDS": "pawflow pre", "COMP_CWORD": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.stdout.split() == ["predict"], (proc.stdout, proc.stderr)


def test_run_overrides_name_a_local_source_from_the_project(tmp_path: Path):
    root, sub = tmp_path / "project", tmp_path / "project" / "sub"
    sub.mkdir(parents=True)
    assert run_overrides("../../photos", 3, sub, root) == {"ingest.source": "../photos", "train.epochs": 3}
    assert run_overrides(str(tmp_path / "p.zip"), None, sub, root) == {"ingest.source": "../p.zip"}
    assert run_overrides("https://h/p.zip", None, sub, root) == {"ingest.source": "https://h/p.zip"}
    assert run_overrides(None, None, sub, root) == {}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--epochs", "0"], "train.epochs: should be greater than 0 (got 0)"),
        (["--source", "no-such-folder"], "ingest.source 'no-such-folder' does not exist"),
    ],
)
def test_run_refuses_bad_overrides_before_anything_changes(
    argv: list[str], says: str, tmp_path: Path, monkeypatch, capsys
):
    ws = tmp_path / "ws"
    (ws / "photos" / "Cat").mkdir(parents=True)
    (ws / "dvc.yaml").write_text("stages: {}\n")
    params = (ROOT / "params.yaml").read_text().replace("../shared/datasets/petimages-sample", "photos")
    (ws / "params.yaml").write_text(params)
    monkeypatch.chdir(ws)
    assert main(["run", "--no-push", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("pawflow run:") == 1 and "Traceback" not in err
    assert (ws / "params.yaml").read_text() == params


def test_summary_line_counts_labels_then_errors():
    assert summary_line(Counter({"Dog": 147, "Cat": 853}), 1) == "1,001 photos: 853 Cat, 147 Dog, 1 error"
    assert summary_line(Counter({"Cat": 1}), 0) == "1 photo: 1 Cat"
    assert summary_line(Counter(), 2) == "2 photos: 2 errors"


def test_every_deployment_shows_every_parameter_with_its_value():
    from flows.pipeline import pipeline

    manual, nightly, full = cli.deployments(ROOT / "params.yaml")
    every = set(pipeline.parameters.properties)
    assert set(manual.parameters) == every and manual.parameters["epochs"] is None  # None: params.yaml's
    assert manual.parameters["warm_start"] is False and manual.parameters["full_retrain"] is False
    assert nightly.parameters == {**manual.parameters, "warm_start": True}
    assert full.parameters == {**manual.parameters, "full_retrain": True}


FAKE_DVC = """
import signal, subprocess, sys, time
# Like `dvc repro`: a stage command as child; Ctrl-C is ignored while the stage runs (DVC does so), so
# dvc waits for its stage, then says how it ended.
stage = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("dvc: stage ended with", stage.wait(), flush=True)
"""
FAKE_STAGE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
print("READY", flush=True)
time.sleep(120)
"""


def test_a_terminated_run_stops_dvc_and_its_stage_before_it_ends(tmp_path: Path):
    """SIGTERM to `pawflow run`: the stage gets SIGTERM (it reports, exit 143), DVC a Ctrl-C, so it waits
    for its stage instead of dying mid-write; both have ended when stop_dvc returns."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", FAKE_DVC, FAKE_STAGE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    (stage,) = psutil.Process(proc.pid).children()
    cli.stop_dvc(proc, terminate=True)
    assert proc.returncode == 0 and not stage.is_running()
    assert proc.stdout.read().strip() == "dvc: stage ended with 143"
