from pathlib import Path

import pytest
import yaml

from distill.core.errors import ConfigError
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
    from distill.train.run import deepspeed_config

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
        cfg.train.epochs == 5 and cfg.tasks[0].max_rows == {"train": 3} and cfg.teach.teacher.batch_size == 2
    )
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        load_pipeline(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="no task named"):
        load_pipeline(path, ["tasks.zzz.labels=1"])


def test_fp16_on_cpu_is_refused(tmp_path):
    from distill.core.config import TrainConfig
    from distill.train.run import deepspeed_config

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
            r"teach\.teacher\.mode: batch needs backend: openai",
        ),
        ({"teacher": {"backend": "openai", "max_cost": 5}}, r"teach\.teacher\.max_cost: needs price"),
        (
            {"teacher": {"backend": "openai", "top_logprobs": 50}},
            r"teach\.teacher\.top_logprobs: .* at most 20",
        ),
        ({"teacher": {"backend": "vllm"}}, r"teach\.teacher\.backend: 'vllm' is not one of"),
        ({"teacher": {"concurrency": 0}}, r"teach\.teacher\.concurrency: must be >= 1"),
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
    from distill.teach.teachers.openai.client import APITeacher

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(DistillError, match=r"\$NO_SUCH_KEY_VAR is not set"):
        APITeacher(TeacherConfig(backend="openai", model="gpt-4o-mini", api_key_env="NO_SUCH_KEY_VAR"))
