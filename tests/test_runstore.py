"""tasks/history/runstore.py: a run recorded as a git commit under refs/pawflow/runs without touching the
user's branch, index, stash or working tree; atomic (the ref last); listing, naming, retention selection and
what counts as the user's own changes. Plain git repositories, no DVC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.core.errors import PawflowError
from tasks.history import runstore

PATHS = ["params.yaml", "dvc.lock", "reports/metrics.json", "reports/plots"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "params.yaml").write_text("a: 1\n")
    (r / "code.py").write_text("print(1)\n")
    (r / "reports").mkdir()
    (r / "reports/metrics.json").write_text('{"accuracy": 0.5}\n')
    git(r, "add", "-A")
    git(r, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "init")
    return r


def user_state(r: Path) -> dict:
    """Everything of the user's that recording must leave as it is."""
    return {
        "head": git(r, "rev-parse", "HEAD"),
        "branch": git(r, "symbolic-ref", "HEAD"),
        "index": (r / ".git/index").read_bytes(),
        "stash": git(r, "stash", "list"),
        "status": git(r, "status", "--porcelain", "--untracked-files=all"),
        "files": {
            p.relative_to(r).as_posix(): p.read_bytes()
            for p in r.rglob("*")
            if p.is_file() and ".git" not in p.parts
        },
    }


def run_output(r: Path, accuracy: float) -> None:
    """What a run leaves: params, dvc.lock, reports (one new plot file)."""
    (r / "dvc.lock").write_text(f"schema: '2.0'\nacc: {accuracy}\n")
    (r / "reports/metrics.json").write_text(f'{{"accuracy": {accuracy}}}\n')
    (r / "reports/plots").mkdir(exist_ok=True)
    (r / "reports/plots/roc.csv").write_text(f"fpr,tpr\n0,{accuracy}\n")


def test_a_run_is_recorded_without_touching_the_users_branch_index_stash_or_files(repo: Path):
    (repo / "code.py").write_text("print(2)\n")  # an uncommitted edit of the user's
    git(repo, "add", "code.py")  # ... staged
    (repo / "notes.txt").write_text("mine\n")  # and an untracked file
    run_output(repo, 0.75)
    before = user_state(repo)
    v = runstore.record(
        repo, "20261205-030001", "nightly, +3 photos", {"id": "20261205-030001", "x": 1}, PATHS
    )
    assert v is not None and user_state(repo) == before
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/pawflow").split() == [
        "refs/pawflow/runs/20261205-030001"
    ]
    # The commit: HEAD's tree with the run's files as they are now; its parent is HEAD.
    assert git(repo, "rev-parse", f"{v.commit}^").strip() == before["head"].strip()
    assert runstore.show(repo, v.commit, "reports/metrics.json") == b'{"accuracy": 0.75}\n'
    assert runstore.show(repo, v.commit, "reports/plots/roc.csv") == b"fpr,tpr\n0,0.75\n"
    assert runstore.show(repo, v.commit, "code.py") == b"print(1)\n"  # HEAD's, not the staged edit
    with pytest.raises(subprocess.CalledProcessError):
        runstore.show(repo, v.commit, "notes.txt")
    (found,) = runstore.versions(repo)
    assert found.id == v.id and found.commit == v.commit and found.facts == {"id": "20261205-030001", "x": 1}
    assert (
        git(repo, "log", "-1", "--format=%s", v.commit).strip()
        == "pawflow run 20261205-030001: nightly, +3 photos"
    )


def test_nothing_is_recorded_when_no_run_file_changed(repo: Path):
    assert runstore.record(repo, "20261205-030001", "h", {}, PATHS) is None  # the workspace is HEAD
    run_output(repo, 0.75)
    assert runstore.record(repo, "20261205-030001", "h", {}, PATHS)
    assert runstore.record(repo, "20261206-030001", "h", {}, PATHS) is None  # same state as that run
    # The user commits the run's files: still the same state, still nothing new.
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "keep")
    assert runstore.record(repo, "20261206-030001", "h", {}, PATHS) is None
    run_output(repo, 0.8)
    assert runstore.record(repo, "20261206-030001", "h", {}, PATHS)
    assert [v.id for v in runstore.versions(repo)] == ["20261206-030001", "20261205-030001"]


def test_a_run_stopped_before_its_ref_leaves_no_version_and_nothing_changed(repo: Path):
    run_output(repo, 0.75)
    before = user_state(repo)

    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runstore.record(repo, "20261205-030001", "h", {}, PATHS, fail_before_ref=stopped)
    assert runstore.versions(repo) == [] and user_state(repo) == before
    assert git(repo, "for-each-ref", "refs/pawflow") == ""
    # the next run records normally
    assert runstore.record(repo, "20261205-030002", "h", {}, PATHS)


def test_an_existing_run_id_is_never_overwritten(repo: Path):
    run_output(repo, 0.75)
    first = runstore.record(repo, "20261205-030001", "h", {}, PATHS)
    run_output(repo, 0.8)
    with pytest.raises(PawflowError):
        runstore.record(repo, "20261205-030001", "h", {}, PATHS)
    assert runstore.versions(repo)[0].commit == first.commit


def versions(*ids: str, promoted: tuple[str, ...] = ()) -> list[runstore.Version]:
    return [runstore.Version(i, f"c{i}", f"t{i}", {"promoted": i in promoted}) for i in ids]


def test_runs_are_named_by_id_unique_prefix_or_latest():
    found = versions("20261207-030000", "20261206-030000", "20261106-030000")
    assert runstore.resolve(found, "latest").id == "20261207-030000"
    assert runstore.resolve(found, "20261206").id == "20261206-030000"
    assert runstore.resolve(found, "202611").id == "20261106-030000"
    with pytest.raises(PawflowError, match="names 2 runs"):
        runstore.resolve(found, "202612")
    with pytest.raises(PawflowError, match="no recorded run has the id"):
        runstore.resolve(found, "2025")
    with pytest.raises(PawflowError, match="refs/pawflow"):
        runstore.resolve([], "latest")


def test_retention_keeps_the_newest_runs_and_every_champion():
    ids = [f"2026120{d}-030000" for d in range(9, 0, -1)]  # newest first
    found = versions(*ids, promoted=("20261201-030000", "20261205-030000", "20261208-030000"))
    kept, dropped = runstore.select_kept(found, keep_runs=3)
    assert [v.id for v in kept] == [
        "20261209-030000",
        "20261208-030000",
        "20261207-030000",
        "20261205-030000",
        "20261201-030000",
    ]
    assert [v.id for v in dropped] == [
        "20261206-030000",
        "20261204-030000",
        "20261203-030000",
        "20261202-030000",
    ]
    assert runstore.select_kept(found, keep_runs=100) == (found, [])


def test_own_changes_are_what_a_restore_would_lose(repo: Path):
    assert runstore.own_changes(repo, PATHS, []) == []
    run_output(repo, 0.75)
    v = runstore.record(repo, "20261205-030001", "h", {}, PATHS)
    assert runstore.own_changes(repo, PATHS, [v]) == []  # exactly a recorded run's state
    (repo / "reports/metrics.json").write_text('{"accuracy": 0.99}\n')  # edited by hand
    assert runstore.own_changes(repo, PATHS, [v]) == ["reports/metrics.json"]
    (repo / "reports/metrics.json").write_text('{"accuracy": 0.75}\n')
    # params.yaml edited and committed since the run (a new alert_url): HEAD keeps it, the rest is the
    # run's, so a restore loses nothing; edited again and not committed, it would be lost.
    (repo / "params.yaml").write_text("a: 2\n")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "params", "params.yaml")
    assert runstore.own_changes(repo, PATHS, [v]) == []
    (repo / "params.yaml").write_text("a: 3\n")
    assert runstore.own_changes(repo, PATHS, [v]) == ["params.yaml"]
    git(repo, "checkout", "-q", "params.yaml")
    (repo / "code.py").write_text("print(3)\n")  # a tracked file outside the run's state
    assert runstore.own_changes(repo, PATHS, [v]) == ["code.py"]


def test_put_back_writes_the_commits_files_and_removes_those_it_lacks(repo: Path):
    run_output(repo, 0.75)
    v = runstore.record(repo, "20261205-030001", "h", {}, PATHS)
    run_output(repo, 0.8)
    (repo / "reports/plots/extra.csv").write_text("x\n")
    written = runstore.put_back_git_files(repo, v.commit, PATHS)
    assert (repo / "reports/metrics.json").read_text() == '{"accuracy": 0.75}\n'
    assert (repo / "dvc.lock").read_text() == "schema: '2.0'\nacc: 0.75\n"
    assert not (repo / "reports/plots/extra.csv").exists()
    assert "reports/plots/extra.csv" in written and "params.yaml" not in written  # unchanged: not rewritten


def dvc_runs(tmp_path: Path, first_promoted: bool) -> tuple[Path, dict[str, str]]:
    """A DVC workspace whose folder d/ held "one" (committed), "two" (run 1) and "three" (run 2, the
    workspace now): the md5 of each content."""
    import hashlib

    from dvc.repo import Repo

    r = tmp_path / "ws"
    r.mkdir()

    def dvc_add(text: str) -> None:
        (r / "d").mkdir(exist_ok=True)
        (r / "d/a.txt").write_text(text)
        with Repo(str(r)) as repo:
            repo.add(str(r / "d"))

    git(r, "init", "-q")
    Repo.init(str(r)).close()
    dvc_add("one\n")
    git(r, "add", "-A")
    git(r, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "one")
    dvc_add("two\n")
    runstore.record(r, "20261201-000000", "h", {"promoted": first_promoted}, ["d.dvc"])
    dvc_add("three\n")
    runstore.record(r, "20261202-000000", "h", {"promoted": False}, ["d.dvc"])
    md5 = {t: hashlib.md5(f"{t}\n".encode()).hexdigest() for t in ("one", "two", "three")}
    return r, md5


def in_cache(r: Path, md5: str) -> bool:
    return (r / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()


def test_gc_removes_what_only_a_dropped_run_used(tmp_path: Path):
    r, md5 = dvc_runs(tmp_path, first_promoted=False)
    assert all(in_cache(r, m) for m in md5.values())
    out = runstore.collect_garbage(r, keep_runs=1, cloud=False)
    assert out["kept"] == ["20261202-000000"] and out["dropped"] == ["20261201-000000"]
    assert [v.id for v in runstore.versions(r)] == ["20261202-000000"]
    assert not in_cache(r, md5["two"])  # run 1's data
    assert in_cache(r, md5["one"]) and in_cache(r, md5["three"])  # the branch's commit, the kept run


def test_gc_keeps_every_champion_and_removes_nothing_it_cannot_read(tmp_path: Path):
    r, md5 = dvc_runs(tmp_path, first_promoted=True)
    out = runstore.collect_garbage(r, keep_runs=1, cloud=False)
    assert out["dropped"] == [] and in_cache(r, md5["two"])  # run 1's model became champion: kept
    # A kept run whose directory listing is missing from the cache (and no remote to fetch it from):
    # refused before any ref or object is removed.
    lock = runstore.show(r, runstore.versions(r)[1].commit, "d.dvc").decode()
    listing = next(line.split()[-1] for line in lock.splitlines() if ".dir" in line)
    (r / ".dvc/cache/files/md5" / listing[:2] / listing[2:]).unlink()
    before = sorted(p for p in (r / ".dvc/cache").rglob("*") if p.is_file())
    with pytest.raises(PawflowError, match="nothing was removed"):
        runstore.collect_garbage(r, keep_runs=1, cloud=False)
    assert sorted(p for p in (r / ".dvc/cache").rglob("*") if p.is_file()) == before
    assert len(runstore.versions(r)) == 2
