"""params.yaml: the pydantic model that validates it (unknown and missing keys refused) and its one reader.

The model holds types and limits, never values: params.yaml lists every key with its value."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.core.errors import PawflowError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """A params.yaml section: types and limits only. No field has a default: every value is in
    params.yaml (the one copy), and a missing key is refused with its name (parse_params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    raw: Path
    interim: Path
    processed: Path
    models: Path
    reports: Path
    cache: Path
    exclude: Path


# runner.workers: the per-photo work is CPU-bound, so workers beyond the machine's cores only cost memory
# (a process worker holds ~250 MB: 10,000 of them would exhaust any machine before doing any work); 256
# covers the largest two-socket servers (2 x 128 hardware threads).
MAX_WORKERS = 256


class Runner(Section):
    kind: Literal["threads", "processes", "dask"]
    workers: Annotated[int, Field(gt=0, le=MAX_WORKERS)]
    chunk_size: PositiveInt
    dask_address: str | None
    connect_timeout_s: Annotated[float, Field(gt=0)]
    no_worker_timeout_s: Annotated[float, Field(gt=0)]


class Ingest(Section):
    source: str = Field(min_length=1)
    mode: Literal["mirror", "append"]
    max_removed_fraction: Fraction
    sha256: str | None
    max_archive_bytes: PositiveInt
    max_archive_files: PositiveInt
    max_member_ratio: Annotated[float, Field(ge=1)]
    max_archive_ratio: Annotated[float, Field(ge=1)]
    ratio_grace_bytes: Annotated[int, Field(ge=0)]
    download_retries: PositiveInt
    download_timeout_s: Annotated[float, Field(gt=0)]
    download_deadline_s: Annotated[float, Field(gt=0)]
    max_download_bytes: PositiveInt

    @field_validator("source")
    @classmethod
    def _kind(cls, v: str) -> str:
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme and scheme not in ("http", "https"):
            raise ValueError(
                f"{scheme}:// is not supported: use a local folder or archive, or an http(s) URL"
            )
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("should be a sha256: 64 lowercase hex digits (or null: recorded, not checked)")
        return v


GreyLevel = Annotated[int, Field(ge=0, le=256)]


class CleanFlags(Section):
    """Limits of the quality flags (tasks.photos.images.FLAGS): a kept photo past one is flagged, never
    rejected. 0 (or 256 for bright_level) turns a flag off."""

    near_blank_contrast: Annotated[float, Field(ge=0)]
    dark_level: GreyLevel
    bright_level: GreyLevel
    blurry_sharpness: Annotated[float, Field(ge=0)]
    low_information_bits: Annotated[float, Field(ge=0, le=8)]


class Clean(Section):
    min_side: PositiveInt
    max_aspect_ratio: Annotated[float, Field(ge=1.0)]
    max_pixels: PositiveInt
    formats: tuple[str, ...]
    max_reject_fraction: Fraction
    timeout_s: Annotated[float, Field(gt=0)]
    flags: CleanFlags

    @model_validator(mode="after")
    def _some_photo_fits(self) -> Clean:
        if self.min_side**2 > self.max_pixels:
            raise ValueError(
                f"min_side {self.min_side} px squared is above max_pixels {self.max_pixels}: every photo "
                "would be rejected (too_small or decompression_bomb)"
            )
        return self

    @field_validator("formats")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one image format, e.g. [JPEG, PNG]")
        names = tuple(sorted({f.upper() for f in v}))
        valid = image_formats()
        unknown = [f for f in names if f not in valid]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not an image format name that Pillow reports "
                f"(a file's format, not its extension: JPEG for .jpg). Valid: {', '.join(sorted(valid))}"
            )
        return names


class Audit(Section):
    """audit: the champion's check of a run's new photos (tasks/audit.py)."""

    confidence: Annotated[float, Field(gt=0.5, le=1.0)]
    tolerance: Fraction
    alpha: Annotated[float, Field(gt=0, lt=1)]
    min_photos: PositiveInt


def image_formats() -> set[str]:
    """The format names Pillow gives decoded images (what clean compares with clean.formats)."""
    from PIL import Image

    Image.init()
    return set(Image.OPEN) | {"MPO"}  # JPEG's opener names multi-picture JPEGs MPO


class Dedup(Section):
    hash_size: Annotated[int, Field(ge=4, le=16)]
    max_distance: Annotated[int, Field(ge=0, le=32)]

    @model_validator(mode="after")
    def _below_chance(self) -> Dedup:
        # Two unrelated photos' hashes differ in about half their bits: at that distance every photo is
        # a "near duplicate" of most others (whole labels collapse to one photo, and every photo that
        # looks like one of another label becomes a conflict).
        bits = self.hash_size**2
        if self.max_distance > bits // 2:
            raise ValueError(
                f"max_distance {self.max_distance} is more than half of the {bits} bits of a hash_size "
                f"{self.hash_size} hash: unrelated photos would count as near duplicates "
                f"(at most {bits // 2}; 4 of 64 bits is the usual setting)"
            )
        return self


class Split(Section):
    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1 (they sum to {total:g})")
        if self.train == 0 or self.test == 0:
            raise ValueError("train and test fractions must be above 0")
        return self

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Shard(Section):
    split: Split
    salt: str
    max_side: Annotated[int, Field(ge=16, le=4096)]
    jpeg_quality: Annotated[int, Field(ge=50, le=100)]
    shard_bytes: Annotated[int, Field(ge=1_000)]


JpegQuality = Annotated[int, Field(ge=1, le=100)]


class Augment(Section):
    """train.augment (tasks/model/augment.py): the train split only; 0/false/null turns each one off."""

    flip: bool
    rotation: Annotated[float, Field(ge=0, le=0.5)]
    zoom: Annotated[float, Field(ge=0, lt=1)]
    translation: Annotated[float, Field(ge=0, lt=1)]
    contrast: Annotated[float, Field(ge=0, lt=1)]
    crop: Annotated[float, Field(ge=0, lt=1)]
    downsample: Annotated[float, Field(ge=0, lt=1)]
    jpeg_quality: tuple[JpegQuality, JpegQuality] | None

    @field_validator("jpeg_quality")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"[low, high] with low <= high, e.g. [40, 95] (got {list(v)})")
        return v


class Finetune(Section):
    """train.finetune: how a warm start fine-tunes the champion (tasks/base.py decides when)."""

    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    schedule: Literal["cosine", "constant"]
    max_growth: Annotated[float, Field(ge=0)]
    max_warm_starts: PositiveInt | None


# pawnet doubles its width at each stage: the widest stage has width * 2**(stages - 1) filters. ResNet-50's
# widest has 2048; at 8192 a single 3x3 convolution of that stage holds 600M weights (2.4 GB), beyond what
# any machine this runs on trains.
MAX_PAWNET_FILTERS = 8192


class Train(Section):
    model: Literal["pawnet", "seed_cnn", "keras_xception"]
    backbone: Literal["mobilenet_v2"] | None
    backbone_weights: str | None
    width: Annotated[int, Field(ge=4, le=512)]
    blocks: Annotated[tuple[Annotated[int, Field(ge=1, le=8)], ...], Field(min_length=1)]
    separable: bool
    dropout: Annotated[float, Field(ge=0, lt=1)]
    image_size: Annotated[int, Field(ge=16, le=1024)]
    batch_size: PositiveInt
    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]
    warmup_epochs: Annotated[int, Field(ge=0)]
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)]
    early_stopping_patience: PositiveInt
    shuffle_buffer: PositiveInt
    seed: int
    augment: Augment
    mixed_precision: Literal["auto", "on", "off"]
    jit_compile: bool
    finetune: Finetune

    @model_validator(mode="after")
    def _trainable(self) -> Train:
        problems = []
        if 0 < self.epochs <= self.warmup_epochs:
            problems.append(
                f"warmup_epochs {self.warmup_epochs} is not shorter than epochs {self.epochs}: the learning "
                "rate would still be warming up when training ends (set warmup_epochs below epochs, or 0 "
                "for a run this short)"
            )
        if self.model == "pawnet" and self.backbone is None:
            stages = len(self.blocks)
            widest = self.width * 2 ** (stages - 1)
            if widest > MAX_PAWNET_FILTERS:
                problems.append(
                    f"width {self.width} doubled over {stages} stages gives {widest:,} filters in the last "
                    f"stage (at most {MAX_PAWNET_FILTERS:,}): lower width or use fewer stages in blocks"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TensorFlow(Section):
    onednn: bool
    onednn_max_isa: Literal[
        "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "ALL"
    ]
    threads: Annotated[int, Field(ge=1, le=1024)]
    deterministic_ops: bool


class Robustness(Section):
    """How the test split is re-rendered the way web photos arrive (evaluate's robustness slice)."""

    max_side: Annotated[int, Field(ge=16, le=4096)]
    quality: tuple[JpegQuality, JpegQuality]
    crop: Annotated[float, Field(ge=0, lt=0.5)]

    @field_validator("quality")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"[low, high] with low <= high, e.g. [50, 60] (got {list(v)})")
        return v


class Evaluate(Section):
    min_accuracy: Fraction
    min_robust_accuracy: Fraction
    alpha: Annotated[float, Field(gt=0, lt=1)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    misclassified: Annotated[int, Field(ge=1, le=100)]  # 0 refused: reports/misclassified.png is a DVC output
    batch_size: PositiveInt
    tta: bool
    robustness: Robustness


class Pipeline(Section):
    schedule: str
    full_schedule: str
    timezone: str
    push: bool
    push_retries: Annotated[int, Field(ge=0)]
    push_retry_delay_s: Annotated[float, Field(ge=0)]
    history: Path
    keep_runs: PositiveInt
    keep_history: PositiveInt
    alert_url: str | None = Field(pattern=r"^https?://\S+$")
    alert_timeout_s: Annotated[float, Field(gt=0)]
    alert_reject_fraction: Fraction

    @field_validator("schedule", "full_schedule")
    @classmethod
    def _cron(cls, v: str, info: ValidationInfo) -> str:
        if info.context and info.context.get("light"):
            return v  # the DVC check stage: Prefect takes seconds to import; serve and the pipeline check it
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=v)
        except ValueError:
            raise ValueError(f"not a cron expression: {v!r} (e.g. '0 3 * * *' for 03:00 every day)") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or Europe/Paris)") from None
        return v


class Data(Section):
    """`pawflow data` (make data): the photos for a workspace that has none (tasks/photos/getdata.py)."""

    url: str = Field(pattern=r"^https?://")
    sha256: str
    archive: Path

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("should be a sha256: 64 lowercase hex digits")
        return v


class Params(Section):
    paths: Paths
    runner: Runner
    ingest: Ingest
    clean: Clean
    audit: Audit
    dedup: Dedup
    shard: Shard
    train: Train
    tensorflow: TensorFlow
    evaluate: Evaluate
    pipeline: Pipeline
    data: Data


def _key(loc: tuple[int | str, ...]) -> str:
    """A location as the user writes it: train.blocks[0], not train.blocks.0."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _section_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The Section model that validates the mapping at loc (Params for the top level), if any."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _nearest(loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """The known key of the same section closest to an unknown one (train.epohcs -> train.epochs)."""
    *parents, name = loc
    model = _section_model(tuple(parents))
    if model is None or not isinstance(name, str):
        return None
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    return (*parents, close[0]) if close else None


# What a person reads for pydantic's messages that name Python types or internals; the others are
# pydantic's own words less their "Input "/"String "/"Value error, " prefix (see _message).
_PLAIN = {
    "int_parsing": "should be a whole number",
    "int_type": "should be a whole number",
    "int_from_float": "should be a whole number",
    "float_parsing": "should be a number",
    "float_type": "should be a number",
    "bool_parsing": "should be true or false",
    "bool_type": "should be true or false",
    "string_type": "should be text (a string)",
    "path_type": "should be a path (text)",
    "tuple_type": "should be a list, e.g. [1, 2]",
    "list_type": "should be a list, e.g. [1, 2]",
    "model_type": "should be a section: its keys indented on the lines below it",
    "model_attributes_type": "should be a section: its keys indented on the lines below it",
    "dict_type": "should be a section: its keys indented on the lines below it",
    "string_too_short": "should not be empty",
}


def _message(e: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence about the value (no pydantic vocabulary)."""
    kind = e["type"]
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind in ("value_error", "assertion_error") and "error" in e.get("ctx", {}):
        return str(e["ctx"]["error"])  # a validator's own words, without pydantic's "Value error, "
    if kind in ("too_long", "too_short"):
        ctx = e.get("ctx", {})
        bound = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        items = "item" if bound == 1 else "items"
        most = "at most" if kind == "too_long" else "at least"
        return f"should be a list of {most} {bound} {items}, not {ctx.get('actual_length')}"
    msg = str(e["msg"])
    for prefix in ("Value error, ", "Assertion failed, ", "Input ", "String "):
        msg = msg.removeprefix(prefix)
    return msg


def _describe(err: ValidationError, path: Path) -> str:
    errors = err.errors()
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    # A misspelt key is unknown and its right spelling missing: one line says both.
    suggested = {tuple(e["loc"]): _nearest(tuple(e["loc"])) for e in errors if e["type"] == "extra_forbidden"}
    lines = []
    for e in errors:
        loc = tuple(e["loc"])
        key = _key(loc)
        if e["type"] == "extra_forbidden":
            near = suggested[loc]
            if near is None:
                lines.append(f"  {key}: unknown key (a typo? pawflow's own params.yaml has every valid key)")
            else:
                lacking = " It is missing." if near in missing else ""
                lines.append(f"  {key}: unknown key (did you mean {_key(near)}?{lacking})")
        elif e["type"] == "missing":
            if loc not in suggested.values():
                lines.append(
                    f"  {key}: missing (add it to {path.name}: pawflow's own params.yaml has every key, "
                    "with a comment saying what it does)"
                )
        else:
            got = e.get("input")
            text = _message(e)
            shown = "" if isinstance(got, dict) or "(got " in text else f" (got {got!r})"
            lines.append(f"  {key}: {text}{shown}")
    return "\n".join(lines)


def parse_params(data: object, path: Path = Path("params.yaml"), light: bool = False) -> Params:
    """Validate an already-parsed params mapping (light: skip checks that need Prefect imported)."""
    if not isinstance(data, dict):
        raise PawflowError(
            f"{path}: expected a mapping of sections (paths, ingest, clean, ...), got {type(data).__name__}.",
            "Restore the file from git (`git checkout params.yaml`) and edit the values you need.",
        )
    try:
        return Params.model_validate(data, context={"light": light})
    except ValidationError as err:
        raise PawflowError(
            f"{path} is not valid:\n{_describe(err, path)}",
            f"Fix the key(s) named above in {path}; nothing was run.",
        ) from None


def _duplicate_keys(node: yaml.Node | None, parents: tuple[str, ...] = ()) -> list[str]:
    """Keys that appear twice in one mapping (yaml.safe_load silently keeps the last one); node None: an
    empty document."""
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1
            if name in seen:
                found.append(f"  {'.'.join((*parents, name))}: set twice, at lines {seen[name]} and {line}")
            seen.setdefault(name, line)
            found += _duplicate_keys(value, (*parents, name))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _duplicate_keys(item, parents)
    return found


def _inside(path: Path, root: Path) -> bool:
    """Inside the workspace by name: `..` counts, links do not (a data/ folder linked to a bigger disk
    is still the workspace's data/ for DVC)."""
    base = root.absolute()
    return Path(os.path.normpath(base / path)).is_relative_to(Path(os.path.normpath(base)))


# Folders inside the workspace that pawflow or DVC manage besides paths.* (pawflow's lock, caches and
# Prefect home; DVC's cache and state; git's objects).
MANAGED_DIRS = (".pawflow", ".dvc", ".git")


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _source_overlaps(source: str, managed: dict[str, Path], root: Path) -> list[str]:
    """The managed folders (key -> path) that a local source is, lies inside or contains; compared by
    name (`..` resolved) and with symlinks resolved, so neither a link to data/raw nor a link inside the
    source folder gets past."""
    base = Path(os.path.normpath(root.absolute()))

    def named(p: Path) -> Path:
        return Path(os.path.normpath(base / p))

    src_named, src_real = named(Path(source)), (base / source).resolve()
    return [
        key
        for key, path in managed.items()
        if _overlap(src_named, named(path)) or _overlap(src_real, (base / path).resolve())
    ]


def check_workspace_paths(params: Params, root: Path, path: Path = Path("params.yaml")) -> None:
    """paths.* and pipeline.history must stay inside the workspace (DVC tracks only what is in it), and a
    local ingest.source must be neither the workspace (or a folder above it) nor overlap what pawflow
    or DVC manage in it.

    A photo folder of its own inside the workspace (`photos/`, `data/incoming/`) stays allowed: DVC's
    own model is data kept in the repository, and such a folder is only ever read, by ingest (DVC hashes
    it as a dependency, as it would outside). What is refused is a source that is, holds or lies inside
    paths.*, .pawflow, .dvc or .git: ingest would copy pawflow's own outputs into data/raw as classes
    (`--source data` made `raw`, `interim` and `processed` classes of every photo), and DVC removes or
    rewrites those folders while the stages run."""
    named = {f"paths.{k}": v for k, v in params.paths.model_dump().items()}
    named["pipeline.history"] = params.pipeline.history
    lines = [
        f"  {key}: {value} is outside the workspace {root.resolve()}"
        for key, value in named.items()
        if not _inside(Path(value), root)
    ]
    source = params.ingest.source
    if "://" not in source:
        if root.resolve().is_relative_to((root / source).resolve()):
            lines.append(
                f"  ingest.source: {source!r} is the workspace itself (or a folder above it): "
                "the photos must come from their own folder, archive or URL"
            )
        else:
            managed = {f"{v} ({k})": Path(v) for k, v in named.items()}
            managed.update({d: Path(d) for d in MANAGED_DIRS})
            overlaps = _source_overlaps(source, managed, root)
            if overlaps:
                lines.append(
                    f"  ingest.source: {source!r} overlaps what pawflow and DVC manage in the workspace: "
                    f"{', '.join(overlaps)}. Ingest would copy pawflow's own outputs into the collection "
                    "as classes, and DVC removes and rewrites those folders while the stages run"
                )
    if lines:
        raise PawflowError(
            f"{path} is not valid:\n" + "\n".join(lines),
            f"Keep paths.* inside the project folder and point ingest.source at the photos' own folder, "
            f"archive or URL in {path} (a folder of its own inside the project, such as photos/, is "
            "fine); nothing was run.",
        )


def load_params(path: Path = Path("params.yaml"), light: bool = False) -> Params:
    """Read and validate params.yaml; every problem is a PawflowError naming the key.

    Besides the model: no key may appear twice, and paths must stay inside the workspace (the folder
    of the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PawflowError(
            f"{path} not found.", "Run pawflow from the project root (where dvc.yaml is)."
        ) from None
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PawflowError(
            f"{path} is not valid YAML{where}: {getattr(err, 'problem', err)}.",
            "Fix the syntax there (indentation, a missing colon or quote).",
        ) from None
    if duplicates:
        raise PawflowError(
            f"{path} is not valid:\n" + "\n".join(duplicates),
            "Keep one of each (only the last one would count for pawflow, and DVC refuses the file).",
        )
    params = parse_params(data, path, light)
    check_workspace_paths(params, path.parent, path)
    return params


def merged(data: dict, changes: dict) -> dict:
    """data updated from changes key by key; a mapping given for a mapping updates it, at any depth
    (train={"finetune": {"epochs": 1}} keeps the other train.finetune keys: the model has no defaults)."""
    out = dict(data)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


def override(data: dict, source: Path | str, overrides: dict[str, dict]) -> dict:
    """A params mapping with ingest.source set to `source` and each named section updated from
    `overrides` (keys not named keep their values, in nested sections too: merged)."""
    return merged(merged(data, {"ingest": {"source": str(source)}}), overrides)


def params_in(path: Path, workdir: Path, source: Path | str, **overrides: dict) -> Params:
    """The params file at `path`, run on other data in another folder: every paths.* and the run
    history inside `workdir`, then override() (flows run in-process by the tests and the benchmarks)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["paths"] = {k: str(workdir / v) for k, v in data["paths"].items()}
    pipeline = data.get("pipeline", {})
    if "history" in pipeline:  # else parse_params names it missing
        pipeline["history"] = str(workdir / pipeline["history"])
    return parse_params(override(data, source, overrides), path)
