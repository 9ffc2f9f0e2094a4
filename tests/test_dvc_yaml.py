"""dvc.yaml's code deps are exactly the project modules each stage's command imports.

An import that dvc.yaml does not list means an edit there leaves `dvc status` clean while the result
would change; a listed file the stage never imports re-runs it for nothing. The imports are read from
the source (every `import` statement, also those inside functions, followed transitively), so a lazy
import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

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
    assert {"flows/train.py", "tasks/train.py", "tasks/model.py", "tasks/runtime.py"} <= files


def test_evaluate_depends_on_the_training_report_it_reads():
    # evaluation.html shows reports/train.json's curves and settings: a new train.json is a new report.
    assert "${paths.reports}/train.json" in stages()["evaluate"]["deps"]


def test_stages_are_listed_after_the_stages_they_read():
    # tasks.versioning.STAGES (the run order of pawflow's pipeline) is dvc.yaml's order.
    from tasks import versioning

    spec = stages()
    assert tuple(s for s in spec if s != versioning.CHECK_STAGE) == versioning.STAGES
    assert versioning.DATA_STAGES == ("ingest", "clean", "dedup", "shard")
    writer = {
        (o if isinstance(o, str) else next(iter(o))): name for name, st in spec.items() for o in st["outs"]
    }
    order = list(spec)
    for name, stage in spec.items():
        for dep in stage["deps"]:
            if dep in writer:
                assert order.index(writer[dep]) < order.index(name), f"{name} reads {dep} of a later stage"
