"""params.yaml: the pydantic model that validates it (unknown and missing keys refused) and its one reader.

The model holds types and limits, never values: params.yaml lists every key with its value."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

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

from tasks.errors import PawflowError

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


class Runner(Section):
    kind: Literal["threads", "processes", "dask"]
    workers: PositiveInt
    chunk_size: PositiveInt
    dask_address: str | None


class Ingest(Section):
    source: str = Field(min_length=1)
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$")
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


class Clean(Section):
    min_side: PositiveInt
    max_aspect_ratio: Annotated[float, Field(ge=1.0)]
    max_pixels: PositiveInt
    formats: tuple[str, ...]
    max_reject_fraction: Fraction
    timeout_s: Annotated[float, Field(gt=0)]

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


def image_formats() -> set[str]:
    """The format names Pillow gives decoded images (what clean compares with clean.formats)."""
    from PIL import Image

    Image.init()
    return set(Image.OPEN) | {"MPO"}  # JPEG's opener names multi-picture JPEGs MPO


class Dedup(Section):
    hash_size: Annotated[int, Field(ge=4, le=16)]
    max_distance: Annotated[int, Field(ge=0, le=32)]


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
    """train.augment (tasks/augment.py): the train split only; 0/false/null turns each one off."""

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
    """train.finetune: how a warm start fine-tunes the champion (tasks/warmstart.py decides when)."""

    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    schedule: Literal["cosine", "constant"]
    max_growth: Annotated[float, Field(ge=0)]
    max_warm_starts: PositiveInt | None


class Train(Section):
    model: Literal["pawnet", "seed_cnn", "keras_xception"]
    backbone: Literal["mobilenet_v2"] | None
    backbone_weights: str | None
    width: Annotated[int, Field(ge=4, le=512)]
    blocks: tuple[Annotated[int, Field(ge=1, le=8)], ...]
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
    misclassified: Annotated[int, Field(ge=0, le=100)]
    batch_size: PositiveInt
    tta: bool
    robustness: Robustness


class Pipeline(Section):
    schedule: str
    full_schedule: str
    timezone: str
    push: bool
    history: Path

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


class Params(Section):
    paths: Paths
    runner: Runner
    ingest: Ingest
    clean: Clean
    dedup: Dedup
    shard: Shard
    train: Train
    tensorflow: TensorFlow
    evaluate: Evaluate
    pipeline: Pipeline


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        key = _key(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (a typo? see README 'Parameters' for the valid keys)")
        elif e["type"] == "missing":
            lines.append(
                f"  {key}: missing (add it to {path.name}: "
                "README 'Parameters' lists every key with its default value)"
            )
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
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


def _duplicate_keys(node: yaml.Node, parents: tuple[str, ...] = ()) -> list[str]:
    """Keys that appear twice in one mapping (yaml.safe_load silently keeps the last one)."""
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


def check_workspace_paths(params: Params, root: Path, path: Path = Path("params.yaml")) -> None:
    """paths.* and pipeline.history must stay inside the workspace (DVC tracks only what is in it),
    and a local ingest.source must not contain the workspace (DVC would hash every output as a dep)."""
    named = {f"paths.{k}": v for k, v in params.paths.model_dump().items()}
    named["pipeline.history"] = params.pipeline.history
    lines = [
        f"  {key}: {value} is outside the workspace {root.resolve()}"
        for key, value in named.items()
        if not _inside(Path(value), root)
    ]
    source = params.ingest.source
    if "://" not in source and root.resolve().is_relative_to((root / source).resolve()):
        lines.append(
            f"  ingest.source: {source!r} is the workspace itself (or a folder above it): "
            "the photos must come from their own folder, archive or URL"
        )
    if lines:
        raise PawflowError(
            f"{path} is not valid:\n" + "\n".join(lines),
            f"Keep paths.* inside the project folder and point ingest.source at the photos' own folder, "
            f"archive or URL in {path}; nothing was run.",
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
