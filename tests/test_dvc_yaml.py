"""dvc.yaml's code deps are exactly the project modules each stage's command imports.

An import that dvc.yaml does not list means an edit there leaves `dvc status` clean while the result
would change; a listed file the stage never imports re-runs it for nothing. The imports are read from
the source (every `import` statement, also those inside functions, followed transitively), so a lazy
import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from commands import dvc
from conftest import make_workspace

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks")


def module_file(module: str) -> Path | None:
    """flows.x -> flows/x.py (or a package's __init__.py), when it is a project module."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (`from tasks import x` names tasks.x too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def project_closure(module: str) -> set[Path]:
    """The project files `python -m <module>` can run: the module and what it imports, transitively
    (package __init__ files are left out: they are empty and never change a result)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
    return {p for p in seen if p.name != "__init__.py"}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_code_deps_are_what_the_stage_imports(stage: str):
    spec = stages()[stage]
    match = re.fullmatch(r"python -m ([\w.]+)(?: .*)?", spec["cmd"])
    assert match, f"{stage}: cmd {spec['cmd']!r} is not `python -m <module>`"
    imported = {p.relative_to(ROOT).as_posix() for p in project_closure(match.group(1))}
    listed = {d for d in spec["deps"] if isinstance(d, str) and d.endswith(".py")}
    assert not imported - listed, f"dvc.yaml stage {stage} misses deps: {sorted(imported - listed)}"
    assert not listed - imported, (
        f"dvc.yaml stage {stage} lists deps it never imports: {sorted(listed - imported)}"
    )


def test_closure_follows_lazy_imports():
    # tasks.train is imported inside flows.train's functions only: it must still count.
    files = {p.relative_to(ROOT).as_posix() for p in project_closure("flows.train")}
    assert {"flows/train.py", "tasks/train.py", "tasks/model/model.py", "tasks/model/runtime.py"} <= files


def test_no_module_imports_one_that_imports_it_back():
    # Imports run down, from entry points to shared code: a circle (lazy imports included) means a
    # shared piece sits too high, in a module that also needs the other.
    files = [*ROOT.glob("flows/**/*.py"), *ROOT.glob("tasks/**/*.py")]
    graph = {
        f: {m for m in (module_file(n) for n in imported_modules(f)) if m is not None and m != f}
        for f in files
    }

    def reach(start: Path) -> set[Path]:
        seen, todo = set(), list(graph[start])
        while todo:
            f = todo.pop()
            if f not in seen:
                seen.add(f)
                todo.extend(graph.get(f, ()))
        return seen

    circles = sorted(
        f"{a.relative_to(ROOT)} <-> {b.relative_to(ROOT)}"
        for a in files
        for b in graph[a]
        if a < b and a in reach(b)
    )
    assert not circles, f"modules that import each other (directly or through others): {circles}"


def test_evaluate_depends_on_the_training_report_it_reads():
    # evaluation.html shows reports/train.json's curves and settings: a new train.json is a new report.
    assert "${paths.reports}/train.json" in stages()["evaluate"]["deps"]


def test_stages_are_listed_after_the_stages_they_read():
    # tasks.history.versioning.STAGES (the run order of pawflow's pipeline) is dvc.yaml's order.
    from tasks.history import versioning

    spec = stages()
    assert tuple(s for s in spec if s != versioning.CHECK_STAGE) == versioning.STAGES
    assert versioning.DATA_STAGES == ("ingest", "clean", "audit", "dedup", "shard")
    writer = {
        (o if isinstance(o, str) else next(iter(o))): name for name, st in spec.items() for o in st["outs"]
    }
    order = list(spec)
    for name, stage in spec.items():
        for dep in stage["deps"]:
            if dep in writer:
                assert order.index(writer[dep]) < order.index(name), f"{name} reads {dep} of a later stage"


@pytest.mark.slow
def test_dvc_views_show_the_model_metrics_in_one_screen_and_each_plot_once(tmp_path: Path):
    """`dvc metrics show` / `dvc plots show` on the files the stages write (made up here, not trained)."""
    ws = make_workspace(tmp_path / "ws", tmp_path / "source")
    reports = ws / "reports"
    counts = {"files": 4007, "kept": 4002, "per_reason": {"not_an_image": 5}, "source": "a long string " * 9}
    for name in ("ingest", "clean", "dedup", "shard", "train"):
        (reports / f"{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (reports / f"{name}.json").write_text(json.dumps(counts))
    per_class = {c: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 300} for c in ("Cat", "Dog")}
    metrics = {"accuracy": 0.8433, "f1_macro": 0.84, "roc_auc": 0.92, "ece": 0.04, "per_class": per_class}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    (reports / "gate.json").write_text(json.dumps({"decision": "promoted", "reason": "no champion yet " * 5}))
    (reports / "scores.json").write_text(json.dumps({**metrics, "per_class": None, "gate": "promoted"}))
    for split in ("train", "eval"):
        for m in ("loss", "accuracy"):
            tsv = reports / "train/plots/metrics" / split / f"{m}.tsv"
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{m}\n0\t0.7\n1\t0.5\n")
    (reports / "train/metrics.json").write_text(json.dumps({"train": {"loss": 0.5}, "step": 1}))
    (reports / "plots").mkdir()
    (reports / "plots/confusion.csv").write_text("actual,predicted\nCat,Cat\nCat,Dog\nDog,Dog\n")
    (reports / "plots/roc.csv").write_text("fpr,tpr,threshold\n0,0,1\n0.5,1,0.5\n1,1,0\n")
    (reports / "plots/precision_recall.csv").write_text("recall,precision,threshold\n1,0.5,0.1\n0.5,1,0.9\n")
    (reports / "plots/calibration.csv").write_text("bin,confidence,accuracy,count\n5,0.5,0.5,2\n9,1,1,1\n")

    shown = dvc(ws, "metrics", "show", api=None)
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.strip().splitlines()
    assert header.split() == ["Path", "accuracy", "ece", "f1_macro", "gate", "roc_auc"]
    assert row.split()[0] == "reports/scores.json" and "promoted" in row
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80

    plots = dvc(ws, "plots", "show", "--json", api=None)
    assert plots.returncode == 0, plots.stderr
    drawn = json.loads(plots.stdout)["data"]
    curves = "reports/train/plots/metrics"
    training = [f"{curves}/{s}/{m}.tsv" for s in ("eval", "train") for m in ("accuracy", "loss")]
    tests = ["Confusion matrix (test)", "ROC (test)", "Precision-recall (test)", "Calibration (test)"]
    assert sorted(drawn) == sorted(training + tests)  # once each; no CSV drawn as its own line plot
    assert all(len(v) == 1 for v in drawn.values())
    # The confusion matrix as a matrix (DVC's confusion template: rect marks), every other plot as lines.
    marks = {name: json.dumps(v[0]["content"]) for name, v in drawn.items()}
    assert '"rect"' in marks["Confusion matrix (test)"] and '"line"' not in marks["Confusion matrix (test)"]

    # The page a user opens draws every chart offline (the project's template inlines the libraries), and
    # is not a file git would show.
    from browser import chart_status

    page = dvc(ws, "plots", "show", api=None)
    assert page.returncode == 0, page.stderr
    charts, errors = chart_status(ws / "dvc_plots" / "index.html")
    assert errors == [] and len(charts) == 8 and all(drew for _, drew in charts), (charts, errors)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True)
    assert "dvc_plots" not in status.stdout
    assert all('"line"' in m for name, m in marks.items() if name != "Confusion matrix (test)")
