"""The teacher-layers summarizer (distill/student/summarizers/) and token-level KD."""

import math

import pytest
import torch

from distill.core.config import StudentConfig
from distill.core.errors import DistillError
from distill.core.losses import token_kd_loss
from distill.pipeline import section
from distill.student.summarizers.teacher_layers.decoder import (
    CausalSummarizer,
    DecoderCodec,
    VocabMap,
    block_influence,
    choose_layers,
    cut_teacher,
)
from distill.tasks import task_config


def _teacher(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_token_kd_loss_closed_form():
    # Student over 3 tokens: softmax([0, ln 2, ln 4]) = [1/7, 2/7, 4/7].
    logits = torch.log(torch.tensor([[[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]]))
    # Teacher top-2 at position 0: token 2 at 0.6, token 1 at 0.2 → renormalised 0.75 / 0.25.
    top_ids = torch.tensor([[[2, 1], [0, 1]]])
    top_lp = torch.log(torch.tensor([[[0.6, 0.2], [0.5, 0.5]]]))
    mask = torch.tensor([[True, False]])  # position 1 is padding and must not count
    expected = 0.75 * math.log(0.75 / (4 / 7)) + 0.25 * math.log(0.25 / (2 / 7))
    assert token_kd_loss(logits, top_ids, top_lp, mask).item() == pytest.approx(expected, abs=1e-6)
    # Two real positions: the mean. At the second the student's full softmax is [0.6, 0.2, 0.2]
    # (not renormalised to the teacher's top-k: mass off the top-k is a miss).
    logits2 = torch.log(torch.tensor([[[1.0, 2.0, 4.0], [3.0, 1.0, 1.0]]]))
    top2 = torch.tensor([[[2, 1], [0, 1]]])
    lp2 = torch.log(torch.tensor([[[0.6, 0.2], [0.6, 0.2]]]))
    second = 0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.2)
    both = token_kd_loss(logits2, top2, lp2, torch.tensor([[True, True]])).item()
    assert both == pytest.approx((expected + second) / 2, abs=1e-6)


def test_all_layers_reproduce_the_teacher_exactly(tiny_bpe_teacher, bpe_tokenizer):
    teacher = _teacher(tiny_bpe_teacher)
    # With the bridge from the shared encoder too: zero-initialised, it changes nothing yet.
    student = CausalSummarizer.from_teacher(teacher, [0, 1, 2, 3], None, encoder_hidden=8, bridge=True)
    ids = torch.tensor([bpe_tokenizer("the soup was great and the service fast")["input_ids"]])
    prompt, target = ids[:, :5], ids[:, 5:]
    with torch.no_grad():
        expected = teacher(input_ids=ids[:, :-1]).logits[:, 4:]  # the positions predicting the target
        got = student(prompt, torch.ones_like(prompt), torch.randn(1, 8), target)
    assert torch.equal(got, expected)


def test_vocabulary_cut_keeps_the_teacher_rows(tiny_bpe_teacher, bpe_tokenizer):
    teacher = _teacher(tiny_bpe_teacher)
    text = "the soup was great"
    teacher_ids = bpe_tokenizer(text)["input_ids"]
    vocab = VocabMap.from_corpus(bpe_tokenizer, teacher_ids)
    assert len(vocab.kept) < len(bpe_tokenizer)
    student = CausalSummarizer.from_teacher(teacher, [0, 1, 2, 3], vocab.kept, encoder_hidden=8, bridge=False)
    ids = torch.tensor([vocab.to_student(teacher_ids)])
    assert vocab.to_teacher(ids[0].tolist()) == teacher_ids
    with torch.no_grad():
        full = teacher(input_ids=torch.tensor([teacher_ids[:-1]])).logits[:, 1:]
        got = student(ids[:, :2], torch.ones_like(ids[:, :2]), None, ids[:, 2:])
    # The same layers over the same inputs: the kept rows of the teacher's logits.
    torch.testing.assert_close(got, full[..., vocab.kept], rtol=1e-5, atol=1e-5)


def test_a_word_outside_the_vocabulary_is_spelled_by_its_bytes(bpe_tokenizer):
    vocab = VocabMap.from_corpus(bpe_tokenizer, bpe_tokenizer("the soup")["input_ids"])
    codec = DecoderCodec(bpe_tokenizer, vocab)
    teacher_ids = bpe_tokenizer("zebra ünïcode")["input_ids"]
    student_ids = codec.student(teacher_ids)
    assert len(student_ids) > len(teacher_ids)  # spelled out
    assert codec.decode(student_ids) == "zebra ünïcode"


def test_choose_layers():
    influence = [9.0, 0.1, 0.5, 0.3, 0.9, 9.0]
    assert choose_layers(6, 4, "block_influence", influence) == [0, 2, 4, 5]
    assert choose_layers(6, 2, "block_influence", influence) == [0, 5]
    assert choose_layers(7, 4, "uniform") == [0, 2, 4, 6]
    assert choose_layers(6, 6, "uniform") == list(range(6))
    with pytest.raises(DistillError, match="decoder_layers"):
        choose_layers(6, 7, "uniform")


def test_block_influence_finds_a_layer_that_does_nothing(tiny_bpe_teacher, bpe_tokenizer):
    teacher = _teacher(tiny_bpe_teacher)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: influence 0
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    ids = torch.tensor([bpe_tokenizer("the soup was great and fast")["input_ids"]])
    influence = block_influence(teacher.model, [(ids, torch.ones_like(ids))])
    assert influence[2] == pytest.approx(0.0, abs=1e-6)
    assert min(influence[1], influence[3]) > 1e-3
    assert choose_layers(4, 3, "block_influence", influence) == [0, 1, 3]


def test_left_padded_batch_generates_what_each_row_does_alone(tiny_bpe_teacher, bpe_tokenizer):
    torch.manual_seed(0)
    teacher = _teacher(tiny_bpe_teacher)
    model = CausalSummarizer.from_teacher(teacher, [0, 3], None, encoder_hidden=8, bridge=True)
    torch.nn.init.normal_(model.bridge.weight)  # a trained bridge: the soft tokens matter
    codec = DecoderCodec(bpe_tokenizer, None)
    prompts = [
        codec.prompt_ids("Write a headline.", doc, 64)
        for doc in ("the soup", "the service was very slow and cold")
    ]
    pooled = torch.randn(2, 8)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    both = model.generate(ids, mask, pooled, 6, codec.stop_ids, num_beams=1)
    for i, p in enumerate(prompts):
        alone = model.generate(
            torch.tensor([p]),
            torch.ones(1, len(p), dtype=torch.long),
            pooled[i : i + 1],
            6,
            codec.stop_ids,
            num_beams=1,
        )
        assert both[i, : alone.shape[1]].tolist() == alone[0].tolist()
    # Teacher forcing agrees with generation: the greedy tokens are the argmax of forward's logits.
    target = both[1:2, :4]
    logits = model(ids[1:2], mask[1:2], pooled[1:2], target)
    assert logits.argmax(-1)[0, :4].tolist() == target[0].tolist()


def test_cut_teacher_measures_on_the_corpus(tiny_bpe_teacher):
    rows = [
        (
            "Write a headline.",
            {
                "document": "the soup was great",
                "teacher_summary": "great soup",
                "teacher_finish_reason": "stop",
            },
        ),
        (
            "Write a headline.",
            {"document": "slow service", "teacher_summary": "slow", "teacher_finish_reason": "length"},
        ),
    ]
    settings = {"summarizer": "teacher_layers", "decoder_source": tiny_bpe_teacher, "decoder_layers": 3}
    cfg = section(StudentConfig, {**settings, "bridge": True}, "train.student")
    summarizer, codec, layers = cut_teacher(cfg, rows, encoder_hidden=8)
    assert layers[0] == 0 and layers[-1] == 3 and len(layers) == 3
    assert summarizer.lm.config.num_hidden_layers == 3
    assert summarizer.lm.config.vocab_size == len(codec.vocab.kept)
    # A finished summary ends in the end-of-turn token, a cut one does not.
    from distill.student.summarizers.teacher_layers.decoder import teacher_targets

    end = codec.end_id
    assert teacher_targets(codec, rows[0][1], 16)[-1] == end
    assert teacher_targets(codec, rows[1][1], 16)[-1] != end
    with pytest.raises(DistillError, match="training rows"):
        cut_teacher(cfg, [], encoder_hidden=8)


def test_an_api_answer_without_its_stop_token_still_ends(bpe_tokenizer):
    from distill.student.summarizers.teacher_layers.decoder import teacher_targets
    from distill.tasks import task_for

    codec = DecoderCodec(bpe_tokenizer, None)
    ids = bpe_tokenizer("great soup")["input_ids"]
    row = {
        "id": "r1",
        "teacher_summary": "great soup",
        "teacher_finish_reason": "stop",
        # An API answer: its own tokens, no stop token, top-2 at each.
        "teacher_tokens": {
            "ids": ids,
            "top_ids": [[t, 0] for t in ids],
            "top_logprobs": [[-0.1, -2.4]] * len(ids),
        },
    }
    target = teacher_targets(codec, row, 16)
    assert target == [*ids, codec.end_id]
    task = task_for(task_config(name="papers", kind="summarization"))
    top_ids, top_lp = task._top(codec, row, len(target))
    assert len(top_ids) == len(target) and top_ids[-1] == [codec.end_id, codec.end_id]
    assert top_lp[-1] == [0.0, -1e4]
    # The end position is taught as certain: KL 0 when the student is sure of the end token.
    logits = torch.full((1, 1, len(bpe_tokenizer)), -30.0)
    logits[0, 0, codec.end_id] = 30.0
    loss = token_kd_loss(
        logits, torch.tensor([top_ids[-1:]]), torch.tensor([top_lp[-1:]]), torch.tensor([[True]])
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # A local answer already ends in its stop token: nothing is added; a cut one gets no end.
    local = {**row, "teacher_tokens": {**row["teacher_tokens"], "ids": [*ids, codec.end_id]}}
    assert teacher_targets(codec, local, 16) == [*ids, codec.end_id]
    assert teacher_targets(codec, {**row, "teacher_finish_reason": "length"}, 16) == ids


def test_a_wordpiece_vocabulary_cannot_be_cut(bert_tokenizer):
    with pytest.raises(DistillError, match="byte-level BPE"):
        VocabMap.from_corpus(bert_tokenizer, [1000, 1001])
