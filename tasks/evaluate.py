"""Evaluate: predictions on the test split, metrics, plots and a self-contained HTML report."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup
from PIL import Image
from sklearn import metrics as skm

from tasks.core.fileio import atomic_dir, write_json
from tasks.model import inference
from tasks.model.inference import as_class_probs  # noqa: F401  (re-exported: evaluate.as_class_probs)
from tasks.photos import images
from tasks.photos.datasetinfo import DatasetInfo
from tasks.reports import present

if TYPE_CHECKING:
    from tasks.predict import ModelCard
from tasks.reports.reports import GateDecision, MetricsReport, ScoresReport, TrainReport


@dataclass
class Predictions:
    """Class probabilities (n, classes) for the test photos, with their true labels and paths."""

    probs: np.ndarray
    labels: np.ndarray
    paths: list[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def predict(model, dataset, tta: bool = False) -> tuple[Predictions, dict[str, bytes]]:
    """Run a Keras model over a (image, target, path, jpeg) dataset; also returns the wrong photos' JPEGs.

    tta: average with the mirrored photo (tasks.model.inference.class_probs, as `pawflow predict` does)."""
    probs, labels, paths = [], [], []
    jpegs: dict[str, bytes] = {}
    for batch_images, targets, batch_paths, batch_jpegs in dataset:
        probs.append(inference.class_probs(model, batch_images, tta))
        t = targets.numpy()
        labels.append(t[:, 0].astype(int) if t.shape[1] == 1 else t.argmax(axis=1))
        names = [p.decode("utf-8") for p in batch_paths.numpy()]
        paths += names
        jpegs.update(zip(names, batch_jpegs.numpy(), strict=True))
    if not probs:
        return Predictions(np.zeros((0, 2)), np.zeros(0, dtype=int), []), {}
    pred = Predictions(np.concatenate(probs), np.concatenate(labels), paths)
    return pred, {p: jpegs[p] for p, ok in zip(pred.paths, pred.correct, strict=True) if not ok}


# --------------------------------------------------------------------------- robustness slice


def _uniforms(key: str, n: int) -> list[float]:
    """n numbers in [0, 1) that depend on `key` only (not on a global RNG, the run order or library
    versions): consecutive 32-bit slices of sha256(key)."""
    digest = hashlib.sha256(b"pawflow-robustness\0" + key.encode("utf-8")).digest()
    return [int.from_bytes(digest[4 * i : 4 * i + 4], "big") / 2**32 for i in range(n)]


def render_web(jpeg: bytes, key: str, max_side: int, quality: tuple[int, int], crop: float) -> bytes:
    """A photo re-rendered the way web photos arrive: a mild crop (up to `crop` of each side cut away,
    aspect kept, at a random place), the longer side scaled down to at most max_side (never up), saved
    as JPEG at a quality in [low, high]. The draws are seeded by `key` (the photo's path), so the same
    photo is always rendered to the same bytes."""
    u_crop, u_left, u_top, u_quality = _uniforms(key, 4)
    im, _ = images.to_rgb(Image.open(io.BytesIO(jpeg)))
    width, height = im.size
    keep = 1.0 - crop * u_crop
    w, h = max(1, round(width * keep)), max(1, round(height * keep))
    left, top = round((width - w) * u_left), round((height - h) * u_top)
    im = im.crop((left, top, left + w, top + h))
    box = images._scaled_box(w, h, max_side)
    if box != im.size:  # the shard stage's resampling (tasks.photos.images.check_bytes)
        im = im.resize(box, Image.Resampling.BILINEAR, reducing_gap=2.0)
    low, high = quality
    return images.encode_jpeg(im, low + min(int(u_quality * (high - low + 1)), high - low))


def predict_robust(
    model,
    records: Iterable[tuple[str, int, bytes]],
    image_size: int,
    batch_size: int,
    tta: bool,
    render: dict,
    settings: images.CheckSettings,
) -> Predictions:
    """The robustness slice: every (path, label, shard JPEG) record rendered by render_web(**render),
    then prepared exactly as `pawflow predict` prepares a photo it is given (tasks.predict.prepare_bytes,
    then tasks.model.inference), and classified."""
    from tasks.predict import prepare_bytes

    probs, labels, paths = [], [], []
    batch: list[bytes] = []

    def flush() -> None:
        if batch:
            probs.append(inference.class_probs(model, inference.decode_resize(batch, image_size), tta))
            batch.clear()

    for path, label, jpeg in records:
        thumb, error = prepare_bytes(render_web(jpeg, path, **render), settings)
        if thumb is None:  # our own JPEG of a photo that passed clean: a bug, not bad input
            raise ValueError(f"the robustness rendering of {path} cannot be prepared: {error}")
        batch.append(thumb)
        labels.append(label)
        paths.append(path)
        if len(batch) == batch_size:
            flush()
    flush()
    if not probs:
        return Predictions(np.zeros((0, 2)), np.zeros(0, dtype=int), [])
    return Predictions(np.concatenate(probs), np.array(labels, dtype=int), paths)


def split_records(processed: Path, info: DatasetInfo, split: str) -> Iterable[tuple[str, int, bytes]]:
    """(path, label, JPEG) of every photo of a split, in shard order."""
    from tasks.photos import tfrecord

    files = info.split_paths(processed, split)
    for ex in tfrecord.read(files):
        yield ex["path"].numpy().decode("utf-8"), int(ex["label"].numpy()), ex["image/encoded"].numpy()


def predict_test_photos(
    model_path: Path,
    processed: Path,
    info: DatasetInfo,
    card: ModelCard,
    batch_size: int,
    tta: bool,
    robustness: dict | None = None,
) -> tuple[Predictions, dict[str, bytes]]:
    """The model's class probabilities for every test photo, with the JPEGs of the photos it gets
    wrong. With `robustness` (evaluate.robustness): of the robustness slice instead (predict_robust;
    no JPEGs). card: the model's model.json (its image size and how its shards were made)."""
    import keras

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    image_size = card.image_size
    if robustness is None:
        from tasks import train

        dataset = train.make_dataset(
            train.split_files(processed, info, "test"),
            num_classes=info.num_classes,
            image_size=image_size,
            batch_size=batch_size,
            with_meta=True,
        )
        return predict(model, dataset, tta)
    from tasks.predict import settings_for

    robust = predict_robust(
        model,
        split_records(processed, info, "test"),
        image_size,
        batch_size,
        tta,
        robustness,
        # the rendered photo is a JPEG of at most max_side**2 pixels: neither limit ever refuses it
        settings_for(card, max_pixels=robustness["max_side"] ** 2, formats=("JPEG",)),
    )
    return robust, {}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Reliability diagram data: per confidence bin, mean confidence, accuracy and count."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append(
                {
                    "bin": b,
                    "confidence": float(confidence[m].mean()),
                    "accuracy": float(correct[m].mean()),
                    "count": int(m.sum()),
                }
            )
    return pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "count"])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    cal = calibration_bins(confidence, correct, bins)
    if cal.empty:
        return 0.0
    return float((cal["count"] / cal["count"].sum() * (cal["accuracy"] - cal["confidence"]).abs()).sum())


def defined(value: float | None) -> float | None:
    """A metric as a JSON number, or None where it is not defined (NaN or infinite: JSON has no such
    numbers, and json.dumps refuses them). Reports show None as n/a (tasks.core.text.shown)."""
    return None if value is None or not math.isfinite(value) else float(value)


def roc_auc(pred: Predictions, k: int) -> float | None:
    """ROC AUC (macro one-vs-rest above two classes), or None when a class the model knows is missing
    from the test split: its own AUC, and so the macro average, is not defined (a NaN in scikit-learn)."""
    if len(np.unique(pred.labels)) < k:
        return None
    if k == 2:
        return defined(skm.roc_auc_score(pred.labels, pred.probs[:, 1]))
    return defined(skm.roc_auc_score(pred.labels, pred.probs, multi_class="ovr", average="macro"))


def compute_metrics(
    pred: Predictions, class_names: list[str], bins: int, robust: Predictions | None = None
) -> MetricsReport:
    """reports/metrics.json: accuracy, per-class and macro precision/recall/F1, ROC AUC, log loss, ECE;
    with `robust` (the robustness slice's predictions) also its accuracy and photo count. A metric the
    test split does not define is None (null in JSON, n/a in the reports), never NaN."""
    y, yhat, k = pred.labels, pred.predicted, len(class_names)
    labels = list(range(k))
    p, r, f, s = skm.precision_recall_fscore_support(y, yhat, labels=labels, zero_division=0)
    out: MetricsReport = {
        "examples": len(y),
        "accuracy": float(np.mean(y == yhat)) if len(y) else 0.0,
        "precision_macro": float(np.mean(p)),
        "recall_macro": float(np.mean(r)),
        "f1_macro": float(np.mean(f)),
        "roc_auc": roc_auc(pred, k),
        "log_loss": defined(skm.log_loss(y, np.clip(pred.probs, 1e-7, 1 - 1e-7), labels=labels))
        if len(y)
        else None,
        "ece": expected_calibration_error(pred.confidence, pred.correct, bins),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(y, yhat, labels=labels).tolist(),
    }
    if robust is not None:  # (metrics.json's keys are written sorted: their order here does not show)
        out["robust_accuracy"] = float(np.mean(robust.correct)) if len(robust.labels) else 0.0
        out["robust_examples"] = len(robust.labels)
    return out


def scores(m: MetricsReport, gate: GateDecision) -> ScoresReport:
    """reports/scores.json, what `dvc metrics show` prints: the model's headline numbers and the gate's
    decision, narrow enough for one screen."""
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "roc_auc": m["roc_auc"],
        "ece": m["ece"],
        "gate": gate["decision"],
    }


# The headline numbers of reports/metrics.json, in the order the report and the run summary show them.
HEADLINE = tuple(present.METRICS)


def summary_rows(m: MetricsReport, gate: GateDecision, tta: bool) -> list[list[str]]:
    """The evaluate stage's table (terminal and Prefect): the headline metrics as a person reads them,
    how they were obtained, the gate."""
    rows = [[label, value] for label, value, _ in present.metric_rows(m)]
    return [
        *rows,
        ["each photo and its mirror averaged (evaluate.tta)", present.yes_no(tta)],
        ["gate", str(gate["decision"])],
        ["gate p-value (McNemar, vs the champion)", present.p_value(gate.get("p_value"))],
    ]


# models/champion/: the promoted model.keras, its model.json (+ tta) and this card of why it was promoted.
CHAMPION_CARD = "champion.json"


def promote(models: Path, champion_dir: Path, m: MetricsReport, gate: GateDecision, tta: bool) -> None:
    """If the gate promoted models/model.keras: it becomes the champion, with its model.json (plus how
    it was evaluated, so `pawflow predict` repeats it: tasks.predict.load) and the metrics and gate
    that promoted it. If not, the champion stays; a first run leaves a card saying why there is none
    (the folder is a DVC output: it must exist)."""
    if gate["promoted"]:
        with atomic_dir(champion_dir) as tmp:
            (tmp / "model.keras").write_bytes((models / "model.keras").read_bytes())
            card = json.loads((models / "model.json").read_text())
            write_json(tmp / "model.json", {**card, "tta": tta})
            write_json(tmp / CHAMPION_CARD, {"metrics": m, "gate": gate})
    elif not champion_dir.exists():
        with atomic_dir(champion_dir) as tmp:
            write_json(tmp / CHAMPION_CARD, {"champion": None, "why": gate["reason"]})


def comparable_champion(champion_dir: Path, class_names: list[str]) -> tuple[bool, str]:
    """Whether the champion in champion_dir can be compared with a model of class_names (it exists and
    knows the same classes), and if not, why."""
    if not (champion_dir / "model.keras").exists():
        return False, "no champion yet"
    theirs = json.loads((champion_dir / "model.json").read_text())["class_names"]
    if theirs != class_names:
        return False, f"the champion knows other classes ({theirs}): it cannot be compared"
    return True, ""


def write_plot_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    """reports/plots/<name>.csv for `dvc plots show`, replacing the folder atomically."""
    with atomic_dir(folder) as tmp:
        for name, df in tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False, float_format="%.6g")


def plot_tables(pred: Predictions, class_names: list[str], bins: int) -> dict[str, pd.DataFrame]:
    """The data behind `dvc plots show` (CSV files under reports/plots/)."""
    names = np.array(class_names)
    tables = {"confusion": pd.DataFrame({"actual": names[pred.labels], "predicted": names[pred.predicted]})}
    if len(class_names) == 2:
        score, truth = pred.probs[:, 1], pred.labels
    else:  # micro-average: every (photo, class) pair is a binary decision
        score = pred.probs.reshape(-1)
        truth = (np.arange(len(class_names))[None, :] == pred.labels[:, None]).reshape(-1).astype(int)
    if len(np.unique(truth)) > 1:
        fpr, tpr, thr = skm.roc_curve(truth, score)
        prec, rec, pthr = skm.precision_recall_curve(truth, score)
        tables["roc"] = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
        tables["precision_recall"] = pd.DataFrame(
            {"recall": rec[:-1], "precision": prec[:-1], "threshold": pthr}
        )
    tables["calibration"] = calibration_bins(pred.confidence, pred.correct, bins)
    return tables


# --------------------------------------------------------------------------- pictures


@contextlib.contextmanager
def literal_text() -> Iterator[None]:
    """matplotlib with math text off while the block draws: a `$` in a class or file name (`A$b$`,
    `x$^$.jpg`) is drawn as it is, instead of going to the math-text parser, which renders `$...$` as a
    formula and raises on many (the report was then never written). TeX is off too."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def render_plots(
    m: MetricsReport,
    tables: dict[str, pd.DataFrame],
    class_names: list[str],
    history: dict[str, list[float]] | None,
) -> dict[str, bytes]:
    """PNG pictures for the HTML report (it must open offline, so no JavaScript charts)."""
    with literal_text():
        return _render_plots(m, tables, class_names, history)


def _render_plots(
    m: MetricsReport,
    tables: dict[str, pd.DataFrame],
    class_names: list[str],
    history: dict[str, list[float]] | None,
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    cm = np.array(m["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(3.2 + 0.4 * len(class_names), 2.8 + 0.4 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title("Confusion matrix (test)")
    out["confusion"] = _figure_png(fig)
    if "roc" in tables:
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        ax.plot(tables["roc"]["fpr"], tables["roc"]["tpr"], label=f"AUC {present.decimal(m['roc_auc'])}")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
        ax.legend(loc="lower right")
        out["roc"] = _figure_png(fig)
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        ax.plot(tables["precision_recall"]["recall"], tables["precision_recall"]["precision"])
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", ylim=(0, 1.02))
        out["precision_recall"] = _figure_png(fig)
    cal = tables["calibration"]
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot(cal["confidence"], cal["accuracy"], marker="o")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Calibration (ECE {present.decimal(m['ece'])})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    out["calibration"] = _figure_png(fig)
    if history:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            for prefix, style in (("", "-"), ("val_", "--")):
                if prefix + key in history:
                    ax.plot(
                        range(1, len(history[prefix + key]) + 1),
                        history[prefix + key],
                        style,
                        label=(prefix or "train_").rstrip("_"),
                    )
            ax.set(xlabel="epoch", title=key)
            ax.legend()
        out["training"] = _figure_png(fig)
    return out


# The mistakes grid of evaluation.html: thumbnails this many px on their longer side, captions in the
# page's own text (readable at any zoom, selectable, escaped) instead of text drawn into a picture.
MISTAKE_SIDE = 176
MISTAKE_QUALITY = 85


@dataclass(frozen=True)
class Mistake:
    """A test photo the model got wrong: what it is, what the model said, and a thumbnail (JPEG)."""

    path: str
    true: str
    predicted: str
    confidence: float
    width: int
    height: int
    thumbnail: bytes


def worst(pred: Predictions, count: int) -> np.ndarray:
    """Indices of the `count` most confident wrong predictions, most confident first (ties: test order)."""
    wrong = np.flatnonzero(~pred.correct)
    return wrong[np.argsort(-pred.confidence[wrong], kind="stable")][:count]


def mistakes(pred: Predictions, jpegs: dict[str, bytes], class_names: list[str], count: int) -> list[Mistake]:
    """The most confident mistakes, each with a thumbnail of the photo the model saw (the shard's JPEG)."""
    out = []
    for i in worst(pred, count):
        im, _ = images.to_rgb(Image.open(io.BytesIO(jpegs[pred.paths[i]])))
        size = im.size
        im.thumbnail((MISTAKE_SIDE, MISTAKE_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
        out.append(
            Mistake(
                path=pred.paths[i],
                true=class_names[pred.labels[i]],
                predicted=class_names[pred.predicted[i]],
                confidence=float(pred.confidence[i]),
                width=size[0],
                height=size[1],
                thumbnail=images.encode_jpeg(im, MISTAKE_QUALITY),
            )
        )
    return out


def worst_mistakes(pred: Predictions, jpegs: dict[str, bytes], class_names: list[str], count: int) -> bytes:
    """reports/misclassified.png: the most confident mistakes in one picture, each titled with its file,
    true and predicted class and confidence (text drawn literally: no math-text parsing of names)."""
    with literal_text():
        return _worst_mistakes(pred, jpegs, class_names, count)


def _worst_mistakes(pred: Predictions, jpegs: dict[str, bytes], class_names: list[str], count: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = worst(pred, count)
    cols = 4
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.8, rows * 3.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(Image.open(io.BytesIO(jpegs[pred.paths[i]])))
        ax.set_title(
            f"{Path(pred.paths[i]).name}\ntrue {class_names[pred.labels[i]]}, predicted "
            f"{class_names[pred.predicted[i]]}\n{present.percent(pred.confidence[i], 0)} sure",
            fontsize=10,
            parse_math=False,
        )
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test split", ha="center", va="center", fontsize=11)
    fig.suptitle("Most confident mistakes (test split)", fontsize=13)
    return _figure_png(fig)


# --------------------------------------------------------------------------- the HTML report


@dataclass(frozen=True)
class Scored:
    """What a report scored, by content hash only (a date or a commit would make the tracked report
    differ between two runs of the same inputs: they are in the run history and the Prefect artifact)."""

    model_sha256: str  # of models/model.keras
    dataset_sha256: str  # of data/processed/dataset_info.json, which lists every shard's sha256
    test_shards: tuple[tuple[str, str, int], ...]  # (file, sha256, photos) of the test split's shards
    test_counts: tuple[tuple[str, int], ...]  # (class, test photos)


def scored(info: DatasetInfo, dataset_sha256: str, model_sha256: str) -> Scored:
    return Scored(
        model_sha256=model_sha256,
        dataset_sha256=dataset_sha256,
        test_shards=tuple((s.file, s.sha256, s.examples) for s in info.splits["test"].shards),
        test_counts=tuple((c, info.counts["test"].get(c, 0)) for c in info.class_names),
    )


def _img(png: bytes, alt: str, kind: str = "png") -> Markup:
    b64 = base64.b64encode(png).decode()
    return Markup('<img alt="{}" src="data:image/{};base64,{}">').format(alt, kind, b64)


def _tensorflow(tf: Mapping[str, Any] | None) -> str:
    """reports/train.json's tensorflow settings in words."""
    if not tf:
        return present.NA
    onednn = "oneDNN " + ("on" if tf["onednn"] else "off")
    if tf["onednn"] and tf.get("onednn_max_isa"):
        onednn += f" (capped at {tf['onednn_max_isa']})"
    return f"{onednn}, {tf['threads']} threads, deterministic ops {present.yes_no(tf['deterministic_ops'])}"


def _start(train_report: Mapping[str, Any]) -> str:
    warm = train_report.get("warm_start")
    start = (
        f"warm start #{warm['count']} from the champion {present.short_sha(warm['from_sha256'])}"
        if warm
        else "from scratch"
    )
    reason = train_report.get("start_reason")
    return f"{start}: {reason}" if reason else start


# reports/evaluation.html; jinja escapes every value (autoescape), pictures are Markup.
_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters.update(
    img=_img,
    pct=present.percent,
    pct0=lambda x: present.percent(x, 0),
    dec=present.decimal,
    num=present.count,
    sha=present.short_sha,
)
HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pawflow evaluation</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#111;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:.3em .7em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
.verdict{font-size:1.25em;font-weight:bold;padding:.5em .8em;border-radius:4px}
.verdict.promoted{background:#dff0d8}.verdict.rejected{background:#f8e0e0}
.passed{color:#1a6b1a;font-weight:bold}.failed{color:#a31515;font-weight:bold}
.plots img{margin:.3em;vertical-align:top;max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;width:{{ side + 8 }}px}
figure img{display:block;max-width:{{ side }}px;max-height:{{ side }}px;border:1px solid #888}
figcaption{font-size:.95em;margin-top:.3em;overflow-wrap:anywhere}
figcaption .said{font-weight:bold;color:#a31515}
figcaption .file{color:#333;font-size:.9em}
</style>
</head><body>
<h1>pawflow evaluation</h1>
<p class="verdict {{ 'promoted' if gate.promoted else 'rejected' }}">{{ sentence }}</p>
<table>
<tr><th>test accuracy</th><td class="n">{{ m.accuracy | pct }}</td>\
<td>{{ right | num }} of {{ m.examples | num }} test photos right</td></tr>
{% if "robust_accuracy" in m %}<tr><th>robustness-slice accuracy</th><td class="n">\
{{ m.robust_accuracy | pct }}</td><td>the same photos re-rendered as web photos arrive</td></tr>{% endif %}
<tr><th>ROC AUC</th><td class="n">{{ m.roc_auc | dec }}</td><td>0.5 is chance, 1 is perfect</td></tr>
</table>

<h2>What was scored</h2>
<table>
<tr><th>model</th><td>models/model.keras, sha256 <code>{{ what.model_sha256 }}</code>\
{% if train_report %}<br>{{ train_report.get("model", "n/a") }}, \
{{ train_report.get("parameters") | num }} parameters{% endif %}</td></tr>
<tr><th>dataset version</th><td>data/processed/dataset_info.json, \
sha256 <code>{{ what.dataset_sha256 }}</code> (it lists the sha256 of every shard)</td></tr>
<tr><th>test split</th><td>{{ m.examples | num }} photos: \
{% for c, n in what.test_counts %}{{ n | num }} {{ c }}{{ ", " if not loop.last }}{% endfor %}; \
{{ what.test_shards | length }} shard file{{ "s" if what.test_shards | length != 1 }}:\
{% for f, sha, n in what.test_shards %}<br>{{ f }} ({{ n | num }} photos) <code>{{ sha }}</code>\
{% endfor %}</td></tr>
<tr><th>how</th><td>{% if tta %}each photo and its mirror image classified, their probabilities averaged \
(evaluate.tta){% else %}each photo classified once (evaluate.tta is off){% endif %}</td></tr>
</table>

<h2>Promotion gate</h2>
<p>{{ sentence }}</p>
<table><tr><th>check</th><th>needs</th><th>this model</th><th>result</th></tr>
{% for check, needs, this, result in checks %}<tr><td>{{ check }}</td><td>{{ needs }}</td><td>{{ this }}</td>\
<td class="{{ result }}">{{ result }}</td></tr>
{% endfor %}</table>

<h2>Metrics (test split)</h2>
<table><tr><th>metric</th><th>value</th><th>what it says</th></tr>
{% for label, value, meaning in metrics %}<tr><th>{{ label }}</th><td class="n">{{ value }}</td>\
<td>{{ meaning }}</td></tr>
{% endfor %}</table>

<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>test photos</th></tr>
{% for c in class_names %}{% set v = m.per_class[c] %}<tr><th>{{ c }}</th>\
<td class="n">{{ v.precision | pct }}</td><td class="n">{{ v.recall | pct }}</td>\
<td class="n">{{ v.f1 | pct }}</td><td class="n">{{ v.support | num }}</td></tr>
{% endfor %}</table>
{% if "robust_accuracy" in m and robustness %}
<h2>Robustness slice</h2><p>Accuracy <b>{{ m.robust_accuracy | pct }}</b> on the same \
{{ m.robust_examples | num }} test photos re-rendered the way web photos arrive: up to \
{{ robustness.crop | pct0 }} of each side cropped away, the longer side at most {{ robustness.max_side }} px \
(never enlarged), saved as JPEG at quality {{ robustness.quality[0] }}-{{ robustness.quality[1] }} \
(evaluate.robustness; each photo's draws depend on its path only), then prepared as \
<code>pawflow predict</code> prepares any photo. Test accuracy minus this: \
{{ "{:+.1f}".format(100 * (m.accuracy - m.robust_accuracy)) }} points.</p>
{% endif %}
{% if train_report %}
<h2>Training</h2>
<table>
<tr><th>model</th><td>{{ train_report.get("model", "n/a") }}, {{ train_report.get("parameters") | num }} \
parameters</td></tr>
<tr><th>epochs</th><td>{{ train_report.get("epochs_run") | num }} run, the best (kept) was epoch \
{{ train_report.get("best_epoch") | num }}</td></tr>
<tr><th>start</th><td>{{ start }}</td></tr>
<tr><th>TensorFlow</th><td>{{ tensorflow }}</td></tr>
</table>
{% endif %}
<h2>Plots</h2><div class="plots">{% for k in pictures if k in pngs %}{{ pngs[k] | img(k) }}{% endfor %}</div>

<h2>Most confident mistakes</h2>
{% if mistakes %}<p>The {{ mistakes | length }} test photos the model got wrong with the most confidence \
(evaluate.misclassified), as the model saw them.</p>
<div class="grid">{% for x in mistakes %}
<figure>{{ x.thumbnail | img(x.path, "jpeg") }}<figcaption>true <b>{{ x.true }}</b>, predicted \
<span class="said">{{ x.predicted }}</span> ({{ x.confidence | pct0 }} sure)<br>\
<span class="file">{{ x.path }} ({{ x.width }}x{{ x.height }})</span></figcaption></figure>{% endfor %}
</div>
{% else %}<p>No mistakes: the model classified every test photo right.</p>{% endif %}
</body></html>
"""
# The plots in the order the report shows them. Of reports/train.json the report shows what the inputs
# determine only (no timings, memory or host: those are in the run history).
PICTURES = ("training", "confusion", "roc", "precision_recall", "calibration")


def html_report(
    m: MetricsReport,
    gate: GateDecision,
    pngs: dict[str, bytes],
    mistakes: list[Mistake],
    class_names: list[str],
    train_report: TrainReport | None,
    scored: Scored,
    tta: bool = False,
    robustness: dict | None = None,
) -> str:
    """reports/evaluation.html: one file with every picture inlined, so it opens anywhere offline;
    the same inputs give the same bytes (it is a DVC output).

    tta and robustness (evaluate.tta, evaluate.robustness) say how the numbers were obtained."""
    return _ENV.from_string(HTML_TEMPLATE).render(
        m=m,
        gate=gate,
        sentence=present.gate_sentence(gate),
        checks=present.gate_checks(gate),
        metrics=present.metric_rows(m),
        right=round(m["accuracy"] * m["examples"]),
        pngs=pngs,
        mistakes=mistakes,
        side=MISTAKE_SIDE,
        class_names=class_names,
        train_report=train_report,
        start=_start(train_report or {}),
        tensorflow=_tensorflow(train_report.get("tensorflow") if train_report else None),
        what=scored,
        tta=tta,
        robustness=robustness,
        pictures=PICTURES,
    )
