"""The `pawflow` command: run the pipeline, serve its deployments, predict with the champion."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tasks.errors import PawflowError
from tasks.params import load_params
from tasks.reports import GATE, METRICS

if TYPE_CHECKING:
    from tasks.params import Params

PREFECT_HOME = Path(".pawflow/prefect")
# True when the command runs as this process's own command line (main() without argv), not in-process.
_OWNER = False


def tool_env() -> dict[str, str]:
    """Environment for dvc and the stage commands: this interpreter's bin first, no telemetry."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


class RunFailed(PawflowError):
    """The run started and failed (exit 1); bad params or usage are refused before it starts (exit 2)."""

    exit_code = 1


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    with subprocess.Popen([sys.executable, "-m", "dvc", *args], env=tool_env()) as proc:
        try:
            proc.wait()
        except BaseException as stop:  # Ctrl-C or SIGTERM (flows.stops): dvc and its stage end first
            stop_dvc(proc, terminate=not isinstance(stop, KeyboardInterrupt))
            raise
    if check and proc.returncode != 0:
        # The stage's own message above says what to do; finished stages are recorded in dvc.lock.
        raise RunFailed(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}); its message is above.")
    return proc


def stop_dvc(proc: subprocess.Popen, terminate: bool) -> None:
    """A `dvc` command and the stage it runs end before this command does: nothing left running, the
    workspace free. Ctrl-C at a terminal reached all of them already: they are given the time to end as
    interrupted runs do. SIGTERM: the stage gets it too (it reports and exits 143), and dvc a Ctrl-C
    (SIGINT), which it answers by waiting for its stage and recording nothing half-done, where SIGTERM
    would kill it at once, perhaps while it writes dvc.lock. Whatever is left after STOP_GRACE_S (and
    the stage's own grace to end its children) is killed."""
    import psutil

    from flows.stops import CHILD_GRACE_S, STOP_GRACE_S

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:  # dvc ended already
        return
    if terminate:
        for child in tree[1:]:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        with contextlib.suppress(psutil.Error):
            tree[0].send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(tree, timeout=STOP_GRACE_S + CHILD_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()


def has_remote() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], env=tool_env(), capture_output=True, text=True
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def cmd_run(force: bool = False, push: bool = True) -> int:
    """dvc repro with a Prefect API for its stage flows, then dvc push to the default remote."""
    from flows.common import run_lock
    from flows.server import prefect_api
    from tasks import versioning
    from tasks.preflight import preflight

    root = project_root(Path.cwd())
    os.chdir(root)
    # Bad params, an unreadable source (a pipe would block DVC) or a busy workspace: refused before
    # DVC or a Prefect server starts. dvc repro then runs the same checks as its first stage.
    params = preflight(Path("params.yaml"))
    with run_lock(root):
        pass
    started = time.monotonic()
    before = versioning.lock_stages(root)
    stages = (versioning.CHECK_STAGE, *versioning.STAGES)
    if not force and not any(versioning.stage_status(root, s) for s in stages):
        # Nothing for dvc repro to do: skip starting a Prefect server for it.
        print("pawflow run: every stage is up to date (dvc.lock); nothing to do.")
    else:
        with prefect_api(PREFECT_HOME):
            dvc("repro", *(["--force"] if force else []))
    pushed = None
    if push and params.pipeline.push and has_remote():
        dvc("push")
        pushed = True
    after = versioning.lock_stages(root)
    stages = {
        s: "ran" if before.get(s) != after.get(s) or force else "skipped (up to date)"
        for s in versioning.STAGES
    }
    versioning.record_run(
        root, params, "dvc repro", stages, {"seconds": round(time.monotonic() - started, 1), "pushed": pushed}
    )
    print(closing_lines(root, params))
    return 0


def closing_lines(root: Path, params: Params) -> str:
    """What a finished run leaves the user with: test accuracy and the gate's decision, the report's path,
    and the command to try the model (from reports/metrics.json and gate.json; what is missing is said)."""
    reports = root / params.paths.reports
    metrics, gate = METRICS.read_if_written(reports), GATE.read_if_written(reports)
    if metrics:
        line = f"test accuracy {metrics['accuracy']:.4f} on {metrics['examples']} photos"
        line += f"; gate: {gate['decision']} ({gate['reason']})" if gate else "; no gate decision yet"
    else:
        line = "no test accuracy yet (the evaluate stage has not run)"
    html = reports / "evaluation.html"
    report = f"report: {html}" if html.exists() else f"report: not written yet ({html})"
    champion = params.paths.models / "champion"
    if (root / champion / "model.keras").exists():
        tryit = f"try it: pawflow predict PHOTO_OR_FOLDER   (default model: {champion})"
    else:
        model = params.paths.models / "model.keras"
        tryit = f"try it: pawflow predict PHOTO_OR_FOLDER --model {model}   (no champion yet)"
    return "\n".join((line, report, tryit))


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what TensorFlow's C++ side writes to fd 2 while it is imported: absl's "All log messages
    before absl::InitializeLog()" and the oneDNN notice come before TF_CPP_MIN_LOG_LEVEL is read, so
    only redirecting the file descriptor hides them. If the import fails, what it wrote is shown."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def cmd_predict(targets: list[Path], model: Path | None = None, csv_out: bool = False) -> int:
    """Label photos with the champion (or --model); exit 1 if any file could not be labelled.

    The model's model.json says how: photos are decoded and prepared, and TensorFlow configured, as for
    the model's own training and evaluation, wherever this runs (params.yaml only names the champion)."""
    import csv

    from tasks import predict, runtime

    params = load_params(Path("params.yaml")) if Path("params.yaml").exists() else None
    missing = [str(t) for t in targets if not t.exists() and not t.is_symlink()]
    if missing:
        raise PawflowError(
            f"{', '.join(missing)}: no such file or folder.", "Name photos, or folders of photos."
        )
    champion = params.paths.models / "champion" if params else Path("models/champion")
    if model is not None and not model.exists():
        # "Train one first" is advice for the default champion only; a given path is simply wrong.
        raise PawflowError(
            f"--model {model}: the path does not exist.",
            "Pass the path of a .keras file or of a folder holding model.keras + model.json.",
        )
    model = model or champion
    _, card = predict.model_files(model)  # the model and the photos are checked before TensorFlow starts
    files = predict.list_files(targets)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read at import: no C++ info/warning lines
    with quiet_native_stderr():
        runtime.configure(predict.tensorflow_settings(card))
        import keras  # noqa: F401  (imported here, with its start-up lines silenced)
    predictor = predict.load(model)
    failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if csv_out else None
    if writer:
        writer.writerow(["path", "label", "confidence", "error"])
    for row in predict.predict(predictor, iter(files)):
        failed += bool(row.error)
        conf = "" if row.confidence is None else f"{row.confidence:.4f}"
        if writer:
            writer.writerow([row.path, row.label, conf, row.error])
        elif row.error:
            print(f"{row.path}\terror: {row.error}")
        else:
            print(f"{row.path}\t{row.label}\t{conf}")
        sys.stdout.flush()
    return 1 if failed else 0


def project_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").exists() and (folder / "params.yaml").exists():
            return folder
    raise PawflowError(
        f"{start} is not inside a pawflow project (no dvc.yaml + params.yaml found).",
        "Run this from the project folder.",
    )


def deployments(params_path: Path) -> list:
    """pipeline/manual (run on demand), pipeline/retrain-nightly and pipeline/retrain-full (crons from
    params.yaml)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    p = load_params(params_path).pipeline
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE")
    manual = pipeline.to_deployment(
        name="manual",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        description="The whole pipeline on demand: prefect deployment run 'pipeline/manual' "
        "[--param epochs=3] [--param source=...] [--param force=true]",
    )
    nightly = pipeline.to_deployment(
        name="retrain-nightly",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        schedule=Cron(p.schedule, timezone=p.timezone),
        parameters={"warm_start": True},
        description=f"Re-ingest the source at '{p.schedule}' ({p.timezone}); retrain and gate only when "
        "new photos arrived, else finish fast with 'no new data'. Fine-tunes the champion (warm start) "
        "unless a full retrain is due (README 'Warm-start training').",
    )
    full = pipeline.to_deployment(
        name="retrain-full",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        schedule=Cron(p.full_schedule, timezone=p.timezone),
        parameters={"full_retrain": True},
        description=f"At '{p.full_schedule}' ({p.timezone}): the whole pipeline with a model trained from "
        "scratch, even when no photos arrived (the nightly runs warm-start from the champion).",
    )
    return [manual, nightly, full]


def cmd_serve() -> int:
    """Serve pipeline/manual, retrain-nightly and retrain-full against PREFECT_API_URL until stopped."""
    from prefect import serve
    from prefect.client.orchestration import get_client

    from flows.pipeline import CONCURRENCY_LIMIT
    from flows.server import healthy

    api = os.environ.get("PREFECT_API_URL")
    if not api or not healthy(api):
        raise PawflowError(
            f"pawflow serve needs a running Prefect server (PREFECT_API_URL={api or 'unset'}).",
            "In another terminal: `prefect server start`; then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run `pawflow serve` again.",
        )
    root = project_root(Path.cwd())
    os.chdir(root)  # flow runs start in the serving process's folder: the workspace
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(CONCURRENCY_LIMIT, limit=1)
    # pause_on_shutdown=False: stopping this process must not leave the nightly schedule paused.
    serve(*deployments(root / "params.yaml"), pause_on_shutdown=False, limit=1)
    return 0


app = typer.Typer(
    name="pawflow",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
server_app = typer.Typer(
    help="The background Prefect server that stage processes share (.pawflow/prefect).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def package_version() -> str:
    try:
        return version("pawflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        print(f"pawflow {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """A folder, archive or URL of labelled photos in; a versioned, evaluated image classifier out."""


RUN_KEPT = (
    "Finished stages are recorded in dvc.lock and nothing half-written carries a final name; run it again "
    "to finish."
)


def _finish(command: str, fn, guard: bool = False, kept: str = "Run it again to finish.", **kwargs) -> None:
    """Run a command: one message and its exit code (2 bad usage or params, 1 a failed run, 130 Ctrl-C;
    with guard, 143 for SIGTERM too, and the process ends within seconds of a stop: flows.stops). kept:
    what a stopped command leaves, as its message says."""
    from flows.stops import StopGuard, Terminated, message

    stops = StopGuard(
        lambda stop: print(message(f"pawflow {command}", stop, kept), file=sys.stderr, flush=True),
        owner=_OWNER,
    )
    try:
        with stops if guard else contextlib.nullcontext():
            code = fn(**kwargs)
    except PawflowError as err:
        print(f"\npawflow {command}: {err}", file=sys.stderr)
        code = getattr(err, "exit_code", 2)
    except (KeyboardInterrupt, Terminated) as err:
        code = stops.finish(err)
    if code:
        raise typer.Exit(code)


@app.command("run")
def run_command(
    force: Annotated[
        bool, typer.Option("--force", help="Re-run every stage, even those up to date.")
    ] = False,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="dvc push data and model to the default remote after.")
    ] = True,
) -> None:
    """Run the whole pipeline (dvc repro, with a Prefect server for its stages), then dvc push."""
    _finish("run", cmd_run, guard=True, kept=RUN_KEPT, force=force, push=push)


@app.command("serve")
def serve_command() -> None:
    """Serve the deployments pipeline/manual, retrain-nightly and retrain-full until stopped (Ctrl-C).

    Needs a running Prefect server in PREFECT_API_URL (`prefect server start`).
    """
    _finish("serve", cmd_serve)


@app.command("predict")
def predict_command(
    targets: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE_OR_DIR...", help="Photos, or folders searched recursively.", show_default=False
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="A .keras file, or a folder with model.keras + model.json. [default: models/champion]"
        ),
    ] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV: path,label,confidence,error.")] = False,
) -> None:
    """Label photos with the champion model (or --model); exit 1 if any file could not be labelled."""
    _finish("predict", cmd_predict, targets=targets, model=model, csv_out=csv_out)


def cmd_server(action: str) -> int:
    """`status`: the background server's API URL (or that none runs); `stop`: stop it now."""
    from flows.server import background_url, stop_background

    os.chdir(project_root(Path.cwd()))  # the server's home is .pawflow/prefect in the project
    if action == "stop":
        print("stopped" if stop_background() else "no background Prefect server was running")
    else:
        print(background_url() or "no background Prefect server is running")
    return 0


@server_app.command("status")
def server_status() -> None:
    """Print the background server's API URL, or that none runs."""
    _finish("server status", cmd_server, action="status")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the background server now (it also stops itself when idle)."""
    _finish("server stop", cmd_server, action="stop")


def main(argv: list[str] | None = None) -> int:
    """The console script. typer parses and reports bad usage (the subcommand's usage, the error and a
    "Did you mean ...?", exit 2); the commands report their own errors once (see _finish)."""
    global _OWNER
    _OWNER = argv is None  # the process's own command line: a stopped run ends the process (flows.stops)
    try:
        app(args=sys.argv[1:] if argv is None else list(argv), prog_name="pawflow", standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
