"""The `pawflow` command: run the pipeline, serve its deployments, predict with the champion, and list,
compare, restore and follow the runs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, overload

import typer
from typer.core import TyperCommand, TyperGroup

from tasks.core.errors import ExitCode, PawflowError, report
from tasks.core.params import load_params
from tasks.core.status import StageRun, ran
from tasks.model.runtime import quiet_native_stderr

if TYPE_CHECKING:
    from tasks.core.params import Params

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

    exit_code = ExitCode.FAILED


def dvc(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with subprocess.Popen([sys.executable, "-m", "dvc", *args], env={**tool_env(), **(env or {})}) as proc:
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


def run_overrides(source: str | None, epochs: int | None, cwd: Path, root: Path) -> dict[str, object]:
    """`pawflow run --source/--epochs` as params.yaml updates. A local source is named relative to the
    project (as params.yaml holds it), wherever the command was typed from; a URL is kept as given."""
    updates: dict[str, object] = {}
    if source is not None:
        if "://" not in source:
            given = Path(source).expanduser()
            source = os.path.relpath(given if given.is_absolute() else cwd / given, root)
        updates["ingest.source"] = source
    if epochs is not None:
        updates["train.epochs"] = epochs
    return updates


def cmd_run(
    force: bool = False,
    push: bool = True,
    source: str | None = None,
    epochs: int | None = None,
    warm_start: bool = False,
    accept_removals: bool = False,
) -> int:
    """dvc repro with a Prefect API for its stage flows, then dvc push to the default remote.

    --source/--epochs are written into params.yaml first (so that dvc.lock and params.yaml agree), as
    the Prefect pipeline does. models/base is then chosen as the pipeline chooses it: when train has to
    run, a from-scratch model, or with --warm-start a fine-tune of the champion (if nothing model-shaping
    changed and the collection did not outgrow train.finetune); so the data stages run first, then base
    is set and recorded, then the rest. accept_removals: ingest may remove what the source lost even
    above ingest.max_removed_fraction (this dvc repro only: flows.ingest reads PAWFLOW_ACCEPT_REMOVALS)."""
    from tasks.check import check_planned
    from tasks.history import versioning

    cwd = Path.cwd()
    root = project_root(cwd)
    os.chdir(root)
    # Bad params or overrides, an unreadable source (a pipe would block DVC) or a busy workspace: refused
    # before DVC or a Prefect server starts (and before Prefect is imported: a second, not five).
    # dvc repro then runs the same checks as its first stage.
    updates = run_overrides(source, epochs, cwd, root)
    # light: pipeline.schedule's cron is checked by `pawflow serve`, which uses it (Prefect parses it).
    params, _, _ = versioning.planned_params(Path("params.yaml"), updates, light=True)
    check_planned(params, root)
    from flows.base import prepare_base
    from flows.lock import run_lock
    from flows.server import prefect_api
    from tasks.history import nightly, runs
    from tasks.ingest import ACCEPT_ENV
    from tasks.scaleout.workers import check_cluster

    with run_lock(root):
        for key, (old, new) in versioning.set_params(Path("params.yaml"), updates).items():
            print(f"params.yaml: {key} {old!r} -> {new!r}")
    started = time.monotonic()
    started_at = nightly.now()
    run_id = runs.run_id(started_at)
    before = versioning.lock_stages(root)
    forced = ["--force"] if force else []
    if not force and not any(
        versioning.stage_status(root, s) for s in (versioning.CHECK_STAGE, *versioning.STAGES)
    ):
        # Nothing for dvc repro to do: skip starting a Prefect server for it.
        print("pawflow run: every stage is up to date (dvc.lock); nothing to do.")
    else:
        # runner.kind dask: a cluster that cannot do the work is refused before DVC removes any output.
        check_cluster(params, root, print)
        with prefect_api(PREFECT_HOME):
            accept = {ACCEPT_ENV: "any"} if accept_removals else None
            dvc("repro", *forced, "shard", env=accept)  # the data that models/base is chosen from
            with run_lock(root):
                choice, why, _ = prepare_base(params, root, warm_start, False, force)
            print(f"models/base: {'the champion' if choice == 'champion' else choice} ({why})")
            # --force re-runs only what follows the data stages now: they were just forced.
            dvc("repro", *(["--force", "--downstream", "base"] if force else []), env=accept)
    pushed = None
    if push and params.pipeline.push and has_remote():
        dvc("push")
        pushed = True
    after = versioning.lock_stages(root)
    stages = {s: StageRun(s, ran=before.get(s) != after.get(s) or force).status for s in versioning.STAGES}
    no_new_data = not any(ran(stages, s) for s in stages)
    with run_lock(root):
        facts = nightly.gather(root, params, run_id, started_at, "pawflow run", stages, no_new_data)
        facts["wall_s"] = round(time.monotonic() - started, 1)
        facts["version"] = nightly.record_version(root, facts)
        versioning.record_run(
            root,
            params,
            "dvc repro",
            stages,
            {
                "seconds": facts["wall_s"],
                "pushed": pushed,
                "run_id": run_id,
                "run": facts,
                "version": facts["version"],
            },
        )
        if facts["version"]:
            print(f"recorded as run {run_id} (pawflow history; pawflow restore {run_id})")
            nightly.retention(root, params)
    print(nightly.closing_lines(root, params))
    return 0


def cmd_data() -> int:
    """Fetch the archive params.yaml `data:` names (resumed, retried, sha256-checked), then point
    ingest.source (and ingest.sha256) at it."""
    from flows.lock import run_lock
    from tasks.history import versioning
    from tasks.photos import getdata

    root = project_root(Path.cwd())
    os.chdir(root)
    params = load_params(Path("params.yaml"))
    d, ingest = params.data, params.ingest
    print(f"pawflow data: {d.url}\n  -> {d.archive} (sha256 {d.sha256[:16]}...)")
    try:
        got = getdata.fetch(d, params.paths.cache / "downloads", ingest)
    except PawflowError as err:  # the download started: a failed run, not bad usage
        raise RunFailed(err.what, err.fix) from None
    print(
        f"pawflow data: {got.path}: {got.bytes:,} bytes, sha256 checked"
        + ("" if got.downloaded else " (already there: nothing downloaded)")
    )
    updates = {"ingest.source": str(d.archive), "ingest.sha256": d.sha256}
    with run_lock(root):
        changed = versioning.set_params(Path("params.yaml"), updates)
    for key, (old, new) in changed.items():
        print(f"params.yaml: {key} {old!r} -> {new!r}")
    print("next: pawflow run   (or make run)")
    return 0


def cmd_predict(targets: list[Path], model: Path | None = None, csv_out: bool = False) -> int:
    """Label photos with the champion (or --model); exit 1 if any file could not be labelled.

    The model's model.json says how: photos are decoded and prepared, and TensorFlow configured, as for
    the model's own training and evaluation, wherever this runs (params.yaml only names the champion)."""
    import csv

    from tasks import predict
    from tasks.core.text import tsv_field
    from tasks.model import runtime
    from tasks.photos.listing import shown

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
        runtime.configure(card.tensorflow)
        import keras  # noqa: F401  (imported here, with its start-up lines silenced)
    predictor = predict.load(model)
    failed = 0
    labels: Counter[str] = Counter()
    # RFC 4180 CSV (the csv module's default dialect, CRLF line ends): with LF line ends the module leaves a
    # carriage return in a name unquoted, which CSV readers take for the end of the row.
    writer = csv.writer(sys.stdout) if csv_out else None
    if writer:
        writer.writerow(["path", "label", "confidence", "error"])
    for row in predict.predict(predictor, iter(files)):
        failed += bool(row.error)
        labels[row.label] += not row.error
        conf = "" if row.confidence is None else f"{row.confidence:.4f}"
        if writer:  # quoted by the csv module; a byte of a name that is not UTF-8 shows as U+FFFD
            writer.writerow([shown(row.path), shown(row.label), conf, shown(row.error)])
        elif row.error:  # one line per file: tabs, newlines and backslashes in names escaped (tsv_field)
            print(f"{tsv_field(row.path)}\terror: {tsv_field(row.error)}")
        else:
            print(f"{tsv_field(row.path)}\t{tsv_field(row.label)}\t{conf}")
        sys.stdout.flush()
    if len(files) > 1 or any(t.is_dir() for t in targets):
        # After the rows, on stderr: stdout stays one row per photo (or one CSV table) for scripts.
        print(summary_line(labels, failed), file=sys.stderr)
    return 1 if failed else 0


def summary_line(labels: Counter[str], errors: int) -> str:
    """'1,000 photos: 853 Cat, 147 Dog, 1 error' (labels by count, then name)."""
    total = sum(labels.values()) + errors
    parts = [f"{n:,} {label}" for label, n in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])) if n]
    if errors:
        parts.append(f"{errors:,} error{'s' if errors != 1 else ''}")
    return f"{total:,} photo{'s' if total != 1 else ''}: {', '.join(parts)}"


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
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    p = load_params(params_path).pipeline
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    # Every parameter with the value a run uses (None: params.yaml's), so that the UI's Parameters tab
    # and its run form show them all, not `{}`.
    defaults = {name: param.default for name, param in inspect.signature(pipeline.fn).parameters.items()}
    manual = pipeline.to_deployment(
        name="manual",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        parameters=defaults,
        description="The whole pipeline on demand: prefect deployment run 'pipeline/manual' "
        "[--param epochs=3] [--param source=...] [--param force=true] [--param accept_removals=true]",
    )
    nightly = pipeline.to_deployment(
        name="retrain-nightly",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        schedule=Cron(p.schedule, timezone=p.timezone),
        parameters={**defaults, "warm_start": True},
        description=f"Re-ingest the source at '{p.schedule}' ({p.timezone}); retrain and gate only when "
        "new photos arrived, else finish fast with 'no new data'. Fine-tunes the champion (warm start) "
        "unless a full retrain is due (docs/design.md, 'Warm start').",
    )
    full = pipeline.to_deployment(
        name="retrain-full",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        schedule=Cron(p.full_schedule, timezone=p.timezone),
        parameters={**defaults, "full_retrain": True},
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
    from flows.service import close_left_runs

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
        # Runs an earlier `pawflow serve` left Running (a restart, a kill) would hold their slots for ever;
        # the workspace's limit is (re)made there.
        for facts in close_left_runs(client, root, CONCURRENCY_LIMIT):
            print(f"pawflow serve: run {facts['id']} marked crashed ({facts['error']})", file=sys.stderr)
    # pause_on_shutdown=False: stopping this process must not leave the nightly schedule paused.
    serve(*deployments(root / "params.yaml"), pause_on_shutdown=False, limit=1)
    return 0


def _value_name(param: Any, ctx: Any) -> str | None:
    """What the help shows after an option: the value's name as a user types it (PATH, N), never a
    Python type (typer shows `<bool>`, `<list[Path]>`); nothing after a flag or an argument's name."""
    if param.param_type_name == "option" and not param.is_flag:
        return param.metavar or param.type.name.upper()
    return None


def _plain_types(params: list[Any]) -> list[Any]:
    for p in params:
        # typer's help (rich and plain) asks each parameter for its type's display string.
        p.display_type_rich = functools.partial(_value_name, p)
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_types(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_types(super().get_params(ctx))


def examples(*lines: str) -> str:
    """A command's help epilog: one example command line per line."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="pawflow",
    cls=_Group,
    help=__doc__,
    no_args_is_help=True,
    # `pawflow --install-completion` adds tab completion of commands and options to the user's shell.
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    epilog=examples(
        "pawflow run                        # the whole pipeline, then dvc push",
        "pawflow data                       # get the photos (Microsoft PetImages) when you have none",
        "pawflow predict photos/            # label photos with the champion",
        "pawflow COMMAND --help             # a command's options and examples",
    ),
)
server_app = typer.Typer(
    cls=_Group,
    help="The background Prefect server that stage processes share (.pawflow/prefect).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")
quarantine_app = typer.Typer(
    cls=_Group,
    help="Batches of new photos the label audit held out of training (docs/collection.md).",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


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
        code = report(f"pawflow {command}", err)
    except (KeyboardInterrupt, Terminated) as err:
        code = stops.finish(err)
    if code:
        raise typer.Exit(code)


@app.command(
    "run",
    cls=_Command,
    epilog=examples(
        "pawflow run                                 # run what is out of date, then dvc push",
        "pawflow run --source ~/photos --epochs 3    # other photos, a short training",
        "pawflow run --warm-start                    # fine-tune the champion on new photos",
        "pawflow run --force --no-push               # re-run every stage, keep it local",
    ),
)
def run_command(
    force: Annotated[
        bool, typer.Option("--force", help="Re-run every stage, even those up to date.")
    ] = False,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="dvc push data and model to the default remote after.")
    ] = True,
    source: Annotated[
        str | None,
        typer.Option(
            metavar="PATH_OR_URL",
            help="The photos: a folder of class folders, a .zip/.tar(.gz) or an http(s) URL of one "
            "(written into params.yaml as ingest.source).",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Training epochs (written into params.yaml as train.epochs).",
            show_default=False,
        ),
    ] = None,
    warm_start: Annotated[
        bool,
        typer.Option(
            "--warm-start",
            help="When train has to run, fine-tune the champion instead of training from scratch (if "
            "nothing model-shaping changed and the collection did not outgrow train.finetune).",
        ),
    ] = False,
    accept_removals: Annotated[
        bool,
        typer.Option(
            "--accept-removals",
            help="Let this run remove what the source no longer holds, even more than "
            "ingest.max_removed_fraction of the collection.",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline (dvc repro, with a Prefect server for its stages), then dvc push."""
    _finish(
        "run",
        cmd_run,
        guard=True,
        kept=RUN_KEPT,
        force=force,
        push=push,
        source=source,
        epochs=epochs,
        warm_start=warm_start,
        accept_removals=accept_removals,
    )


@app.command(
    "data",
    cls=_Command,
    epilog=examples(
        "pawflow data       # download (or resume), check the sha256, set ingest.source",
        "pawflow run        # then the whole pipeline on those photos",
    ),
)
def data_command() -> None:
    """Get the photos (params.yaml data: Microsoft's PetImages) and point ingest.source at them.

    For a workspace without the default source: the archive is downloaded through ingest's own
    download path (a broken download resumes where it stopped), its sha256 checked, and kept in
    data.archive; params.yaml's ingest.source and ingest.sha256 are then set to it.
    """
    _finish("data", cmd_data)


@app.command(
    "serve",
    cls=_Command,
    epilog=examples(
        "prefect server start                                 # in one terminal",
        "export PREFECT_API_URL=http://127.0.0.1:4200/api     # in another, then:",
        "pawflow serve",
        "prefect deployment run 'pipeline/manual' --param epochs=3",
    ),
)
def serve_command() -> None:
    """Serve the deployments pipeline/manual, retrain-nightly and retrain-full until stopped (Ctrl-C).

    Needs a running Prefect server in PREFECT_API_URL (`prefect server start`).
    """
    _finish("serve", cmd_serve)


@app.command(
    "predict",
    cls=_Command,
    epilog=examples(
        "pawflow predict cat.jpg                            # one photo: path, label, confidence",
        "pawflow predict photos/ --csv > labels.csv         # a folder, as CSV (the summary stays on screen)",
        "pawflow predict photos/ --model models/model.keras # the last trained model, not the champion",
    ),
)
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
            metavar="PATH",
            help="A .keras file, or a folder with model.keras + model.json (default: the champion, "
            "models/champion).",
        ),
    ] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV: path,label,confidence,error.")] = False,
) -> None:
    """Label photos with the champion model (or --model); exit 1 if any file could not be labelled.

    One line per file, tab-separated: PATH, then LABEL and CONFIDENCE or "error: WHY". In names, a
    backslash, tab, newline or other control character is written \\\\, \\t, \\n or \\xNN.
    """
    _finish("predict", cmd_predict, targets=targets, model=model, csv_out=csv_out)


@overload
def _workspace(need_params: Literal[True] = True) -> tuple[Path, Params]: ...
@overload
def _workspace(need_params: bool) -> tuple[Path, Params | None]: ...
def _workspace(need_params: bool = True) -> tuple[Path, Params | None]:
    """The project root (made the working folder) and its params; with need_params=False, None when
    params.yaml is not valid (a restored run's file may predate a key: the runs stay listable and
    restorable)."""
    root = project_root(Path.cwd())
    os.chdir(root)
    try:
        return root, load_params(root / "params.yaml")
    except PawflowError as err:
        if need_params:
            raise
        print(f"pawflow: params.yaml not used ({err.what.splitlines()[0]})", file=sys.stderr)
        return root, None


def cmd_history(run: str | None, as_json: bool, html: Path | None, limit: int | None) -> int:
    """The recorded runs, newest first (or one run in detail)."""
    import json

    from tasks.core.fileio import write_bytes
    from tasks.history import nightly, runs, runstore

    root, params = _workspace(need_params=False)
    found = nightly.history(root, params)
    if run is not None:
        ids = [runstore.Version(f["id"], "", "", f) for f in found]
        chosen = runstore.resolve(ids, run).facts
        print(json.dumps(chosen, indent=2, sort_keys=True) if as_json else runs.detail(chosen))
        return 0
    shown = found[:limit] if limit else found
    if html is not None:
        write_bytes(html, runs.history_html(found).encode("utf-8"))
        print(f"wrote {html} ({len(found)} runs)")
    if as_json:
        print(json.dumps(shown, indent=2, sort_keys=True))
    elif html is None:
        print(runs.history_table(shown))
    return 0


def cmd_restore(run: str) -> int:
    """Put back a recorded run's params, dvc.lock, data, shards, models and reports, checked by sha256."""
    from flows.lock import run_lock
    from tasks.history import nightly

    root, _ = _workspace(need_params=False)
    with run_lock(root):
        done = nightly.restore(root, run)
    print(
        f"restored run {done['id']}: {done['git_files']} git-kept file(s) put back, DVC outputs "
        f"{done['outputs']}; sha256 checked: {', '.join(done['verified']) or 'nothing recorded'}"
    )
    return 0


def cmd_diff(first: str, second: str | None) -> int:
    """Params and metrics changes between two recorded runs (DVC's params and metrics diff)."""
    from tasks.history import nightly

    root, params = _workspace(need_params=False)
    a, b = nightly.pair(root, params, first, second)
    print(f"run {a.id} -> run {b.id}")
    for what in ("params", "metrics"):
        out = subprocess.run(
            [sys.executable, "-m", "dvc", what, "diff", a.commit, b.commit, "--md"],
            cwd=root,
            env=tool_env(),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RunFailed(f"`dvc {what} diff` failed: {out.stderr.strip()}")
        print(f"\n{what}:\n{out.stdout.strip() or '(no change)'}")
    print("\n" + nightly.collection_diff(a.facts, b.facts))
    return 0


def cmd_gc(keep: int | None, cloud: bool) -> int:
    """Apply the retention policy now (pipeline.keep_runs unless --keep)."""
    from flows.lock import run_lock
    from tasks.history import runstore

    if keep is None:
        root, params = _workspace()
        keep = params.pipeline.keep_runs
    else:
        root, _ = _workspace(need_params=False)
    with run_lock(root):
        out = runstore.collect_garbage(root, keep, cloud=cloud)
    print(
        f"kept {len(out['kept'])} run(s), dropped {len(out['dropped'])}"
        + (f" ({', '.join(out['dropped'])})" if out["dropped"] else "")
        + f"; removed {out['removed_cache_objects']} object(s) from the DVC cache and "
        f"{out['removed_remote_objects']} from the default remote"
    )
    return 0


def cmd_logs(run: str | None) -> int:
    """Follow a flow run's log lines (its subflows' too) until it ends; exit with its outcome."""
    from flows.logs import follow

    if not os.environ.get("PREFECT_API_URL"):
        from flows.server import background_url, use_api

        with contextlib.suppress(PawflowError):
            os.chdir(project_root(Path.cwd()))
        url = background_url()
        if not url:
            raise PawflowError(
                "no Prefect API to read logs from (PREFECT_API_URL is unset and no background server runs).",
                "Set PREFECT_API_URL to the server `pawflow serve` uses, e.g. "
                "`export PREFECT_API_URL=http://127.0.0.1:4200/api`.",
            )
        use_api(url)
    return follow(run)


def cmd_server(action: str) -> int:
    """`status`: the background server's API URL (or that none runs); `stop`: stop it now."""
    from flows.server import background_url, stop_background

    os.chdir(project_root(Path.cwd()))  # the server's home is .pawflow/prefect in the project
    if action == "stop":
        print("stopped" if stop_background() else "no background Prefect server was running")
    else:
        print(background_url() or "no background Prefect server is running")
    return 0


@app.command(
    "history",
    cls=_Command,
    epilog=examples(
        "pawflow history                      # one line per run, newest first",
        "pawflow history 20261205-030001      # one run in detail: what arrived, metrics, the gate",
        "pawflow history --json --limit 7     # the last week, for a script",
        "pawflow history --html history.html  # the champion's accuracy over the runs",
    ),
)
def history_command(
    run: Annotated[
        str | None,
        typer.Argument(metavar="[RUN]", help="A run id (or a unique start of one): that run in detail."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a list of runs, or the one run).")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write a self-contained page charting accuracy over the runs."),
    ] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help="Only the newest N runs.")] = None,
) -> None:
    """One line per run, newest first: photos, what arrived, training, accuracy, the gate, the champion."""
    _finish("history", cmd_history, run=run, as_json=as_json, html=html, limit=limit)


@app.command(
    "restore",
    cls=_Command,
    epilog=examples("pawflow restore latest", "pawflow restore 20261205-030001"),
)
def restore_command(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run id from `pawflow history`.")],
) -> None:
    """Put back a run's params, dvc.lock, data, shards, models and reports, byte for byte."""
    _finish("restore", cmd_restore, run=run)


@app.command(
    "diff",
    cls=_Command,
    epilog=examples(
        "pawflow diff latest            # the newest run against the one before it",
        "pawflow diff 20261201 latest   # two runs (a unique start of an id is enough)",
    ),
)
def diff_command(
    first: Annotated[str, typer.Argument(metavar="RUN", help="A run id.")],
    second: Annotated[
        str | None, typer.Argument(metavar="[RUN2]", help="Another run id (default: the run before RUN).")
    ] = None,
) -> None:
    """Params and metrics changes between two recorded runs."""
    _finish("diff", cmd_diff, first=first, second=second)


@app.command(
    "gc",
    cls=_Command,
    epilog=examples("pawflow gc                # pipeline.keep_runs", "pawflow gc --keep 10 --no-cloud"),
)
def gc_command(
    keep: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="Keep the newest N runs (default: pipeline.keep_runs)."),
    ] = None,
    cloud: Annotated[
        bool, typer.Option("--cloud/--no-cloud", help="Also remove unused objects from the default remote.")
    ] = True,
) -> None:
    """Drop old runs (all but the newest pipeline.keep_runs and every champion) and their unused data."""
    _finish("gc", cmd_gc, keep=keep, cloud=cloud)


@app.command(
    "logs",
    cls=_Command,
    epilog=examples(
        "pawflow logs                       # follow the latest run until it ends",
        "pawflow logs nightly-2026-12-05-0300",
    ),
)
def logs_command(
    run: Annotated[
        str | None, typer.Argument(metavar="[RUN]", help="A flow run id or name (default: the latest run).")
    ] = None,
) -> None:
    """Follow a flow run's log lines live (subflows included); exit with its outcome."""
    _finish("logs", cmd_logs, run=run)


@server_app.command("status", cls=_Command)
def server_status() -> None:
    """Print the background server's API URL, or that none runs."""
    _finish("server status", cmd_server, action="status")


@server_app.command("stop", cls=_Command)
def server_stop() -> None:
    """Stop the background server now (it also stops itself when idle)."""
    _finish("server stop", cmd_server, action="stop")


def cmd_quarantine_list() -> int:
    """Print each batch held in quarantine: its id, photos, why, and a few of its photos."""
    from tasks.photos import quarantine

    root = project_root(Path.cwd())
    params = load_params(root / "params.yaml")
    held = quarantine.read(root / params.paths.interim).held_batches()
    if not held:
        print("no batch is held in quarantine")
        return 0
    for b in held:
        shown = ", ".join(p.path for p in b.photos[:3]) + (", ..." if len(b.photos) > 3 else "")
        print(f"{b.id}\t{len(b.photos)} photos\t{b.reason}\n\te.g. {shown}")
    page = params.paths.reports / "data.html"
    print(f"their thumbnails: {page}#quarantine; to release one: pawflow quarantine release ID")
    return 0


def cmd_quarantine_release(ids: list[str], everything: bool) -> int:
    """Mark batches released (the next run splits and trains on their photos) and record it in dvc.lock."""
    from flows.lock import run_lock
    from tasks.history import versioning
    from tasks.photos import quarantine

    if not ids and not everything:
        raise PawflowError("name the batches to release (as `pawflow quarantine list` shows them), or --all.")
    root = project_root(Path.cwd())
    params = load_params(root / "params.yaml")
    interim = root / params.paths.interim
    with run_lock(root):  # not while a run reads the quarantine
        q, released = quarantine.release(quarantine.read(interim), ids, everything)
        if not released:
            print("no batch is held in quarantine")
            return 0
        quarantine.write(interim, q)
        if (root / ".dvc").is_dir() and (root / "dvc.lock").exists():
            versioning.commit_stage(root, "audit")  # dvc.lock records it: dedup is now out of date
    for b in released:
        print(f"released batch {b.id} ({len(b.photos)} photos)")
    print("the next run (pawflow run, dvc repro or a deployment) splits and trains on them")
    return 0


@quarantine_app.command(
    "list",
    cls=_Command,
    epilog=examples("pawflow quarantine list   # each held batch, why, a few of its photos"),
)
def quarantine_list() -> None:
    """List the batches held in quarantine, with why."""
    _finish("quarantine list", cmd_quarantine_list)


@quarantine_app.command(
    "release",
    cls=_Command,
    epilog=examples(
        "pawflow quarantine release 3f2a      # one batch, by a unique prefix of its id",
        "pawflow quarantine release --all     # every held batch",
    ),
)
def quarantine_release(
    ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="BATCH...", help="Batch ids (or unique prefixes), as `list` shows them."),
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Release every held batch.")] = False,
) -> None:
    """Release batches: the next run splits and trains on their photos (fix or exclude bad ones first)."""
    _finish("quarantine release", cmd_quarantine_release, ids=ids or [], everything=everything)


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
