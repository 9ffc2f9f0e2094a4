"""Every run is a version: a git commit under refs/pawflow/runs/<id>, made with git plumbing.

The commit's tree is HEAD's tree with the run's git-tracked files put in: params.yaml, dvc.lock and the
DVC outputs that git keeps (`cache: false`: reports/*.json, models/model.json, the plots). Its message
holds the run's facts (tasks.history.runs) as JSON. It is built in a temporary index (GIT_INDEX_FILE), so the
user's branch, index, stash and working tree are never touched, and the ref is written last: a run
stopped before that leaves only unreferenced objects, never a half-recorded version.

The data and models stay in the DVC cache and remote; a version names them through its dvc.lock.
restore() puts a version back (git files from the commit, DVC outputs by checkout, pulling what the cache
lacks) and checks the sha256s the run recorded; collect_garbage() applies the retention policy.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file, write_bytes

REFS = "refs/pawflow/runs"
# What a clone fetches to see the runs (docs/nightly.md): git fetch origin 'refs/pawflow/*:refs/pawflow/*'
REFSPEC = "+refs/pawflow/*:refs/pawflow/*"
# Files always part of a run's state besides the `cache: false` outputs of dvc.yaml.
ALWAYS = ("params.yaml", "dvc.lock")
# The DVC outputs whose bytes a run records and restore() checks (DVC trusts its cache; pawflow does not).
VERIFIED = (
    "models/model.keras",
    "models/champion/model.keras",
    "data/processed/dataset_info.json",
)
IDENTITY = {
    "GIT_AUTHOR_NAME": "pawflow",
    "GIT_AUTHOR_EMAIL": "pawflow@localhost",
    "GIT_COMMITTER_NAME": "pawflow",
    "GIT_COMMITTER_EMAIL": "pawflow@localhost",
}
SUBJECT = "pawflow run "  # a version's commit message: "pawflow run <id>: <headline>", blank line, JSON


@dataclass(frozen=True)
class Version:
    """One recorded run: its id, its commit and tree, and the facts its message holds."""

    id: str
    commit: str
    tree: str
    facts: dict[str, Any] = field(default_factory=dict)


def git(root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and out.returncode != 0:
        raise PawflowError(
            f"`git {' '.join(args[:3])}` failed in {root}: {out.stderr.strip() or out.returncode}",
            "Check that the project is a git repository (`git status`) with at least one commit.",
        )
    return out.stdout


def is_repo(root: Path) -> bool:
    out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True)
    return out.returncode == 0


def run_paths(root: Path) -> list[str]:
    """The workspace-relative paths of a run's git-kept state: params.yaml, dvc.lock and every
    `cache: false` output (files or folders) that dvc.yaml declares, in a fixed order."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            outs = {
                os.path.relpath(out.fs_path, repo.root_dir)
                for out in repo.index.outs
                if not out.use_cache and out.fs_path
            }
    except DvcException as err:
        raise PawflowError(
            f"DVC cannot read this workspace's pipeline: {str(err).splitlines()[0]}",
            "Fix dvc.yaml (`dvc status` shows the problem); nothing was changed.",
        ) from None
    return [*ALWAYS, *sorted(outs - set(ALWAYS))]


def _existing(root: Path, paths: Iterable[str]) -> list[str]:
    """The paths present in the workspace or tracked by HEAD (git add refuses a pathspec matching neither)."""
    tracked = set(git(root, "ls-tree", "-r", "--name-only", "HEAD").splitlines())
    out = []
    for p in paths:
        prefix = p.rstrip("/") + "/"
        if (root / p).exists() or p in tracked or any(t.startswith(prefix) for t in tracked):
            out.append(p)
    return out


def workspace_tree(root: Path, paths: Sequence[str]) -> str:
    """The tree of HEAD with `paths` as they are in the workspace (built in a temporary index; the
    user's index is not read or written). Objects are written to the repository; nothing refers to them."""
    with tempfile.TemporaryDirectory(prefix="pawflow-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(root, "read-tree", "HEAD", env=env)
        present = _existing(root, paths)
        if present:
            git(root, "add", "-A", "--", *present, env=env)
        return git(root, "write-tree", env=env).strip()


def head_tree(root: Path) -> str:
    return git(root, "rev-parse", "HEAD^{tree}").strip()


def encode(run_id: str, headline: str, facts: dict[str, Any]) -> str:
    return f"{SUBJECT}{run_id}: {headline}\n\n{json.dumps(facts, sort_keys=True, indent=1, default=str)}\n"


def decode(message: str) -> dict[str, Any]:
    """The facts of a version's message ({} when its body is not pawflow's JSON)."""
    _, _, body = message.partition("\n\n")
    try:
        facts = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return facts if isinstance(facts, dict) else {}


def record(
    root: Path, run_id: str, headline: str, facts: dict[str, Any], paths: Sequence[str], fail_before_ref=None
) -> Version | None:
    """Record the workspace's run state as refs/pawflow/runs/<run_id>; None when it equals the newest
    version's (nothing changed). The ref is created last, and only if it does not exist yet.

    fail_before_ref: a callable run between the commit and the ref (tests: a run stopped there)."""
    tree = workspace_tree(root, paths)
    newest = versions(root)
    mine = run_state(root, tree, paths)
    if newest and run_state(root, newest[0].tree, paths) == mine:
        return None  # the same state as the last recorded run (the user may have committed since)
    if not newest and mine == run_state(root, "HEAD", paths):
        return None  # the workspace is what the user committed: no run output changed
    message = encode(run_id, headline, facts)
    out = subprocess.run(
        ["git", "commit-tree", tree, "-p", "HEAD", "-F", "-"],
        cwd=root,
        input=message,
        capture_output=True,
        text=True,
        env={**os.environ, **IDENTITY},
    )
    if out.returncode != 0:
        raise PawflowError(f"git commit-tree failed: {out.stderr.strip()}", "Check `git status` works here.")
    commit = out.stdout.strip()
    if fail_before_ref is not None:
        fail_before_ref()
    git(root, "update-ref", "-m", f"pawflow run {run_id}", f"{REFS}/{run_id}", commit, "")
    return Version(run_id, commit, tree, facts)


def versions(root: Path) -> list[Version]:
    """Every recorded run, newest first (ids are UTC times, so they sort by time)."""
    fmt = "%(refname)%1f%(objectname)%1f%(tree)%1f%(contents)%1e"
    out = git(root, "for-each-ref", f"--format={fmt}", REFS, check=False)
    found = []
    for entry in out.split("\x1e"):
        entry = entry.lstrip("\n")
        if not entry:
            continue
        ref, commit, tree, message = entry.split("\x1f", 3)
        run_id = ref[len(REFS) + 1 :]
        found.append(Version(run_id, commit, tree, decode(message)))
    return sorted(found, key=lambda v: v.id, reverse=True)


def resolve(found: Sequence[Version], ident: str) -> Version:
    """The version named by a full id, a unique prefix of one, or `latest`."""
    if not found:
        raise PawflowError(
            "no run is recorded in this workspace (refs/pawflow/runs is empty).",
            "Run the pipeline first; in a clone, fetch the runs: "
            f"git fetch origin '{REFSPEC}' (docs/nightly.md).",
        )
    if ident == "latest":
        return found[0]
    matches = [v for v in found if v.id == ident] or [v for v in found if v.id.startswith(ident)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PawflowError(
            f"no recorded run has the id {ident!r}.",
            f"See the ids with `pawflow history` (newest: {found[0].id}).",
        )
    raise PawflowError(
        f"{ident!r} names {len(matches)} runs ({', '.join(v.id for v in matches[:4])}...).",
        "Give more of the id.",
    )


def files_of(root: Path, commit: str, paths: Sequence[str]) -> list[str]:
    """The files under `paths` in a commit's tree."""
    return git(root, "ls-tree", "-r", "--name-only", commit, "--", *paths).splitlines()


def show(root: Path, commit: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "cat-file", "blob", f"{commit}:{path}"], cwd=root, capture_output=True, check=True
    ).stdout


def delete(root: Path, ids: Iterable[str]) -> None:
    for run_id in ids:
        git(root, "update-ref", "-d", f"{REFS}/{run_id}")


# --------------------------------------------------------------------------- restore


def changed_files(root: Path) -> list[str]:
    """Tracked files that differ from HEAD (staged or not), as `git status` lists them."""
    out = git(root, "status", "--porcelain", "-z", "--untracked-files=no")
    names = []
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        if entry:
            names.append(entry[3:])
            if entry[0] in "RC":  # a rename's source follows
                i += 1
        i += 1
    return names


def run_state(root: Path, tree: str, paths: Sequence[str]) -> dict[str, str]:
    """{path: blob id} of the run's files in a tree (HEAD's other files do not count)."""
    out = git(root, "ls-tree", "-r", tree, "--", *paths)
    state = {}
    for line in out.splitlines():
        meta, _, name = line.partition("\t")
        state[name] = meta.split()[2]
    return state


def own_changes(root: Path, paths: Sequence[str], found: Sequence[Version]) -> list[str]:
    """What a restore would lose: tracked files outside the run's state that differ from HEAD, and the
    run's files whose content is kept nowhere else: neither HEAD's nor that of a recorded run (a
    params.yaml edited and committed since the last run is HEAD's, and dvc.lock is that run's)."""
    prefixes = tuple(p.rstrip("/") + "/" for p in paths)
    outside = [f for f in changed_files(root) if f not in paths and not f.startswith(prefixes)]
    if outside:
        return outside
    mine = run_state(root, workspace_tree(root, paths), paths)
    kept = [run_state(root, "HEAD", paths), *(run_state(root, v.tree, paths) for v in found)]
    return sorted(f for f, blob in mine.items() if not any(state.get(f) == blob for state in kept))


def put_back_git_files(root: Path, commit: str, paths: Sequence[str]) -> list[str]:
    """The run's git-kept files as the commit holds them; files under `paths` it lacks are removed."""
    wanted = set(files_of(root, commit, paths))
    written = []
    for rel in sorted(wanted):
        data = show(root, commit, rel)
        target = root / rel
        if not target.is_file() or target.read_bytes() != data:
            write_bytes(target, data)
            written.append(rel)
    for p in paths:
        base = root / p
        present = [base] if base.is_file() else sorted(f for f in base.rglob("*") if f.is_file())
        for f in present:
            rel = str(f.relative_to(root))
            if rel not in wanted:
                f.unlink()
                written.append(rel)
    return written


def checkout_outputs(root: Path) -> str:
    """`dvc checkout --force` of the restored dvc.lock; what the cache lacks is pulled from the default
    remote. Returns how the outputs were found."""
    from dvc.exceptions import CheckoutError

    from tasks.history.versioning import _repo

    with _repo(root) as repo:  # the repo whose lock the caller's run_lock holds
        try:
            repo.checkout(force=True)
            return "from the DVC cache"
        except CheckoutError as err:
            if not repo.config["core"].get("remote"):
                raise PawflowError(
                    f"the DVC cache lacks files of this run and no default remote is set: {err}",
                    "Add the remote that the runs pushed to (`dvc remote add -d ...`), then restore again.",
                ) from None
        try:
            repo.pull(force=True)
        except Exception as err:  # DVC raises many kinds; its message is what matters
            raise PawflowError(
                f"dvc pull of this run's data and models failed: {err}",
                "Check the remote (`dvc remote list`, `dvc status -c`); the run's git files are restored.",
            ) from None
        return "pulled from the default remote"


def verify(root: Path, expected: dict[str, str]) -> list[str]:
    """Paths whose sha256 differs from what the run recorded (a missing file counts as different)."""
    bad = []
    for rel, sha in sorted(expected.items()):
        path = root / rel
        if not path.is_file() or sha256_file(path) != sha:
            bad.append(rel)
    return bad


def recorded_hashes(root: Path, paths: Iterable[str] = VERIFIED) -> dict[str, str]:
    """sha256 of each of `paths` that exists (what a run records for restore to check)."""
    return {p: sha256_file(root / p) for p in paths if (root / p).is_file()}


# --------------------------------------------------------------------------- retention


def dir_listings(root: Path, commit: str, git_kept: Iterable[str] = ()) -> set[str]:
    """The directory hashes (md5 ending .dir) of the cached outputs a commit's dvc.lock and .dvc files
    name (`git_kept`: the `cache: false` outputs, which dvc.lock hashes but the cache never holds)."""
    skip = set(git_kept)
    import yaml

    names = [n for n in git(root, "ls-tree", "-r", "--name-only", commit).splitlines()]
    found: set[str] = set()
    for name in names:
        if name == "dvc.lock" or name.endswith("/dvc.lock") or name.endswith(".dvc"):
            data = yaml.safe_load(show(root, commit, name)) or {}
            stages = data.get("stages", {}).values() if "stages" in data else [data]
            for stage in stages:
                for out in (stage or {}).get("outs", []) or []:
                    md5 = str(out.get("md5") or "")
                    if out.get("cache") is False or out.get("path") in skip:
                        continue
                    if md5.endswith(".dir"):
                        found.add(md5)
    return found


def select_kept(found: Sequence[Version], keep_runs: int) -> tuple[list[Version], list[Version]]:
    """(kept, dropped): the newest keep_runs runs, and every run whose model became champion."""
    kept: list[Version] = []
    dropped: list[Version] = []
    for i, v in enumerate(found):
        (kept if i < keep_runs or v.facts.get("promoted") else dropped).append(v)
    return kept, dropped


def collect_garbage(root: Path, keep_runs: int, cloud: bool = True) -> dict[str, Any]:
    """Apply the retention policy: delete the dropped runs' refs, then remove from the DVC cache (and the
    default remote, when `cloud`) every object that no kept run, branch, tag, commit of theirs nor the
    workspace uses. Nothing is removed if any of those cannot be read completely. The caller holds
    flows.common.run_lock."""
    from dvc.exceptions import DvcException
    from dvc_data.hashfile.gc import gc as odb_gc

    from tasks.history.versioning import _repo

    found = versions(root)
    kept, dropped = select_kept(found, keep_runs)
    git_kept = run_paths(root) if (root / "dvc.yaml").exists() else []
    removed_local = removed_remote = 0
    with _repo(root) as repo:  # the caller holds run_lock (DVC's repo lock included)
        try:  # what everything kept uses, read in full before anything is deleted
            used = repo.used_objs(
                all_branches=True,
                all_tags=True,
                all_commits=True,
                revs=[v.commit for v in kept] or None,
                force=True,
            )
        except DvcException as err:
            raise PawflowError(
                f"cannot read what the kept runs and branches use ({err}); nothing was removed.",
                "Fetch the missing objects (`dvc fetch --all-commits`, or `pawflow restore RUN` of the run "
                "named), then run `pawflow gc` again.",
            ) from None
        ids = set().union(*used.values()) if used else set()
        # DVC lists a directory's files from its listing in the cache, and silently skips a listing
        # that is missing: its files would then look unused and be removed. Refuse instead.
        listings = {h for v in kept for h in dir_listings(root, v.commit, git_kept)}
        unread = sorted(h for h in listings if not repo.cache.local.exists(h))
        if unread:
            raise PawflowError(
                f"the DVC cache lacks the directory listing(s) {', '.join(unread[:3])} of kept runs, so "
                "what they hold cannot be known; nothing was removed.",
                "Fetch them (`dvc fetch --all-commits`, or `pawflow restore RUN`), then `pawflow gc` again.",
            )
        if not ids:  # a workspace and runs that use nothing: something is wrong, not everything garbage
            raise PawflowError(
                "no DVC output of the workspace, a branch or a kept run was found; nothing was removed.",
                "Check `dvc status` and `pawflow history` in this folder.",
            )
        delete(root, (v.id for v in dropped))
        for _, odb in repo.cache.by_scheme():
            if odb is not None:
                removed_local += odb_gc(odb, ids)
        remote = repo.config["core"].get("remote")
        if cloud and remote:
            remote_odb = repo.cloud.get_remote_odb(remote, "gc -c", hash_name="md5")
            removed_remote = odb_gc(remote_odb, ids)
    return {
        "kept": [v.id for v in kept],
        "dropped": [v.id for v in dropped],
        "removed_cache_objects": removed_local,
        "removed_remote_objects": removed_remote,
    }
