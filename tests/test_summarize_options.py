"""End to end, one tiny run per summarization student option: bert2bert with a denoising
warm-up, and teacher layers with token-level KD, the recovery warm-up and beam decoding."""

import json

import pytest
import torch
from safetensors.torch import load_file

from distill.pipeline import load as load_pipeline
from distill.tasks import task_config, tasks_for
from tests.conftest import pipeline_dict, write_pipeline
from tests.test_pipeline import distill


def _summary_pipeline(tmp_path, encoder, teacher, teacher_extra=None, eval_extra=None, **train):
    data = pipeline_dict(tmp_path, encoder, teacher, **train)
    data["tasks"] = [t for t in data["tasks"] if t["kind"] == "summarization"]
    data["teach"]["teacher"].update(teacher_extra or {})
    data["eval"].update(eval_extra or {})
    return write_pipeline(tmp_path, data)


def _report(run_dir):
    return json.loads((run_dir / "eval" / "report.json").read_text())


def test_teacher_layers_with_token_kd_warmup_and_beams(tmp_path, tiny_encoder, tiny_bpe_teacher, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    path = _summary_pipeline(
        tmp_path,
        tiny_encoder,
        tiny_bpe_teacher,
        teacher_extra={"summary_top_k": 3},
        eval_extra={"decoding": {"num_beams": 2, "no_repeat_ngram_size": 2}},
        student={
            "encoder": tiny_encoder,
            "max_length": 32,
            "max_document_length": 48,
            "max_summary_length": 12,
            "summarizer": "teacher_layers",
            "decoder_layers": 3,
            "bridge": True,
            "warmup": {"steps": 3, "batch_size": 2, "length": 16},
        },
        token_kd_weight=0.5,
        steps=4,
    )
    env = {"DISTILL_HOME": str(tmp_path / "home")}
    distill("teach", path, env_extra=env)
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "teach" / "papers" / "train.jsonl").open()]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_teacher)
    for row in rows:  # the teacher's own tokens spell its summary, each with its top-3
        tokens = row["teacher_tokens"]
        text_ids = tokens["ids"][:-1] if row["teacher_finish_reason"] == "stop" else tokens["ids"]
        assert tokenizer.decode(text_ids, skip_special_tokens=True).strip() == row["teacher_summary"]
        assert all(len(top) == 3 for top in tokens["top_ids"])
        assert all(top[0] == t for top, t in zip(tokens["top_ids"], tokens["ids"]))  # greedy = top-1

    distill("train", path, env_extra=env)
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").open()]
    token_kd = [entry["papers/token_kd"] for entry in log if "papers/token_kd" in entry]
    assert len(token_kd) == 4 and all(v > 0 for v in token_kd)
    spec = json.loads((run_dir / "train" / "student" / "student.json").read_text())
    assert spec["summarizer"] == "teacher_layers" and spec["decoder_layers"][0] == 0
    assert spec["decoder_layers"][-1] == 3 and len(spec["decoder_layers"]) == 3
    warmup = spec["training"]["warmup"]
    assert warmup["objective"] == "heal" and warmup["cached"] is False and warmup["steps"] == 3
    first = load_file(str(run_dir / "train" / "student" / "model.safetensors"))

    # A second run builds the same student: the warm-up comes from the cache, the result is the same.
    distill("train", path, env_extra=env)
    spec = json.loads((run_dir / "train" / "student" / "student.json").read_text())
    assert spec["training"]["warmup"]["cached"] is True
    second = load_file(str(run_dir / "train" / "student" / "model.safetensors"))
    assert [k for k in first if not torch.equal(first[k], second[k])] == []

    distill("eval", path, env_extra=env)
    papers = _report(run_dir)["tasks"]["papers"]
    assert papers["decoding"] == {"num_beams": 2, "no_repeat_ngram_size": 2, "length_penalty": 1.0}
    assert papers["student_vs_reference_greedy"]  # degeneration is measured on plain greedy output
    # The report's examples are what the saved student writes with the recorded decoding.
    from distill.core.config import DecodingConfig
    from distill.student.model import load_student

    student, enc_tokenizer = load_student(run_dir / "train" / "student")
    cfg = load_pipeline(path)
    task = tasks_for(cfg)[0]
    test_rows = [json.loads(line) for line in (run_dir / "teach" / "papers" / "test.jsonl").open()]
    beams, _ = task.student_summaries(
        student, enc_tokenizer, test_rows[:3], 2, 8, DecodingConfig(**papers["decoding"])
    )
    assert [e["student"] for e in papers["examples"][:3]] == beams
    greedy, cut = task.student_summaries(student, enc_tokenizer, test_rows, 8, 8)
    assert papers["degeneration"]["student"]["cut"] == sum(cut)


def test_bert2bert_with_denoising_warmup(tmp_path, tiny_encoder, tiny_teacher, monkeypatch):
    path = _summary_pipeline(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        student={
            "encoder": tiny_encoder,
            "summarizer": "bert2bert",
            "max_length": 32,
            "max_document_length": 48,
            "max_summary_length": 12,
            "warmup": {"steps": 4, "batch_size": 2, "length": 16, "target_length": 6},
        },
        steps=2,
    )
    env = {"DISTILL_HOME": str(tmp_path / "home")}
    distill("teach", path, env_extra=env)
    distill("train", path, env_extra=env)
    spec = json.loads((tmp_path / "run" / "train" / "student" / "student.json").read_text())
    warmup = spec["training"]["warmup"]
    assert warmup["objective"] == "denoise" and warmup["cached"] is False
    assert warmup["spans"] > 0 and warmup["loss_first"] > 0
    distill("eval", path, env_extra=env)
    assert (
        _report(tmp_path / "run")["tasks"]["papers"]["degeneration"]["student"]["distinct_outputs_per_100"]
        > 0
    )


def test_token_kd_needs_the_teachers_vocabulary_and_top_k(tmp_path, tiny_encoder, tiny_teacher):
    from distill.core.errors import ConfigError

    path = _summary_pipeline(tmp_path, tiny_encoder, tiny_teacher, token_kd_weight=0.5)
    with pytest.raises(ConfigError, match="summarizer: teacher_layers"):
        load_pipeline(path)
    path = _summary_pipeline(
        tmp_path, tiny_encoder, tiny_teacher, token_kd_weight=0.5,
        student={"encoder": tiny_encoder, "summarizer": "teacher_layers"},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="summary_top_k"):
        load_pipeline(path)


def test_token_kd_needs_the_decoder_to_have_the_teachers_vocabulary(
    tmp_path, tiny_encoder, tiny_teacher, tiny_bpe_teacher
):
    from distill.core.errors import ConfigError

    student = {"encoder": tiny_encoder, "summarizer": "teacher_layers", "decoder_source": tiny_bpe_teacher}
    top_k = {"summary_top_k": 3}
    path = _summary_pipeline(tmp_path, tiny_encoder, tiny_teacher, teacher_extra=top_k, student=student)
    assert not load_pipeline(path).decoder_reads_teacher_tokens  # it learns the teacher's text
    path = _summary_pipeline(
        tmp_path, tiny_encoder, tiny_teacher, teacher_extra=top_k, student=student, token_kd_weight=0.5
    )
    with pytest.raises(ConfigError, match="teacher's\\s+own vocabulary"):
        load_pipeline(path)


def test_warmup_without_long_enough_text_is_an_error(tiny_encoder):
    from distill.core.config import StudentConfig, WarmupConfig
    from distill.core.errors import DistillError
    from distill.student.model import build_student
    from distill.tasks import task_for

    task = task_for(task_config(name="papers", kind="summarization"))
    cfg = StudentConfig(encoder=tiny_encoder, summarizer="bert2bert", warmup=WarmupConfig(steps=2, length=64))
    with pytest.raises(DistillError, match="warmup.length"):
        build_student(cfg, [task], None, ["too short"])
