"""params.yaml is validated before any work: every problem names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.core.errors import PawflowError
from tasks.core.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_for(data: object) -> str:
    with pytest.raises(PawflowError) as info:
        parse_params(data)
    return str(info.value)


def test_the_shipped_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.ingest.source == "../shared/datasets/petimages-sample"
    assert abs(sum(p.shard.split.as_dict().values()) - 1) < 1e-9


def test_every_key_of_the_shipped_file_says_what_it_is():
    """params.yaml is the parameters' reference (no other document lists them): each key with a value
    carries a comment on its line, or has a comment line just above it."""
    import re

    lines = (ROOT / "params.yaml").read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        key = re.match(r"^(\s*)[a-z_]+:\s*([^#\s].*)?$", line)
        if key and key.group(2) and "#" not in key.group(2):
            above = lines[i - 1] if i else ""
            if not re.match(rf"^{key.group(1)}#", above):  # a comment line just above
                bare.append(f"line {i + 1}: {line.strip()}")
    assert not bare, "keys without a comment in params.yaml:\n" + "\n".join(bare)


def test_unknown_key_is_refused_and_named():
    data = base()
    data["clean"]["min_sidee"] = 10
    assert "clean.min_sidee: unknown key" in error_for(data)


def test_unknown_section_is_refused():
    data = base()
    data["cleaning"] = {}
    assert "cleaning: unknown key" in error_for(data)


def test_wrong_type_names_key_and_value():
    data = base()
    data["dedup"]["max_distance"] = "four"
    msg = error_for(data)
    assert "dedup.max_distance" in msg and "'four'" in msg


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_out_of_range_fraction(value: float):
    data = base()
    data["clean"]["max_reject_fraction"] = value
    assert "clean.max_reject_fraction" in error_for(data)


def test_split_must_sum_to_one():
    data = base()
    data["shard"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}
    msg = error_for(data)
    assert "shard.split" in msg and "sum to 1" in msg


def test_missing_required_section():
    data = base()
    del data["ingest"]
    assert "ingest: missing" in error_for(data)


@pytest.mark.parametrize(
    ("section", "key"), [("train", "epochs"), ("ingest", "sha256"), ("evaluate.robustness", "crop")]
)
def test_a_missing_key_is_refused_with_its_name_and_what_to_do(section: str, key: str):
    """No key has a default in the model: one left out of params.yaml (even one whose value is null)
    is named, with where to find its value."""
    data = base()
    parent = data
    for part in section.split("."):
        parent = parent[part]
    del parent[key]
    msg = error_for(data)
    assert f"  {section}.{key}: missing (add it to params.yaml: pawflow's own params.yaml has" in msg
    assert msg.count("missing") == 1, msg


def test_the_params_model_holds_no_values():
    """params.yaml is the one copy of every value: no field of any section has a default."""
    from pydantic import BaseModel

    from tasks.core.params import Params

    todo, with_default = [Params], []
    while todo:
        model = todo.pop()
        for name, field in model.model_fields.items():
            if not field.is_required():
                with_default.append(f"{model.__name__}.{name}")
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                todo.append(field.annotation)
    assert with_default == []


def test_every_problem_is_listed_at_once():
    data = base()
    data["clean"]["bogus"] = 1
    data["shard"]["max_side"] = 2
    msg = error_for(data)
    assert "clean.bogus" in msg and "shard.max_side" in msg


def test_not_a_mapping():
    assert "expected a mapping" in error_for(["a", "b"])


def test_malformed_yaml_names_the_line(tmp_path: Path):
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  source: x\n clean: [\n")
    with pytest.raises(PawflowError, match="not valid YAML at line"):
        load_params(p)


def test_missing_file(tmp_path: Path):
    with pytest.raises(PawflowError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_sha256_must_look_like_one():
    data = base()
    data["ingest"]["sha256"] = "abc"
    assert "ingest.sha256" in error_for(data)


def test_params_in_roots_paths_and_merges_sections(tmp_path: Path):
    from tasks.core.params import params_in

    p = params_in(ROOT / "params.yaml", tmp_path, "/photos", train={"epochs": 2}, ingest={"sha256": None})
    assert p.paths.raw == tmp_path / "data/raw"
    assert str(p.ingest.source) == "/photos"
    assert p.train.epochs == 2 and p.train.image_size == load_params(ROOT / "params.yaml").train.image_size


def test_overrides_update_nested_sections_key_by_key(tmp_path: Path):
    from tasks.core.params import params_in

    p = params_in(ROOT / "params.yaml", tmp_path, "/photos", train={"finetune": {"epochs": 1}})
    shipped = load_params(ROOT / "params.yaml").train
    assert p.train.finetune == shipped.finetune.model_copy(update={"epochs": 1}) != shipped.finetune
    assert p.train.model_copy(update={"finetune": shipped.finetune}) == shipped


def test_params_in_names_a_missing_key_too(tmp_path: Path):
    from tasks.core.params import params_in

    data = base()
    del data["pipeline"]["history"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PawflowError, match=r"pipeline\.history: missing"):
        params_in(tmp_path / "params.yaml", tmp_path / "work", "/photos")


def test_robustness_quality_range_must_be_ordered():
    data = base()
    data["evaluate"]["robustness"]["quality"] = [60, 50]
    assert "evaluate.robustness.quality" in error_for(data)
    data["evaluate"]["robustness"] = {**data["evaluate"]["robustness"], "quality": [50, 60], "crop": 0.7}
    assert "evaluate.robustness.crop" in error_for(data)


def test_a_format_pillow_does_not_name_is_refused_with_the_valid_names():
    data = base()
    data["clean"]["formats"] = ["JPG", "png"]
    msg = error_for(data)
    assert "clean.formats" in msg and "JPG" in msg and "JPEG" in msg and "WEBP" in msg
    data["clean"]["formats"] = ["jpeg", "mpo"]
    assert parse_params(data).clean.formats == ("JPEG", "MPO")


def test_a_duplicate_key_is_refused_with_its_lines(tmp_path: Path):
    text = (ROOT / "params.yaml").read_text()
    assert "  epochs: 32" in text
    p = tmp_path / "params.yaml"
    p.write_text(text.replace("  epochs: 32", "  epochs: 32\n  epochs: 3"))
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if t.startswith("  epochs: 32"))
    with pytest.raises(PawflowError) as info:
        load_params(p)
    assert f"train.epochs: set twice, at lines {line} and {line + 1}" in str(info.value)
    assert str(info.value).count("What to do") == 1


@pytest.mark.parametrize("raw", ["../elsewhere/raw", "/tmp/raw", "data/../../raw"])
def test_paths_outside_the_workspace_are_refused(tmp_path: Path, raw: str):
    data = base()
    data["paths"]["raw"] = raw
    p = tmp_path / "ws" / "params.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(PawflowError, match=r"paths\.raw: .* is outside the workspace"):
        load_params(p)
    data["paths"]["raw"] = "data/raw2"
    p.write_text(yaml.safe_dump(data))
    assert load_params(p).paths.raw == Path("data/raw2")
    # A data folder linked to another disk is still the workspace's data folder.
    (tmp_path / "bigger-disk").mkdir()
    (p.parent / "data").symlink_to(tmp_path / "bigger-disk")
    assert load_params(p).paths.raw == Path("data/raw2")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (None, "should be text (a string)"),
        (42, "should be text (a string)"),
        ("", "should not be empty"),
        ("ftp://example.com/photos.zip", "ftp:// is not supported"),
    ],
)
def test_a_source_dvc_cannot_use_is_refused(source: object, says: str):
    data = base()
    data["ingest"]["source"] = source
    msg = error_for(data)
    assert "ingest.source" in msg and says in msg


@pytest.mark.parametrize("source", [".", "..", "./"])
def test_the_workspace_itself_is_not_a_source(tmp_path: Path, source: str):
    data = base()
    data["ingest"]["source"] = source
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(PawflowError, match=r"ingest\.source: .* is the workspace itself"):
        load_params(p)


def test_the_check_stage_loads_params_without_prefect_or_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; import flows.check; "
        "from tasks.core.params import load_params; "
        "load_params(Path('params.yaml'), light=True); "
        "print(sorted(m for m in ('prefect', 'tensorflow', 'dvc') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("train.zpochs", 3, "train.zpochs: unknown key (did you mean train.epochs?)"),
        ("train.augment.flipp", True, "train.augment.flipp: unknown key (did you mean train.augment.flip?)"),
        ("trian", {}, "trian: unknown key (did you mean train?)"),
        ("train.zzz", 1, "train.zzz: unknown key (a typo? pawflow's own params.yaml has every valid key)"),
    ],
)
def test_an_unknown_key_suggests_the_nearest_known_one(key: str, value: object, says: str):
    data = base()
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[leaf] = value
    assert says in error_for(data)


# Every kind of pydantic message a params.yaml edit can meet: the key, then what the value should be in
# a person's words (no "Value error, ", "Input should be a valid integer", <class 'pathlib.Path'>), and
# the value given, once.
@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("train.epochs", "three", "train.epochs: should be a whole number (got 'three')"),
        ("train.epochs", 2.5, "train.epochs: should be a whole number (got 2.5)"),
        ("train.epochs", 0, "train.epochs: should be greater than 0 (got 0)"),
        ("train.dropout", "x", "train.dropout: should be a number (got 'x')"),
        ("train.separable", "maybe", "train.separable: should be true or false (got 'maybe')"),
        ("train.backbone_weights", 5, "train.backbone_weights: should be text (a string) (got 5)"),
        ("paths.raw", None, "paths.raw: should be a path (text) (got None)"),
        ("train.blocks", "1,1", "train.blocks: should be a list, e.g. [1, 2] (got '1,1')"),
        ("train.blocks", [1, 0], "train.blocks[1]: should be greater than or equal to 1 (got 0)"),
        ("train.finetune", 3, "train.finetune: should be a section: its keys indented on the lines below it"),
        ("train.model", "resnet", "train.model: should be 'pawnet', 'seed_cnn' or 'keras_xception'"),
        ("ingest.source", "", "ingest.source: should not be empty (got '')"),
        ("ingest.source", "s3://b/x", "ingest.source: s3:// is not supported"),
        ("ingest.sha256", "abc", "ingest.sha256: should be a sha256: 64 lowercase hex digits"),
        ("evaluate.robustness.quality", [1, 2, 3], "should be a list of at most 2 items, not 3"),
        ("evaluate.robustness.quality", [60, 50], "low <= high, e.g. [50, 60] (got [60, 50])"),
        ("pipeline.timezone", "Mars/Base", "unknown time zone 'Mars/Base'"),
    ],
)
def test_every_kind_of_value_error_reads_as_a_sentence(key: str, value: object, says: str):
    data = base()
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[leaf] = value
    msg = error_for(data)
    assert says in msg
    for jargon in ("Value error", "Input should", "valid integer", "<class", "instance of", "String should"):
        assert jargon not in msg, msg
    assert msg.count("(got ") <= 1, msg


def test_a_misspelt_key_is_one_line_not_an_unknown_and_a_missing_one():
    data = base()
    data["train"]["epohcs"] = data["train"].pop("epochs")
    msg = error_for(data)
    assert "  train.epohcs: unknown key (did you mean train.epochs? It is missing.)" in msg
    assert "train.epochs: missing" not in msg and msg.count("\n  ") == 2  # the line, then What to do


@pytest.mark.parametrize(
    ("section", "changes", "says"),
    [
        ("train", {"blocks": []}, "train.blocks: should be a list of at least 1 item, not 0"),
        ("train", {"warmup_epochs": 32}, "warmup_epochs 32 is not shorter than epochs 32"),
        ("train", {"warmup_epochs": 3, "epochs": 2}, "warmup_epochs 3 is not shorter than epochs 2"),
        ("train", {"width": 512, "blocks": [1] * 6}, "16,384 filters in the last stage"),
        (
            "evaluate",
            {"misclassified": 0},
            "evaluate.misclassified: should be greater than or equal to 1",
        ),
        ("runner", {"workers": 10000}, "runner.workers: should be less than or equal to 256"),
        ("dedup", {"hash_size": 4, "max_distance": 9}, "more than half of the 16 bits"),
        ("clean", {"min_side": 10000, "max_pixels": 1000000}, "every photo would be rejected"),
    ],
)
def test_values_that_make_a_later_stage_degenerate_are_refused_naming_the_key(
    section: str, changes: dict, says: str
):
    """An empty block list (a 257-parameter model), a warmup as long as training, a grid of 0 mistakes,
    10,000 workers, a dedup distance at chance level, a size no photo can have."""
    data = base()
    data[section].update(changes)
    msg = error_for(data)
    assert says in msg and f"  {section}" in msg, msg


def test_the_limits_leave_the_shipped_and_the_test_settings_alone():
    data = base()
    data["train"].update(epochs=1, warmup_epochs=0, image_size=32, width=8)  # the tests' tiny model
    parse_params(data)
    data["train"].update(epochs=2, warmup_epochs=1, width=512, blocks=[1] * 5)  # 8,192 filters at most
    parse_params(data)
    data["train"].update(model="seed_cnn", blocks=[1] * 8)  # blocks shapes pawnet only
    parse_params(data)


def workspace_params(ws: Path, source: str) -> Path:
    data = base()
    data["ingest"]["source"] = source
    p = ws / "params.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("data", "data/raw (paths.raw), data/interim (paths.interim), data/processed (paths.processed)"),
        ("data/raw", "data/raw (paths.raw)"),
        ("data/raw/Cat", "data/raw (paths.raw)"),
        ("./models/../data/processed", "data/processed (paths.processed)"),
        ("reports", "reports (paths.reports), reports/runs.jsonl (pipeline.history)"),
        (".pawflow", ".pawflow/cache (paths.cache), .pawflow"),
        (".dvc/cache", ".dvc"),
        (".git", ".git"),
        ("link-to-raw", "data/raw (paths.raw)"),
        ("{ws}/data", "data/raw (paths.raw)"),
    ],
)
def test_a_source_overlapping_what_pawflow_or_dvc_manages_is_refused(tmp_path: Path, source: str, names):
    ws = tmp_path / "ws"
    (ws / "data/raw/Cat").mkdir(parents=True)
    (ws / "link-to-raw").symlink_to(ws / "data/raw")
    p = workspace_params(ws, source.format(ws=ws))
    with pytest.raises(PawflowError) as info:
        load_params(p)
    msg = str(info.value)
    assert "ingest.source" in msg and f"overlaps what pawflow and DVC manage in the workspace: {names}" in msg


@pytest.mark.parametrize(
    "source", ["photos", "data/incoming", "photos.zip", "../elsewhere", "https://x/p.zip"]
)
def test_a_photo_folder_of_its_own_inside_the_workspace_stays_allowed(tmp_path: Path, source: str):
    p = workspace_params(tmp_path / "ws", source)
    (tmp_path / "ws" / "data/raw").mkdir(parents=True)
    assert load_params(p).ingest.source == source
