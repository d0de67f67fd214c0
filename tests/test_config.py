import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.core.errors import ConfigError
from distill.ops.runs.records import EXIT_CONFIG
from distill.pipeline import load as load_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_pipeline_loads_and_opens_with_its_command(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_pipeline(path)
    assert path.read_text().splitlines()[0] == f"# distill run pipelines/{path.name}"
    assert Path(cfg.train.deepspeed).is_file()
    for task in cfg.tasks:
        for source in task.data.values():
            assert Path(source).is_file(), source


def test_every_deepspeed_config_is_accepted(tmp_path):
    from distill.core.config import TrainConfig
    from distill.train.recipe import deepspeed_config

    for path in sorted((REPO / "pipelines" / "deepspeed").glob("*.json")):
        ds = deepspeed_config(TrainConfig(deepspeed=str(path), batch_size=4), world=2)
        assert ds["train_batch_size"] == 8


def _write(tmp_path, data) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base():
    return {
        "run_dir": "runs/x",
        "tasks": [
            {
                "name": "t",
                "kind": "classification",
                "data": {"train": "a.jsonl", "test": "b.jsonl"},
                "labels": {"yes": "yes", "no": "no"},
            }
        ],
    }


def test_unknown_key_is_named(tmp_path):
    data = base()
    data["train"] = {"epoch": 3}
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_pipeline(_write(tmp_path, data))


def test_wrong_type_is_named(tmp_path):
    data = base()
    data["train"] = {"epochs": "three"}
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_pipeline(_write(tmp_path, data))


def test_contradictions_fail_at_load(tmp_path):
    data = base()
    data["eval"] = {"split": "validation"}
    with pytest.raises(ConfigError, match="eval.split"):
        load_pipeline(_write(tmp_path, data))
    data = base()
    data["train"] = {"task_weights": {"missing": 1.0}}
    with pytest.raises(ConfigError, match=r"train\.task_weights\.missing: no such task"):
        load_pipeline(_write(tmp_path, data))
    data = base()
    data["tasks"][0]["labels"] = {"only": "only"}
    with pytest.raises(ConfigError, match=r"tasks\.t\.labels"):
        load_pipeline(_write(tmp_path, data))


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run_dir: x\ntasks: [\n  - name: a\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        load_pipeline(path)


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, base())
    cfg = load_pipeline(path, ["train.epochs=5", "tasks.t.max_rows.train=3", "teach.teacher.batch_size=2"])
    assert (
        cfg.train.epochs == 5
        and cfg.tasks[0].max_rows == {"train": 3}
        and cfg.teach.teacher.options.batch_size == 2
    )
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        load_pipeline(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="no task named"):
        load_pipeline(path, ["tasks.zzz.labels=1"])


def test_fp16_on_cpu_is_refused(tmp_path):
    from distill.core.config import TrainConfig
    from distill.train.recipe import deepspeed_config

    ds = tmp_path / "fp16.json"
    ds.write_text('{"fp16": {"enabled": true}}')
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        deepspeed_config(TrainConfig(deepspeed=str(ds)), world=1)
    ds.write_text('{"train_batch_size": 8}')
    with pytest.raises(ConfigError, match="train_batch_size"):
        deepspeed_config(TrainConfig(deepspeed=str(ds)), world=1)


@pytest.mark.parametrize(
    ("teach", "message"),
    [
        (
            {"teacher": {"backend": "local", "mode": "batch"}},
            r"teach\.teacher\.mode: unknown key \(known: .*, and for this backend: batch_size, dtype",
        ),
        ({"teacher": {"backend": "openai", "max_cost": 5}}, r"teach\.teacher\.max_cost: needs price"),
        (
            {"teacher": {"backend": "openai", "top_logprobs": 50}},
            r"teach\.teacher\.top_logprobs: .* at most 20",
        ),
        (
            {"teacher": {"backend": "vllm"}},
            r"teach\.teacher\.backend: 'vllm' is not a teacher backend \(known: local, openai\)",
        ),
        ({"teacher": {"backend": "openai", "concurrency": 0}}, r"teach\.teacher\.concurrency: must be >= 1"),
        ({"teacher": {"backend": "local", "batch_size": 0}}, r"teach\.teacher\.batch_size: must be >= 1"),
        (
            {"teacher": {"backend": "openai", "summary_top_k": 21, "tokenizer": "x"}},
            r"teach\.teacher\.summary_top_k: an OpenAI-compatible endpoint lists at most 20",
        ),
        (
            {"teacher": {"backend": "openai", "summary_top_k": 4}},
            r"teach\.teacher\.summary_top_k with backend: openai needs teach\.teacher\.tokenizer",
        ),
        (
            {"calibration": {"temperature": True}},
            r"teach\.calibration\.split: task t has no validation split",
        ),
        ({"calibration": {"prior": "uniform"}}, r"teach\.calibration\.prior: 'uniform' is not one of"),
        (
            {"splits": ["test"], "calibration": {"prior": "pool_mean"}},
            r"teach\.calibration\.prior: pool_mean needs train",
        ),
        ({"teacher": {"min_label_mass": 1.0}}, r"teach\.teacher\.min_label_mass: must be within \[0, 1\)"),
        ({"few_shot": 2}, r"teach\.few_shot_split: task t has no validation split to draw demonstrations"),
        ({"few_shot_split": "dev"}, r"teach\.few_shot_split: unknown split 'dev'"),
    ],
)
def test_api_teacher_and_calibration_settings_are_checked(tmp_path, teach, message):
    data = base()
    data["teach"] = teach
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, data))


def test_missing_api_key_is_named(monkeypatch):
    from distill.core.config import TeacherConfig
    from distill.core.errors import DistillError
    from distill.pipeline import section
    from distill.teach.teachers.openai.client import APITeacher

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(DistillError, match=r"\$NO_SUCH_KEY_VAR is not set"):
        APITeacher(section(TeacherConfig, {"backend": "openai", "api_key_env": "NO_SUCH_KEY_VAR"}))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_ablate_variant_loads(path, monkeypatch):
    """A variant's --set overrides are only applied when ablate trains it: check them now."""
    monkeypatch.chdir(REPO)
    for name, overrides in load_pipeline(path).ablate.variants.items():
        try:
            load_pipeline(path, overrides)
        except ConfigError as e:
            raise AssertionError(f"ablate.variants.{name}: {e}") from None


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
@pytest.mark.parametrize("overrides", [[], ["train.weighting.method=dwa", "train.weighting.window=7"]])
def test_resolved_config_loads_again_as_a_pipeline(path, overrides, tmp_path, monkeypatch):
    """What a manifest records (to_dict) is itself a pipeline file giving the same config, down to
    the plugin options of sections the file leaves out."""
    monkeypatch.chdir(REPO)
    cfg = load_pipeline(path, overrides)
    resolved = cfg.to_dict()
    again = load_pipeline(_write(tmp_path, resolved))
    assert again == cfg and again.to_dict() == resolved
    if overrides:
        assert resolved["train"]["weighting"] == {"method": "dwa", "window": 7, "temperature": 2.0}


def test_old_weighting_option_spelling_is_one_line_naming_the_new(tmp_path):
    path = _write(tmp_path, base())
    with pytest.raises(ConfigError) as e:
        load_pipeline(path, ["train.weighting.method=dwa", "train.weighting.dwa_window=10"])
    [line] = str(e.value).splitlines()
    assert line == f"{path}: train.weighting.dwa_window: moved; use train.weighting.window"


def test_option_of_another_weighting_method_is_refused_naming_the_known_keys(tmp_path):
    path = _write(tmp_path, base())
    with pytest.raises(ConfigError) as e:
        load_pipeline(path, ["train.weighting.window=10"])  # method stays static
    [line] = str(e.value).splitlines()
    assert line.startswith(f"{path}: train.weighting.window: unknown key (known: method")
    with pytest.raises(ConfigError, match=r"train\.weighting\.alpha: unknown key \(known: method, .*window"):
        load_pipeline(path, ["train.weighting.method=dwa", "train.weighting.alpha=1.0"])


def distill_config(*args: str) -> subprocess.CompletedProcess:
    """``distill config`` through the real CLI, in a 120-column terminal."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", "config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def table_row(stdout: str, key: str) -> list[str]:
    """A table line's cells (key, type, value, doc), split on the two-space column gaps."""
    [line] = [line for line in stdout.splitlines() if line.split(" ", 1)[0] == key]
    return re.split(r"\s{2,}", line, maxsplit=3)


def test_config_lists_keys_with_type_value_and_doc():
    from distill.core.config import TrainConfig
    from distill.core.config.loader import field_docs

    proc = distill_config("pipelines/demo.yaml")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 120
    assert re.split(r"\s{2,}", lines[0]) == ["key", "type", "value", "doc"]
    key, kind, value, doc = table_row(proc.stdout, "train.kd_temperature")
    assert (kind, value) == ("float", "2.0")
    assert doc.startswith("T: the KL term compares") and len(doc) >= 30
    assert field_docs(TrainConfig)["kd_temperature"].startswith(doc.rstrip("…"))
    assert table_row(proc.stdout, "teach.splits")[1:3] == ["list[str]", '["train", "test"]']
    assert table_row(proc.stdout, "train.hard_labels")[1:3] == ["gold|teacher|none", "teacher"]
    assert not any(line.startswith("train.weighting.window") for line in lines)  # static: no options


def test_config_lists_the_chosen_plugins_options_and_overrides():
    dwa = ["--set", "train.weighting.method=dwa", "--set", "train.lr=0.0003"]
    proc = distill_config("pipelines/demo.yaml", "train.weighting", *dwa)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == [
        "train.weighting.method",
        "train.weighting.window",
        "train.weighting.temperature",
    ]
    assert table_row(proc.stdout, "train.weighting.window") == [
        "train.weighting.window",
        "int",
        "20",
        "Micro-steps per averaging window (the paper's epoch).",
    ]
    proc = distill_config("pipelines/demo.yaml", "train", "--set", "train.lr=0.0003")
    assert table_row(proc.stdout, "train.lr")[1:3] == ["float", "0.0003"]
    proc = distill_config("pipelines/suite.yaml", "tasks.fine_foods")
    keys = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert keys[0] == "tasks.fine_foods.name" and all(k.startswith("tasks.fine_foods.") for k in keys)
    assert table_row(proc.stdout, "tasks.fine_foods.text_field")[2] == "review"


def test_config_unknown_prefix_exits_2_naming_it():
    proc = distill_config("pipelines/demo.yaml", "train.weighting.windw")
    assert proc.returncode == EXIT_CONFIG and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    known = "(known under train.weighting: method)"
    assert line == f"error: train.weighting.windw: no such key or section {known}"
    proc = distill_config("pipelines/demo.yaml", "tasks.nope")
    assert proc.returncode == EXIT_CONFIG
    assert "tasks.nope: no such key" in proc.stderr and "tasks: fine_foods, aclsum" in proc.stderr


@pytest.mark.parametrize(
    "value, message",
    [
        ({}, "set exactly one of min"),
        ({"min": 0.5, "weight": "confidence"}, "set exactly one of min"),
        ({"min": 1.5}, r"teacher_confidence.min: must be within \(0, 1\]"),
    ],
)
def test_teacher_confidence_needs_one_rule(value, message):
    from distill.core.config.train import TeacherConfidenceConfig

    with pytest.raises(ConfigError, match=message):
        TeacherConfidenceConfig(**value)
