"""flows/pipeline.py without a flow run: its concurrency limit and its command line."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import pytest
from prefect.states import Completed, Crashed, Failed

from flows.pipeline import main, stage_run, workspace_limit
from tasks.core.errors import PawflowError
from tasks.core.status import SKIPPED, StageRun


def test_a_local_run_takes_no_global_concurrency_limit():
    # Outside a deployment the limit `pawflow serve` creates does not exist: taking it would warn.
    assert isinstance(workspace_limit(), contextlib.nullcontext)


def test_every_option_of_python_m_flows_pipeline_has_help(monkeypatch: pytest.MonkeyPatch):
    seen: list[argparse.ArgumentParser] = []

    def stop(parser, args=None, namespace=None):
        seen.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        main(["-h"])
    (parser,) = seen
    options = [a for a in parser._actions if a.option_strings]
    assert {"--source", "--epochs", "--force", "--no-push", "--until", "--warm-start", "--full-retrain"} <= {
        o for a in options for o in a.option_strings
    }
    assert [a.option_strings for a in options if not (a.help or "").strip()] == []
    assert parser.description and "ingest -> clean" in parser.description


def snapshot(ws: Path) -> dict[str, bytes]:
    return {
        p.relative_to(ws).as_posix(): p.read_bytes()
        for p in sorted(ws.rglob("*"))
        if p.is_file() and ".git/" not in p.as_posix() and "__pycache__" not in p.parts
    }


def test_a_source_inside_what_pawflow_manages_is_refused_by_every_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, prefect_server: str
):
    """`python -m flows.pipeline --source data --until ingest` exited 0 and ingested data/ itself as the
    classes raw, interim and processed. Every entry point now refuses it in one message, exit 2, nothing
    written."""
    from conftest import make_workspace
    from imagegen import make_dataset

    from flows import check, cli, ingest, pipeline
    from flows.common import stage_main
    from tasks.check import preflight

    ws = make_workspace(tmp_path / "ws", make_dataset(tmp_path / "source", per_class=5))
    make_dataset(ws / "data" / "raw", per_class=5)  # as after a first ingest
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    said = "ingest.source: 'data' overlaps what pawflow and DVC manage in the workspace: data/raw (paths.raw)"

    assert main(["--source", "data", "--until", "ingest"]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("What to do") == 1 and "Traceback" not in err
    assert snapshot(ws) == before

    # The deployments' `source` parameter: the same check, in the flow run, before any lock or write.
    state = pipeline.pipeline(source="data", until="ingest", return_state=True)
    assert state.is_failed() and said.split(": ", 1)[1] in state.message
    assert snapshot(ws) == before

    # With ingest.source: data in params.yaml: the check stage, `python -m flows.ingest`, `pawflow run`.
    (ws / "params.yaml").write_text(
        (ws / "params.yaml").read_text().replace(yaml_source(ws), "  source: data\n")
    )
    before = snapshot(ws)
    assert check.main(Path("params.yaml")) == 2
    assert stage_main("ingest", ingest.ingest_flow, argv=[], load=preflight) == 2
    assert cli.main(["run"]) == 2
    errors = capsys.readouterr().err
    assert errors.count(said) == 3 and errors.count("What to do") == 3 and "Traceback" not in errors
    assert snapshot(ws) == before


def yaml_source(ws: Path) -> str:
    return next(
        line + "\n" for line in (ws / "params.yaml").read_text().splitlines() if line.startswith("  source: ")
    )


def test_a_stage_tasks_outcome_is_a_stage_run_whatever_its_state():
    """The pipeline reads each stage task's final state as a StageRun: the one it returned, a failed
    stage's with its error (reported once, by the pipeline), and one made of the message of a state
    that carries none (a crash)."""
    done = StageRun("clean", ran=True, new_outputs=True, seconds=1.5)
    assert stage_run(Completed(data=done), "clean") == done and done.status == "ran (1.5s)"
    skipped = stage_run(Completed(name="Skipped", data=StageRun("dedup", ran=False)), "dedup")
    assert (skipped.ran, skipped.status, skipped.error) == (False, SKIPPED, None)
    err = PawflowError("ingest.source is empty", "Put photos in it.")
    failed = stage_run(
        Failed(message="stage ingest failed", data=StageRun("ingest", ran=True, error=err)), "ingest"
    )
    assert failed.error is err and repr(failed) == "StageRun(ingest: failed)"  # Prefect logs no error text
    crashed = stage_run(Crashed(message="the process was killed"), "train")
    assert crashed.error is not None and crashed.error.what == "the process was killed"
