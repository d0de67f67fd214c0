"""The local teacher: the same soft-label rule as the API teacher, and fast scoring that changes
no answer (prefix cache, batching, last-position LM head, one tokenization)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from distill.core.config import TaskConfig, TeacherConfig
from distill.core.errors import DistillError
from distill.pipeline import section
from distill.tasks import task_config
from distill.teach.prompts import classification_prompt, summary_prompt
from distill.teach.teachers.answers import distribution_from_logprobs, label_token_groups
from distill.teach.teachers.local import LocalTeacher, _shared_length, distribution_from_token_logprobs
from tests.conftest import review

VERBALIZERS = ["great", "other"]
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_local_and_api_teachers_read_the_same_class_distribution(bert_tokenizer):
    # An uncased vocabulary has no case variants; add the ones a cased BPE vocabulary spells.
    vocab = bert_tokenizer.convert_ids_to_tokens(list(range(len(bert_tokenizer))))
    vocab += ["Great", "ĠGreat", "Ġgreat", "Other", "ĠOTHER"]
    answer = {
        "great": 0.10, "Great": 0.12, "ĠGreat": 0.08, "Ġgreat": 0.05, "gr": 0.04, "##gre": 0.03,
        "other": 0.06, "Other": 0.05, "ĠOTHER": 0.02, "ot": 0.03,
        "the": 0.25, ".": 0.17,
    }  # fmt: skip
    probs = torch.full((len(vocab),), 1e-13, dtype=torch.float64)  # every other token: negligible
    for token, p in answer.items():
        probs[vocab.index(token)] = p
    probs /= probs.sum()

    groups = label_token_groups(vocab, VERBALIZERS)
    local, mass = distribution_from_token_logprobs(probs.log()[None], groups)  # (1, labels), (1,)
    listed = [{"token": t, "logprob": math.log(probs[vocab.index(t)])} for t in answer]
    api = distribution_from_logprobs(
        [{"token": "Great", "logprob": listed[1]["logprob"], "top_logprobs": listed}], VERBALIZERS
    )

    great, other = 0.42, 0.16  # the listed spellings of each label, before renormalising
    assert local[0].tolist() == pytest.approx([great / 0.58, other / 0.58], abs=1e-6)
    assert api["distribution"] == pytest.approx(local[0].tolist(), abs=1e-6)
    assert api["label_mass"] == pytest.approx(float(mass[0]), abs=1e-6)
    assert float(mass[0]) == pytest.approx(0.58, abs=1e-6)
    # The old rule (one exact token per verbalizer) reads a different answer from the same tokens.
    exact = [[vocab.index("great")], [vocab.index("other")]]
    assert (
        abs(float(distribution_from_token_logprobs(probs.log()[None], exact)[0][0, 0]) - great / 0.58) > 0.05
    )


def _prompts(n: int, seed: int = 0) -> tuple[TaskConfig, list]:
    rng = random.Random(seed)
    task = task_config(
        name="reviews", kind="classification", data={}, labels={"great": "great", "other": "other"}
    )
    shots = [{"text": review(rng, good), "label": "great" if good else "other", "id": "s"} for good in (1, 0)]
    # Bodies of very different lengths; the longest are cut to max_input_tokens.
    texts = [" ".join(review(rng, i % 2 == 0) for _ in range(1 + i % 7)) for i in range(n)]
    return task, [
        classification_prompt(task, {"text": t, "label": None, "id": str(i)}, shots)
        for i, t in enumerate(texts)
    ]


def _teacher(path: str, chat_template: str | None, **cfg) -> LocalTeacher:
    settings = {"model": path, "device": "cpu", "batch_size": 4, "max_input_tokens": 96, **cfg}
    teacher = LocalTeacher(section(TeacherConfig, settings))
    teacher.tokenizer.chat_template = chat_template
    return teacher


def _rendered(teacher: LocalTeacher, prompt) -> str:
    if teacher.tokenizer.chat_template is None:
        return prompt.user + "\n\n" + prompt.assistant_prefix
    turn = [{"role": "user", "content": prompt.user}]
    return (
        teacher.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        + prompt.assistant_prefix
    )


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE], ids=["plain", "chat"])
def test_prompts_are_tokenized_once_as_the_whole_rendered_text(tiny_teacher, chat_template):
    teacher = _teacher(tiny_teacher, chat_template)
    _, prompts = _prompts(14)
    tok = teacher.tokenizer
    cut = 0
    for prompt, ids in zip(prompts, teacher.encode(prompts)):
        whole = tok(_rendered(teacher, prompt), add_special_tokens=False)["input_ids"]
        if len(whole) <= 96:
            assert ids == whole
            continue
        cut += 1
        head = _rendered(teacher, dataclasses.replace(prompt, body="")).split(prompt.tail)[0]
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        after_ids = tok(
            prompt.tail + _rendered(teacher, prompt).split(prompt.tail)[1], add_special_tokens=False
        )
        assert len(ids) == 96
        assert (
            ids[: len(head_ids)] == head_ids
            and ids == whole[: 96 - len(after_ids["input_ids"])] + after_ids["input_ids"]
        )
    assert 0 < cut < len(prompts)


def _reference(teacher: LocalTeacher, prompts) -> torch.Tensor:
    """Next-token log-probs (prompts, vocab) from the plain full forward, one prompt at a time."""
    rows = []
    with torch.inference_mode():
        for ids in teacher.encode(prompts):
            logits = teacher.model(input_ids=torch.tensor([ids])).logits[0, -1]
            rows.append(logits.float().log_softmax(-1))
    return torch.stack(rows)


def _scored(teacher: LocalTeacher, prompts) -> tuple[torch.Tensor, list[list[float]]]:
    logprobs = torch.empty(len(prompts), teacher.model.config.vocab_size)
    for batch, rows in teacher.next_token_logprobs(prompts):
        logprobs[batch] = rows
    answers = dict(teacher.label_distribution(prompts, VERBALIZERS))
    return logprobs, [answers[i]["distribution"] for i in range(len(prompts))]


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE], ids=["plain", "chat"])
def test_prefix_cache_and_batching_change_no_answer(tiny_teacher, chat_template):
    _, prompts = _prompts(11)  # 11 = two full batches of 4 and a short one
    fast = _teacher(tiny_teacher, chat_template)
    reference = _reference(fast, prompts)
    groups = fast.label_groups(VERBALIZERS)
    expected = distribution_from_token_logprobs(reference, groups)[0]
    for teacher in (
        fast,
        _teacher(tiny_teacher, chat_template, prefix_cache=False),
        _teacher(tiny_teacher, chat_template, batch_size=1),
    ):
        for _ in range(2):  # a second call on the same teacher: no state left from the first
            logprobs, distributions = _scored(teacher, prompts)
            assert torch.allclose(logprobs, reference, atol=1e-4), (
                teacher.cfg,
                (logprobs - reference).abs().max(),
            )
            assert torch.allclose(torch.tensor(distributions), expected, atol=1e-5)
    # The cache covers a long shared start here (template, instruction, two shots).
    assert _shared_length(fast.encode(prompts)) > 40


def test_label_answer_is_the_summed_token_probability(tiny_teacher):
    teacher = _teacher(tiny_teacher, None)
    _, prompts = _prompts(3)
    reference = _reference(teacher, prompts).exp()  # (prompts, vocab)
    groups = label_token_groups(
        teacher.tokenizer.convert_ids_to_tokens(list(range(len(teacher.tokenizer)))), VERBALIZERS
    )
    answers = dict(teacher.label_distribution(prompts, VERBALIZERS))
    for i in range(len(prompts)):
        great, other = (float(reference[i, g].sum()) for g in groups)
        assert answers[i]["label_mass"] == pytest.approx(great + other, rel=1e-4)
        assert answers[i]["distribution"] == pytest.approx(
            [great / (great + other), other / (great + other)], abs=1e-5
        )


def test_a_verbalizer_no_token_can_start_is_named(tiny_teacher):
    teacher = _teacher(tiny_teacher, None)
    _, prompts = _prompts(2)
    with pytest.raises(DistillError, match="☃snow"):
        teacher.label_distribution(prompts, ["great", "☃snow"])


def test_an_instruction_longer_than_the_input_budget_fails_before_any_batch(tiny_teacher):
    teacher = _teacher(tiny_teacher, CHAT_TEMPLATE, max_input_tokens=40)
    _, prompts = _prompts(2)
    with pytest.raises(DistillError, match="teacher.max_input_tokens 40 leaves no room"):
        teacher.label_distribution(prompts, VERBALIZERS)


def test_summaries_generate_from_the_same_tokens(tiny_teacher):
    teacher = _teacher(tiny_teacher, CHAT_TEMPLATE, batch_size=1, max_new_tokens=6)
    task = task_config(name="papers", kind="summarization")
    prompts = [summary_prompt(task, {"document": review(random.Random(i), True)}) for i in range(3)]
    answers = dict(teacher.summarize(prompts))
    for i, prompt in enumerate(prompts):
        ids = teacher.tokenizer(_rendered(teacher, prompt), add_special_tokens=False, return_tensors="pt")
        ids = ids["input_ids"]  # (1, tokens)
        out = teacher.model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=teacher._stop_ids)
        expected = teacher.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert answers[i]["text"] == expected.strip()
    # Batched (left-padded) generation gives the same texts.
    batched = _teacher(teacher.cfg.model, CHAT_TEMPLATE, batch_size=3, max_new_tokens=6)
    assert dict(batched.summarize(prompts)) == answers
