"""A new plugin is one file plus one registry line: a weighting method, a teacher backend and a
task kind defined here (their "file") and registered with one ``setitem`` (their line) are chosen,
configured, checked and listed through the pipeline file with no edit anywhere else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from distill.core.config.loader import described
from distill.core.errors import ConfigError
from distill.pipeline import load as load_pipeline
from distill.tasks import KINDS, task_for
from distill.tasks.classification import Classification, ClassificationOptions
from distill.teach.teachers import BACKENDS
from distill.teach.teachers.local import LocalTeacher
from distill.train.weighting import METHODS, build_weighting
from distill.train.weighting.base import Combined, Weighting


class Tempered(Weighting):
    """Weights ∝ loss^power, renormalised to sum to the number of tasks (a made-up method)."""

    name = "tempered"
    needs_every_task: ClassVar[bool] = True

    @dataclass
    class Options:
        power: float = 1.0
        """Exponent on each task's loss."""

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        raw = {t: float(loss.detach()) ** self.options.power for t, loss in losses.items()}
        scale = len(raw) / sum(raw.values())
        weights = {t: w * scale for t, w in raw.items()}
        return sum(weights[t] * loss for t, loss in losses.items()), weights


class Frozen(LocalTeacher):
    """A local teacher with one more option of its own (a made-up backend)."""

    name = "frozen"

    @dataclass
    class Options(LocalTeacher.Options):
        seed: int = 0
        """The made-up backend's own option."""


@dataclass
class TaggedOptions(ClassificationOptions):
    tag_field: str = "tag"
    """The column whose value is read before the text."""


class Tagged(Classification):
    """Classification of "TAG: text" (a made-up kind with one option of its own)."""

    kind = "tagged"
    Options = TaggedOptions

    def example(self, row, index, where):
        example = super().example(row, index, where)
        return {**example, "text": f"{row[self.options.tag_field]}: {example['text']}"}


def pipeline(tmp_path, **sections) -> str:
    data = {
        "run_dir": str(tmp_path / "run"),
        "tasks": [
            {
                "name": "a",
                "kind": "classification",
                "data": {"train": "a.jsonl", "test": "a.jsonl"},
                "labels": {"yes": "yes", "no": "no"},
            },
            {
                "name": "b",
                "kind": "classification",
                "data": {"train": "b.jsonl", "test": "b.jsonl"},
                "labels": {"yes": "yes", "no": "no"},
            },
        ],  # fmt: skip
        **sections,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_new_weighting_method_is_one_file_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, Tempered.name, Tempered)  # the registry line
    cfg = load_pipeline(pipeline(tmp_path, train={"weighting": {"method": "tempered", "power": 2}}))
    assert cfg.train.weighting.options == Tempered.Options(power=2.0)  # its own options, typed
    listed = {key: (kind, value, doc) for key, kind, value, doc in described(cfg)}
    assert listed["train.weighting.power"] == ("float", 2.0, "Exponent on each task's loss.")
    assert cfg.to_dict()["train"]["weighting"] == {"method": "tempered", "power": 2.0}  # the file's shape
    weighting = build_weighting("tempered", ["a", "b"], {}, 0, cfg.train.weighting.options)
    _, weights = weighting.combine({"a": torch.tensor(1.0), "b": torch.tensor(3.0)}, 0)
    assert weights == pytest.approx({"a": 0.2, "b": 1.8})  # 1 : 9, summing to 2
    # its key is checked as its dataclass says, and its flag is read by the cross-section check
    with pytest.raises(ConfigError, match=r"train\.weighting\.power: expected float, got 'x'"):
        load_pipeline(pipeline(tmp_path, train={"weighting": {"method": "tempered", "power": "x"}}))
    with pytest.raises(ConfigError, match=r"tempered needs every task's loss at every step"):
        load_pipeline(
            pipeline(tmp_path, train={"weighting": {"method": "tempered"}, "sampling": "proportional"})
        )
    # another method does not have its key
    with pytest.raises(ConfigError, match=r"train\.weighting\.power: unknown key"):
        load_pipeline(pipeline(tmp_path, train={"weighting": {"method": "static", "power": 2}}))


def test_a_new_teacher_backend_is_one_file_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, Frozen.name, Frozen)  # the registry line
    cfg = load_pipeline(
        pipeline(tmp_path, teach={"teacher": {"backend": "frozen", "seed": 3, "batch_size": 2}})
    )
    assert cfg.teach.teacher.options == Frozen.Options(batch_size=2, seed=3)
    assert cfg.teacher_vocabulary == cfg.teach.teacher.model  # asked of the backend (a local one)
    keys = [key for key, *_ in described(cfg) if key.startswith("teach.teacher.")]
    assert "teach.teacher.seed" in keys and "teach.teacher.concurrency" not in keys
    with pytest.raises(
        ConfigError, match=r"teach\.teacher\.concurrency: unknown key .*for this backend: batch_size"
    ):
        load_pipeline(pipeline(tmp_path, teach={"teacher": {"backend": "frozen", "concurrency": 2}}))


def test_a_summarizer_owns_its_options(tmp_path):
    """teacher_layers' keys (it is the default summarizer) exist only when it is the summarizer;
    bert2bert has none."""
    from distill.student.summarizers.teacher_layers.options import TeacherLayersOptions

    student = {"summarizer": "teacher_layers", "decoder_layers": 3, "layer_choice": "uniform"}
    cfg = load_pipeline(pipeline(tmp_path, train={"student": student}))
    assert cfg.train.student.options == TeacherLayersOptions(
        decoder_source=cfg.teach.teacher.model, decoder_layers=3, layer_choice="uniform"
    )  # decoder_source: the local teacher's model, filled in by the summarizer's own check
    assert cfg.decoder_reads_teacher_tokens  # the teacher's vocabulary, as its backend says
    listed = {key: value for key, _, value, _ in described(cfg)}
    assert listed["train.student.decoder_layers"] == 3
    assert cfg.to_dict()["train"]["student"]["decoder_layers"] == 3  # flat, as the file writes it
    assert "decoder_reads_teacher_tokens" not in cfg.to_dict()  # derived, not a key
    with pytest.raises(
        ConfigError, match=r"train\.student\.decoder_layers: unknown key \(known: encoder, .*\)$"
    ):
        load_pipeline(pipeline(tmp_path, train={"student": {"summarizer": "bert2bert", "decoder_layers": 3}}))
    with pytest.raises(ConfigError, match=r"train\.student\.decoder_layers: must be >= 2"):
        load_pipeline(pipeline(tmp_path, train={"student": {**student, "decoder_layers": 1}}))


def test_a_new_task_kind_is_one_file_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, Tagged.kind, Tagged)  # the registry line
    path = pipeline(tmp_path)
    data = yaml.safe_load(Path(path).read_text())
    data["tasks"][0].update(kind="tagged", tag_field="source", text_field="body")
    Path(path).write_text(yaml.safe_dump(data))
    cfg = load_pipeline(path)
    assert cfg.tasks[0].options == TaggedOptions(
        text_field="body", labels={"yes": "yes", "no": "no"}, tag_field="source"
    )
    listed = {key: (kind, value, doc) for key, kind, value, doc in described(cfg)}
    assert listed["tasks.a.tag_field"] == ("str", "source", "The column whose value is read before the text.")
    assert listed["tasks.a.labels"][1] == {"yes": "yes", "no": "no"}  # inherited options listed too
    assert "tasks.b.tag_field" not in listed  # b is a plain classification task
    assert cfg.to_dict()["tasks"][0]["tag_field"] == "source"  # flat, as the file writes it
    task = task_for(cfg.tasks[0])
    row = {"body": "fine", "source": "email", "label": "yes"}
    assert task.example(row, 0, "here")["text"] == "email: fine"
    # the resolved pipeline, written back as a file, loads to the same config
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_pipeline(again) == cfg
    # another kind has not got the key, and says which keys it has
    data["tasks"][1]["tag_field"] = "source"
    Path(path).write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError,
        match=r"tasks\[1\]\.tag_field: unknown key .*"
        r"for this kind: text_field, label_field, labels, rationale\)$",
    ):
        load_pipeline(path)


def test_a_kinds_keys_belong_to_it(tmp_path):
    """labels are a classification kind's; a summarization task refuses them by name, and the
    second text's field is a sentence pair's."""
    path = pipeline(tmp_path)
    data = yaml.safe_load(Path(path).read_text())
    data["tasks"][1] = {
        "name": "s",
        "kind": "summarization",
        "data": {"train": "s.jsonl"},
        "labels": {"a": "a"},
    }
    Path(path).write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"tasks\[1\]\.labels: unknown key .*for this kind: document_field, reference_field"
    ):
        load_pipeline(path)
    data["tasks"][1] = {**data["tasks"][0], "name": "p", "text_pair_field": "second"}
    Path(path).write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.text_pair_field: unknown key"):
        load_pipeline(path)
    data["tasks"][1]["kind"] = "sentence_pair"
    Path(path).write_text(yaml.safe_dump(data))
    assert load_pipeline(path).tasks[1].options.text_pair_field == "second"
    del data["tasks"][1]["kind"]
    Path(path).write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.kind: required key is missing"):
        load_pipeline(path)
