import json

import pytest
import torch

from distill.config import StudentConfig, TaskConfig
from distill.errors import DistillError
from distill.student import build_student, load_student, save_student

TASKS = [
    TaskConfig(
        name="reviews",
        kind="classification",
        data={"train": "x.jsonl"},
        labels={"a": "a", "b": "b", "c": "c"},
    ),
    TaskConfig(name="papers", kind="summarization", data={"train": "y.jsonl"}),
]


def test_student_shares_one_encoder(tiny_encoder):
    student, _ = build_student(StudentConfig(encoder=tiny_encoder), TASKS)
    assert student.encoder is student.backbone.encoder
    assert student.backbone.decoder.config.add_cross_attention
    assert set(student.heads) == {"reviews"}


def test_save_load_round_trip_is_self_contained(tiny_encoder, tmp_path):
    student, tokenizer = build_student(StudentConfig(encoder=tiny_encoder), TASKS)
    student.eval()
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    loaded, loaded_tok = load_student(folder)
    assert json.loads((folder / "student.json").read_text())["tasks"] == {
        "reviews": ["a", "b", "c"],
        "papers": None,
    }
    x = tokenizer(["good coffee", "stale and bland snack"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(
            student.classify("reviews", x.input_ids, x.attention_mask),
            loaded.classify("reviews", x.input_ids, x.attention_mask),
        )
        a = student.summarize(x.input_ids, x.attention_mask, 6)
        b = loaded.summarize(x.input_ids, x.attention_mask, 6)
    assert torch.equal(a, b)
    assert loaded_tok("good coffee").input_ids == tokenizer("good coffee").input_ids


def test_corrupt_student_folder_is_named(tiny_encoder, tmp_path):
    student, tokenizer = build_student(StudentConfig(encoder=tiny_encoder), TASKS)
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(DistillError, match="corrupt student folder"):
        load_student(folder)
    with pytest.raises(DistillError, match="not a student folder"):
        load_student(tmp_path)
