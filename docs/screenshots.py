"""Regenerate the docs' pictures of a run in progress, from a real run (`make screenshots`, ~2-4 min).

Runs the Prefect pipeline (`python -m flows.pipeline --no-push`) in a throw-away copy of the project on
generated photos (tests/imagegen.py) with a small model, against a Prefect server of its own, then takes
with headless Chromium (Debian's `chromium`, as the tests use):

- docs/training-progress.png: the Prefect UI's page of the train flow run: its logs, one line per epoch;
- docs/training-terminal.png: what the terminal showed for the same run (the pipeline's console output,
  drawn by rich), down to the three closing lines.

- docs/evaluation-artifact.png: the Prefect UI's page of the same run's `evaluation-report` artifact
  (the gate, the key figures and the plots, as the UI shows them);

and, when the project has a run's reports (`make run`, or `dvc pull`):

- docs/evaluation-report.png: the top of reports/evaluation.html;
- docs/data-report.png: the top of reports/data.html
  (`--report-only`: these two alone, seconds).

Nothing in the project folder is touched except those files. `--keep` leaves the temporary folder
(workspace, Prefect home) and prints its path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import imagegen  # noqa: E402  (tests/, on the path above)
from browser import FLAGS, NAMES, chromium  # noqa: E402

from flows.server import free_port, start_server, stop_server  # noqa: E402
from tasks.core.params import override  # noqa: E402

DOCS = ROOT / "docs"
PER_CLASS = 120  # generated photos per class: a few seconds per epoch with the model below
EPOCHS = 6
# Each class leans to a colour, so the small model has something to learn.
TINT = {"Cat": (200, 80, 40), "Dog": (40, 90, 200)}
# A model small enough to train in seconds on two cores, so the picture costs a few minutes; small
# batches, so that batch normalisation's moving statistics settle within the few epochs.
SMALL = {
    "train": {"epochs": EPOCHS, "image_size": 32, "width": 8, "batch_size": 4, "warmup_epochs": 1},
    "evaluate": {"min_accuracy": 0.0},
}
PROGRESS_WINDOW = (1280, 1240)  # CSS pixels: the flow run's header, its task graph and every log line
REPORT_WINDOW = (1200, 1500)  # the report's header, headline numbers and first plots
# reports/<page> -> docs/<picture>, taken by --report-only too
REPORT_SHOTS = {"evaluation.html": "evaluation-report.png", "data.html": "data-report.png"}
ARTIFACT_WINDOW = (1280, 1400)  # the artifact's verdict, figures, gate table and first plot
TERMINAL_COLUMNS = 200
TERMINAL_WIDTH = 1510  # 200 columns of 12 px DejaVu Sans Mono (7.2 px each) and the margins


def learnable_dataset(root: Path) -> Path:
    """tests/imagegen.py's photos (random blobs, no signal in them), each blended with its class's colour."""
    from PIL import Image

    for c_idx, (label, rgb) in enumerate(TINT.items()):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            img = imagegen.photo(c_idx * 100_000 + i, (96, 80))
            img = Image.blend(img, Image.new("RGB", img.size, rgb), 0.35)
            (folder / f"{label.lower()}.{i}.jpg").write_bytes(imagegen.encode(img, "JPEG", quality=92))
    return root


def workspace(dest: Path, source: Path) -> Path:
    """A clone-like copy of the project (tracked files, no data, models or reports) run on `source`."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        src = ROOT / f
        skipped = f.startswith(("tests/", "bench/", "docs/", "reports/", "data/", "models/"))
        skipped = skipped or f == "dvc.lock"
        if skipped and f != "data/exclude.txt":  # the exclude list is an input of every run
            continue
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    data = override(yaml.safe_load((dest / "params.yaml").read_text()), source, SMALL)
    (dest / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (dest / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    git = ["git", "-c", "user.name=screenshots", "-c", "user.email=screenshots@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "screenshot workspace"]):
        subprocess.run([*git, *args], cwd=dest, check=True)
    return dest


def run_pipeline(ws: Path, api_url: str) -> str:
    """`python -m flows.pipeline --no-push` in the workspace; its console output (stdout and stderr)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": api_url,
        "COLUMNS": str(TERMINAL_COLUMNS),
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    out = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--no-push"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        sys.exit(f"the pipeline failed (exit {out.returncode}):\n{out.stdout[-4000:]}")
    return out.stdout


def train_run_id(api_url: str) -> str:
    """The id of the latest `train` flow run on the server."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return str(run.id)


def shoot(url: str, png: Path, tmp: Path, window: tuple[int, int], wait_ms: int = 15000) -> None:
    """Headless Chromium's screenshot of a page (virtual time: the page's scripts and fetches settle)."""
    out = subprocess.run(
        [
            chromium(),
            *FLAGS,
            f"--user-data-dir={tmp / 'chromium-profile'}",
            f"--window-size={window[0]},{window[1]}",
            "--hide-scrollbars",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={png}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0 or not png.is_file():
        sys.exit(f"chromium could not take {png}: {out.stderr[-2000:]}")


def small_png(png: Path) -> None:
    """Fewer colours (text and flat UI: no visible loss), so the picture stays a few hundred KB at most."""
    from PIL import Image

    with Image.open(png) as img:
        reduced = img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    reduced.save(png, optimize=True)


TERMINAL_PAGE = """<!DOCTYPE html>
<html><head><meta charset="UTF-8"><style>
{stylesheet}
body {{ color: #d0d0d0; background-color: #1e1e1e; margin: 12px; }}
pre {{ font: 12px/15px 'DejaVu Sans Mono', monospace; margin: 0; }}
</style></head>
<body><pre><code>{code}</code></pre></body></html>
"""


def terminal_html(text: str, page: Path) -> int:
    """The console output as a terminal would show it (each carriage return redraws its line), from the
    train stage on: the epochs as they came, then evaluate and the closing lines. Returns its height (px)."""
    from rich.console import Console
    from rich.text import Text

    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if "Beginning subflow run" in line and "'train'" in line]
    lines = lines[starts[0] if starts else 0 :]
    console = Console(record=True, width=TERMINAL_COLUMNS, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(Text.from_ansi("\n".join(lines).rstrip()), soft_wrap=True)
    rows = len(console.export_text(clear=False).splitlines())
    page.write_text(console.export_html(code_format=TERMINAL_PAGE, inline_styles=True), encoding="utf-8")
    return 15 * rows + 24


def shoot_reports(tmp: Path) -> list[Path]:
    """docs/evaluation-report.png and docs/data-report.png from the project's reports, if a run left them."""
    taken = []
    for name, picture in REPORT_SHOTS.items():
        page = ROOT / "reports" / name
        if not page.is_file():
            print(f"{page.relative_to(ROOT)} not found (`make run` or `dvc pull` writes it): not retaken")
            continue
        png = DOCS / picture
        shoot(page.as_uri(), png, tmp, REPORT_WINDOW, wait_ms=5000)
        taken.append(png)
    return taken


def artifact_id(api_url: str, key: str) -> str:
    """The id of the latest artifact with this key on the server."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifact.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace and Prefect home")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="retake docs/evaluation-report.png and data-report.png only",
    )
    args = parser.parse_args(argv)
    if not any(shutil.which(name) for name in NAMES):  # said now, not after the run
        sys.exit(f"no headless Chromium on PATH ({', '.join(NAMES)}): `apt-get install -y chromium`")
    tmp = Path(tempfile.mkdtemp(prefix="pawflow-screenshots-"))
    started = time.monotonic()
    server = None
    try:
        reports = shoot_reports(tmp)
        if args.report_only:
            return 0 if reports else 1
        ws = workspace(tmp / "ws", learnable_dataset(tmp / "source"))
        port = free_port()
        # The UI served by the server asks this URL for its data (by default 127.0.0.1:4200).
        os.environ["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
        server, api_url = start_server(tmp / "prefect", port)
        print(f"Prefect server at http://127.0.0.1:{port}; running the pipeline...", flush=True)
        console = run_pipeline(ws, api_url)
        run_id = train_run_id(api_url)
        progress = DOCS / "training-progress.png"
        shoot(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}", progress, tmp, PROGRESS_WINDOW)
        small_png(progress)
        terminal = DOCS / "training-terminal.png"
        page = tmp / "terminal.html"
        height = terminal_html(console, page)
        shoot(page.as_uri(), terminal, tmp, (TERMINAL_WIDTH, height), wait_ms=2000)
        small_png(terminal)
        artifact = DOCS / "evaluation-artifact.png"
        url = f"http://127.0.0.1:{port}/artifacts/artifact/{artifact_id(api_url, 'evaluation-report')}"
        shoot(url, artifact, tmp, ARTIFACT_WINDOW)
        small_png(artifact)
        for png in (progress, terminal, artifact, *reports):
            print(f"{png.relative_to(ROOT)}: {png.stat().st_size / 1024:.0f} KB")
        print(f"done in {time.monotonic() - started:.0f} s")
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
