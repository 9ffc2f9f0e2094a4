"""reports/<stage>.json: the typed contract of every stage report, checked where it is written and read.

Each report is a TypedDict (the stage code builds plain dicts, so the contract costs it nothing) and a
`Report`: `write` serialises the dict once, validates those very bytes against the contract (unknown
keys refused, missing ones named) and only then writes them, so a report on disk always matches its
contract and its bytes are what json.dumps made of the dict; `read` gives the typed dict back, or one
message naming the file and the key. The readers (flows, the run summary, the run history, the closing
lines, the benchmarks) read through here instead of `json.loads(...)["key"]` chains.

One module for every report, beside tasks/photos/datasetinfo.py (dataset_info.json's contract): the readers of
train.json and metrics.json must not import tasks.train or tasks.evaluate (TensorFlow, scikit-learn)
to know a report's keys, and the status and gate vocabulary (tasks/core/status.py) is shared by several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Literal, NotRequired, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic validates only this TypedDict on Python 3.11

from tasks.core.errors import PawflowError
from tasks.core.fileio import dumps_json, write_bytes
from tasks.core.status import Decision

# Strict: an int is not a str, a bool not an int (an int is a float: JSON does not tell 1 from 1.0).
CONTRACT = ConfigDict(extra="forbid", strict=True)

# --------------------------------------------------------------------------- ingest.json


@with_config(CONTRACT)
class Source(TypedDict):
    kind: str  # folder, archive or url
    location: str
    archive_sha256: str | None


@with_config(CONTRACT)
class Skipped(TypedDict):
    path: str
    reason: str


@with_config(CONTRACT)
class IgnoredFolder(TypedDict):
    path: str
    reason: str
    files: int


@with_config(CONTRACT)
class IngestReport(TypedDict):
    source: Source
    mode: Literal["mirror", "append"]  # ingest.mode: data/raw follows the source, or only grows
    files: int
    bytes: int
    per_label: dict[str, int]
    skipped: list[Skipped]
    ignored_folders: list[IgnoredFolder]
    not_in_source: list[str]  # files of data/raw the source no longer has (append mode keeps them)


# --------------------------------------------------------------------------- clean.json


@with_config(CONTRACT)
class LabelVerdicts(TypedDict):
    kept: int
    rejected: int


@with_config(CONTRACT)
class RejectedFile(TypedDict):
    path: str
    reason: str  # a key of tasks.photos.images.REASONS
    detail: str


@with_config(CONTRACT)
class CleanReport(TypedDict):
    files: int
    kept: int
    rejected: int
    per_reason: dict[str, int]
    per_label: dict[str, LabelVerdicts]
    normalised: dict[str, int]  # normalisation step -> photos
    flagged: int  # kept photos with at least one quality flag
    per_flag: dict[str, int]  # quality flag (tasks.photos.images.FLAGS) -> kept photos
    reasons: dict[str, str]  # reason -> what it means, for the reasons met
    rejected_files: list[RejectedFile]


# --------------------------------------------------------------------------- audit.json


@with_config(CONTRACT)
class ContradictedPhoto(TypedDict):
    path: str
    label: str  # its folder's label
    predicted: str  # the champion's
    confidence: float  # the champion's probability of `predicted`


@with_config(CONTRACT)
class AuditReport(TypedDict):
    """The label audit of a run's new photos (tasks/audit.py), read by the run's alerts: `tripped`."""

    tripped: bool  # the batch was quarantined: held out of the split until released
    reason: str  # one line a person reads
    batch: str | None  # the audited batch's id (its name in the quarantine), None when none was audited
    champion_sha256: str | None
    new_photos: int  # photos not split before (the split ledger) nor held or released by a quarantine
    scored: int  # of them, scored by the champion (the others are of a class it does not know)
    disagreements: int  # scored photos the champion labels otherwise
    contradicted: int  # ... with at least audit.confidence
    disagreement_rate: float | None
    champion_test_error: float | None  # 1 - the test accuracy the champion was promoted with
    champion_test_photos: int | None
    normal_rate: float | None  # the disagreement rate the test takes as normal
    p_value: float | None  # one-sided exact binomial: P(at least this many disagreements | normal_rate)
    quarantined: int  # photos held out by this audit
    settings: dict[str, float]  # audit.* as used: confidence, tolerance, alpha, min_photos
    contradicted_photos: list[ContradictedPhoto]  # sorted by path, at most tasks.audit.MAX_LISTED


# --------------------------------------------------------------------------- dedup.json


@with_config(CONTRACT)
class Duplicate(TypedDict):
    path: str
    kind: Literal["exact", "near"]
    distance: int  # pHash distance to the kept photo


@with_config(CONTRACT)
class DuplicateGroup(TypedDict):
    group: str
    label: str
    kept: str  # the path of the photo kept
    duplicates: list[Duplicate]


@with_config(CONTRACT)
class LabelledFile(TypedDict):
    path: str
    label: str


@with_config(CONTRACT)
class ConflictGroup(TypedDict):
    group: str
    files: list[LabelledFile]


@with_config(CONTRACT)
class HeldOut(TypedDict):
    path: str
    reason: str  # the exclude list's reason, or the quarantine batch's


@with_config(CONTRACT)
class DedupReport(TypedDict):
    photos: int
    kept: int  # photos of each Status after dedup
    duplicate: int
    conflict: int
    excluded: int  # named in the exclude list (paths.exclude)
    quarantined: int  # in a batch the label audit holds out
    excluded_photos: list[HeldOut]
    quarantined_photos: list[HeldOut]
    exact_duplicates: int
    near_duplicates: int
    duplicate_groups: int
    conflict_groups: int
    kept_per_label: dict[str, int]
    groups: list[DuplicateGroup]
    conflicts: list[ConflictGroup]


# --------------------------------------------------------------------------- shard.json


@with_config(CONTRACT)
class ShardReport(TypedDict):
    counts: dict[str, dict[str, int]]  # split -> class -> photos
    class_names: list[str]
    examples: dict[str, int]  # split -> examples
    shards: dict[str, int]  # split -> shard files


# --------------------------------------------------------------------------- train.json


@with_config(CONTRACT)
class Trained(TypedDict):
    """The part of train.json that training determines (tasks.train's TrainResult.report)."""

    model: str
    parameters: int
    epochs_run: int
    best_epoch: int
    best: dict[str, float]  # the best epoch's metrics
    history: dict[str, list[float]]  # metric -> one value per epoch
    device: str
    precision: str
    replicas: int
    worker: int
    workers: int
    global_batch_size: int
    examples: dict[str, int]  # train and val


@with_config(CONTRACT)
class TensorFlowSettings(TypedDict):
    onednn: bool
    onednn_max_isa: str | None
    threads: int
    deterministic_ops: bool


@with_config(CONTRACT)
class WarmStart(TypedDict):
    from_sha256: str
    count: int


@with_config(CONTRACT)
class TrainReport(Trained):
    tensorflow: TensorFlowSettings
    warm_start: WarmStart | None  # None: trained from scratch
    start_reason: str


# --------------------------------------------------------------------------- metrics.json


@with_config(CONTRACT)
class ClassScores(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int


@with_config(CONTRACT)
class MetricsReport(TypedDict):
    examples: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    roc_auc: float | None  # None when the test split holds one class only
    log_loss: float | None  # None when the test split is empty
    ece: float
    robust_accuracy: NotRequired[float]  # the robustness slice, when it was measured
    robust_examples: NotRequired[int]
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]


# --------------------------------------------------------------------------- gate.json


@with_config(CONTRACT)
class GateDecision(TypedDict):
    """What tasks.model.gate.decide returns."""

    challenger_accuracy: float
    min_accuracy: float
    alpha: float
    test: str
    challenger_robust_accuracy: NotRequired[float]  # with a robustness slice
    min_robust_accuracy: NotRequired[float]
    champion_accuracy: float | None  # None: no champion to compare with
    p_value: float | None
    photos: NotRequired[int]  # McNemar's figures, when there is a champion
    challenger_wins: NotRequired[int]
    challenger_losses: NotRequired[int]
    p_worse: NotRequired[float]
    p_better: NotRequired[float]
    p_two_sided: NotRequired[float]
    promoted: bool
    decision: Decision
    reason: str


@with_config(CONTRACT)
class GateReport(GateDecision):
    model_sha256: str  # the model the decision is about


# --------------------------------------------------------------------------- scores.json


@with_config(CONTRACT)
class ScoresReport(TypedDict):
    accuracy: float
    f1_macro: float
    roc_auc: float | None
    ece: float
    gate: Decision


# --------------------------------------------------------------------------- reading and writing

T = TypeVar("T")


def problems(err: ValidationError) -> str:
    """Every problem of a ValidationError on one line, each naming its key: "missing key 'kept'"."""
    out = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"])
        if e["type"] == "missing":
            out.append(f"missing key {where!r}")
        elif e["type"] == "extra_forbidden":
            out.append(f"unknown key {where!r}")
        else:
            out.append(f"{where!r}: {e['msg']}" if where else e["msg"])
    return "; ".join(out)


class Report(Generic[T]):
    """One stage report: its file name in the reports folder, its contract and the stage that writes it."""

    def __init__(self, name: str, contract: type[T], stage: str) -> None:
        self.name, self.contract, self.stage = name, contract, stage
        self.adapter: TypeAdapter[T] = TypeAdapter(contract)

    def path(self, reports: Path) -> Path:
        return reports / self.name

    def check(self, report: T) -> str:
        """The JSON the report is written as, after checking it against the contract (PawflowError
        naming every missing, unknown or mistyped key: a bug of the stage code that built it)."""
        text = dumps_json(report)
        try:
            self.adapter.validate_json(text)
        except ValidationError as err:
            raise PawflowError(
                f"{self.name}: the {self.stage} stage built a report that breaks its contract "
                f"({self.contract.__name__} in tasks/reports/reports.py): {problems(err)}.",
                "This is a bug in pawflow: report it with this message.",
            ) from None
        return text

    def write(self, reports: Path, report: T) -> None:
        """Atomically, as deterministic JSON (sorted keys), once it matches the contract."""
        write_bytes(self.path(reports), self.check(report).encode("utf-8"))

    def read(self, reports: Path) -> T:
        """The report, typed; a missing file or one that breaks the contract is one PawflowError."""
        path = self.path(reports)
        redo = f"Run the {self.stage} stage again (`dvc repro -f {self.stage}`) to write it anew."
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PawflowError(f"{path} cannot be read: {err.strerror or err}.", redo) from None
        try:
            return self.adapter.validate_json(data)
        except ValidationError as err:
            raise PawflowError(f"{path} is not a valid {self.stage} report: {problems(err)}.", redo) from None

    def read_if_written(self, reports: Path) -> T | None:
        """The report, or None if the stage has not written it yet."""
        return self.read(reports) if self.path(reports).exists() else None


INGEST = Report("ingest.json", IngestReport, "ingest")
CLEAN = Report("clean.json", CleanReport, "clean")
AUDIT = Report("audit.json", AuditReport, "audit")
DEDUP = Report("dedup.json", DedupReport, "dedup")
SHARD = Report("shard.json", ShardReport, "shard")
TRAIN = Report("train.json", TrainReport, "train")
METRICS = Report("metrics.json", MetricsReport, "evaluate")
GATE = Report("gate.json", GateReport, "evaluate")
SCORES = Report("scores.json", ScoresReport, "evaluate")
REPORTS = (INGEST, CLEAN, AUDIT, DEDUP, SHARD, TRAIN, METRICS, GATE, SCORES)
