import copy
import json

import pytest
import torch

from distill.core.config import StudentConfig
from distill.core.errors import DistillError
from distill.core.losses import IGNORE_INDEX
from distill.student.model import build_student, load_student, save_student
from distill.student.tokens import decoder_inputs, decoder_special_tokens
from distill.tasks import task_config, task_for
from distill.train.recipe import decay_groups, optimizer_groups

TASK_CONFIGS = [
    task_config(
        name="reviews",
        kind="classification",
        data={"train": "x.jsonl"},
        labels={"a": "a", "b": "b", "c": "c"},
    ),
    task_config(name="papers", kind="summarization", data={"train": "y.jsonl"}),
]
TASKS = [task_for(t) for t in TASK_CONFIGS]


def test_student_shares_one_encoder(tiny_encoder):
    student, _ = build_student(StudentConfig(encoder=tiny_encoder, summarizer="bert2bert"), TASKS)
    assert student.encoder is student.backbone.encoder
    assert student.backbone.decoder.config.add_cross_attention
    assert set(student.heads) == {"reviews"}


def test_save_load_round_trip_is_self_contained(tiny_encoder, tmp_path):
    student, tokenizer = build_student(StudentConfig(encoder=tiny_encoder, summarizer="bert2bert"), TASKS)
    student.eval()
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    loaded, loaded_tok = load_student(folder)
    assert json.loads((folder / "student.json").read_text())["tasks"] == {
        "reviews": {"kind": "classification", "labels": ["a", "b", "c"], "prefix": None},
        "papers": {
            "kind": "summarization",
            "labels": None,
            "prefix": "papers: ",
            "instruction": "Summarize the following text in two or three sentences.",
        },
    }
    x = tokenizer(["good coffee", "stale and bland snack"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(
            student.classify("reviews", x.input_ids, x.attention_mask),
            loaded.classify("reviews", x.input_ids, x.attention_mask),
        )
        a = student.summarize("papers", x.input_ids, x.attention_mask, 6)
        b = loaded.summarize("papers", x.input_ids, x.attention_mask, 6)
    assert torch.equal(a, b)
    assert loaded_tok("good coffee").input_ids == tokenizer("good coffee").input_ids


def test_corrupt_student_folder_is_named(tiny_encoder, tmp_path):
    student, tokenizer = build_student(StudentConfig(encoder=tiny_encoder, summarizer="bert2bert"), TASKS)
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(DistillError, match="corrupt student folder"):
        load_student(folder)
    with pytest.raises(DistillError, match="not a student folder"):
        load_student(tmp_path)


def test_decoder_input_is_start_then_target_shifted_right():
    target = torch.tensor([[5, 6, 7, 102], [8, 102, IGNORE_INDEX, IGNORE_INDEX]])
    ids, mask = decoder_inputs(target, start_id=101, pad_id=0)
    assert ids.tolist() == [[101, 5, 6, 7], [101, 8, 102, 0]]
    # Position t sees target[t-1]; the pad position after the end is the only one masked.
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_decoder_mask_comes_from_targets_not_from_the_pad_id():
    # A vocabulary whose pad id is also its end token (pad = eos = 2): the end is still attended.
    target = torch.tensor([[5, 2, IGNORE_INDEX]])
    ids, mask = decoder_inputs(target, start_id=1, pad_id=2)
    assert ids.tolist() == [[1, 5, 2]] and mask.tolist() == [[1, 1, 1]]


def test_summary_tokens_fall_back_to_bos_and_eos(bert_tokenizer):
    assert decoder_special_tokens(bert_tokenizer, "bert") == (
        bert_tokenizer.cls_token_id,
        bert_tokenizer.sep_token_id,
    )
    tok = copy.deepcopy(bert_tokenizer)
    tok.cls_token, tok.sep_token = None, None
    tok.bos_token, tok.eos_token = "[unused1]", "[unused2]"
    assert decoder_special_tokens(tok, "gpt-ish") == (
        tok.convert_tokens_to_ids("[unused1]"),
        tok.convert_tokens_to_ids("[unused2]"),
    )
    tok.bos_token, tok.eos_token = None, None
    with pytest.raises(DistillError, match=r"student.encoder 'gpt-ish'.*no cls/bos and no sep/eos"):
        decoder_special_tokens(tok, "gpt-ish")


def test_weight_decay_skips_biases_and_layer_norms(tiny_encoder):
    student, _ = build_student(StudentConfig(encoder=tiny_encoder, summarizer="bert2bert"), TASKS)
    groups = decay_groups(student)
    no_decay, decay = set(groups["no_decay"]), set(groups["decay"])
    assert "heads.reviews.1.bias" in no_decay and "heads.reviews.1.weight" in decay
    assert "backbone.encoder.embeddings.LayerNorm.weight" in no_decay
    assert "backbone.encoder.encoder.layer.0.attention.output.LayerNorm.weight" in no_decay
    assert "backbone.encoder.encoder.layer.0.attention.self.query.weight" in decay
    assert "backbone.encoder.encoder.layer.0.attention.self.query.bias" in no_decay
    assert "backbone.encoder.embeddings.word_embeddings.weight" in decay
    assert not no_decay & decay
    assert no_decay | decay == {n for n, _ in student.named_parameters()}
    optimizer_groups_ = optimizer_groups(student, groups, 0.01)
    assert [g["weight_decay"] for g in optimizer_groups_] == [0.01, 0.0]
    assert all(n.endswith(".bias") or "LayerNorm" in n for n in no_decay)


def test_student_folder_without_training_record_still_loads(tiny_encoder, tmp_path):
    student, tokenizer = build_student(StudentConfig(encoder=tiny_encoder, summarizer="bert2bert"), TASKS[:1])
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    spec = json.loads((folder / "student.json").read_text())
    del spec["training"]  # a folder written before train recorded how it trained
    (folder / "student.json").write_text(json.dumps(spec))
    loaded, _ = load_student(folder)
    assert loaded.spec.training is None
