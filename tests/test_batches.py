"""Rows → tensors, and the deterministic multi-task batch order."""

import random

import pytest
import torch

from distill.core.config import TrainConfig
from distill.core.errors import DistillError
from distill.core.losses import IGNORE_INDEX
from distill.student.model import StudentSpec
from distill.student.tokens import encode_targets
from distill.tasks import Task, task_config, task_for
from distill.train.batches import MultiTaskSchedule, TaskTensors, rank_slice

PAPERS = task_for(task_config(name="papers", kind="summarization"))
REVIEWS = task_for(task_config(name="reviews", kind="classification", labels={"a": "a", "b": "b"}))
NLI = task_for(
    task_config(
        name="nli", kind="sentence_pair", data={}, labels={"a": "a", "b": "b"}, text_pair_field="other"
    )
)


def spec(*tasks: Task) -> StudentSpec:
    return StudentSpec(
        tasks={t.name: t.student_entry() for t in tasks},
        encoder_config={},
        decoder_config=None,
        max_length=32,
        max_document_length=32,
        max_summary_length=6,
        dropout=0.0,
        encoder_source="tiny-bert",
    )


def ragged_task(name: str, n: int, batch_size: int, seed: int = 0) -> TaskTensors:
    rng = random.Random(seed)
    return TaskTensors(name, [[7] * rng.randint(3, 60) for _ in range(n)], batch_size=batch_size)


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("world", [1, 2])
def test_every_row_once_per_epoch_per_task(grouped, world):
    tasks = [ragged_task("a", 37, 4), ragged_task("b", 10, 3, seed=1)]
    ranks = [MultiTaskSchedule(tasks, 5, r, world, grouped) for r in range(world)]
    for t, task in enumerate(tasks):
        per_epoch = ranks[0].batches_per_epoch(t)
        for epoch in range(3):
            seen = [
                j
                for step in range(epoch * per_epoch, (epoch + 1) * per_epoch)
                for schedule in ranks
                for j in schedule.indices(t, step)
            ]
            assert sorted(seen) == list(range(len(task))), (task.name, epoch)
    # Task b has fewer batches per epoch: it starts its next epoch while task a is still in its first.
    assert ranks[0].steps_per_epoch == ranks[0].batches_per_epoch(0) > ranks[0].batches_per_epoch(1)


def test_batches_are_a_function_of_seed_and_step():
    tasks = [ragged_task("a", 50, 4), ragged_task("b", 9, 2, seed=1)]
    straight = MultiTaskSchedule(tasks, 3, 0, 1)
    in_order = [straight.batch(step, 0) for step in range(40)]
    resumed = MultiTaskSchedule(tasks, 3, 0, 1)  # a fresh process, jumping straight to step 31
    for step in (31, 7, 39):
        for name, tensors in resumed.batch(step, 0).items():
            for key, value in tensors.items():
                assert torch.equal(value, in_order[step][name][key]), (step, name, key)
    other_seed = MultiTaskSchedule(tasks, 4, 0, 1)
    assert other_seed.indices(0, 0) != straight.indices(0, 0)


def test_rank_slices_are_disjoint_and_cover_the_global_batch():
    # 37 rows in global batches of 12: the last would hold 1 row for 3 ranks, so it is merged.
    tasks = [ragged_task("a", 37, 4)]
    world = 3
    ranks = [MultiTaskSchedule(tasks, 0, r, world) for r in range(world)]
    assert ranks[0].steps_per_epoch == 3
    seen = []
    for step in range(ranks[0].steps_per_epoch):
        slices = [set(s.indices(0, step)) for s in ranks]
        assert all(slices), "every rank gets rows"
        assert sum(map(len, slices)) == len(set().union(*slices))
        seen += [j for s in slices for j in s]
    assert sorted(seen) == list(range(37))
    assert rank_slice(list(range(7)), 0, 3) == [0, 1, 2] and rank_slice(list(range(7)), 2, 3) == [5, 6]


def test_length_grouping_cuts_padding():
    task = ragged_task("a", 800, 16)

    def padding(grouped: bool) -> float:
        schedule = MultiTaskSchedule([task], 0, 0, 1, grouped)
        real = total = 0
        for step in range(schedule.steps_per_epoch):
            batch = schedule.batch(step, 0)["a"]
            real += int(batch["attention_mask"].sum())
            total += batch["input_ids"].numel()
        return 1 - real / total

    assert padding(True) <= 0.10 < 0.30 < padding(False)
    # Grouped batches still come in a shuffled order, not shortest first.
    schedule = MultiTaskSchedule([task], 0, 0, 1)
    widths = [schedule.batch(step, 0)["a"]["input_ids"].shape[1] for step in range(schedule.steps_per_epoch)]
    assert widths != sorted(widths)


def test_attention_mask_comes_from_lengths():
    # Token 0 inside a row is real even though 0 is also the pad id.
    task = TaskTensors("a", [[5, 0, 6], [5]], batch_size=2)
    batch = MultiTaskSchedule([task], 0, 0, 1, False).batch(0, 0)["a"]
    by_row = sorted(zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()))
    assert by_row == [([5, 0, 0], [1, 0, 0]), ([5, 0, 6], [1, 1, 1])]


def test_cut_summaries_end_without_the_end_token(bert_tokenizer):
    sep = bert_tokenizer.sep_token_id
    ids = encode_targets(
        ["good coffee", "good coffee", "one two three four five six seven"],
        bert_tokenizer,
        6,
        [True, False, True],
        "tiny-bert",
    )
    words = bert_tokenizer("good coffee", add_special_tokens=False)["input_ids"]
    assert ids[0] == words + [sep]
    assert ids[1] == words  # cut by the teacher's limit: no end token
    assert len(ids[2]) == 6 and sep not in ids[2]  # cut by max_summary_length: no end token either


def summary_rows() -> list[dict]:
    return [
        {
            "document": "the coffee was fresh",
            "teacher_summary": "fresh coffee",
            "teacher_finish_reason": "stop",
        },
        {
            "document": "the box was broken",
            "teacher_summary": "broken box and",
            "teacher_finish_reason": "length",
        },
        {"document": "tasty snack", "teacher_summary": "tasty", "teacher_finish_reason": "stop"},
    ]


def test_cut_summaries_counted_or_excluded(bert_tokenizer):
    kept = PAPERS.tensors(summary_rows(), bert_tokenizer, spec(PAPERS), TrainConfig(summary_batch_size=2))
    assert len(kept) == 3 and kept.counts == {"cut": 1, "excluded": 0}
    assert kept.target_ids[1][-1] != bert_tokenizer.sep_token_id
    assert [t[-1] for t in (kept.target_ids[0], kept.target_ids[2])] == [bert_tokenizer.sep_token_id] * 2
    exclude = TrainConfig(summary_batch_size=2, cut_summaries="exclude")
    dropped = PAPERS.tensors(summary_rows(), bert_tokenizer, spec(PAPERS), exclude)
    assert len(dropped) == 2 and dropped.counts == {"cut": 1, "excluded": 1}
    all_cut = [{**r, "teacher_finish_reason": "length"} for r in summary_rows()]
    with pytest.raises(
        DistillError, match=r"task papers: no training summary is left \(every teacher summary cut"
    ):
        PAPERS.tensors(all_cut, bert_tokenizer, spec(PAPERS), exclude)


def labelled_rows() -> list[dict]:
    return [
        {
            "text": "great coffee",
            "label": "a",
            "teacher_label": "b",
            "teacher_distribution": [0.4, 0.6],
        },
        {
            "text": "stale snack",
            "label": None,
            "teacher_label": "a",
            "teacher_distribution": [0.7, 0.3],
        },
    ]


@pytest.mark.parametrize(
    "source, expected", [("gold", [0, IGNORE_INDEX]), ("teacher", [1, 0]), ("none", None)]
)
def test_hard_label_source(bert_tokenizer, source, expected):
    train = TrainConfig(batch_size=2, hard_labels=source, soft_weight=1.0 if source == "none" else 0.5)
    tensors = REVIEWS.tensors(labelled_rows(), bert_tokenizer, spec(REVIEWS), train)
    labels = tensors.row_targets.get("labels")
    assert (labels.tolist() if labels is not None else None) == expected
    batch = MultiTaskSchedule([tensors], 0, 0, 1).batch(0, bert_tokenizer.pad_token_id)["reviews"]
    assert ("labels" in batch) == (expected is not None)


def test_sentence_pairs_keep_both_texts_and_their_segments(bert_tokenizer):
    rows = [{**r, "text_pair": "a second text"} for r in labelled_rows()]
    tensors = NLI.tensors(rows, bert_tokenizer, spec(NLI), TrainConfig(batch_size=2))
    batch = MultiTaskSchedule([tensors], 0, 0, 1, False).batch(0, bert_tokenizer.pad_token_id)["nli"]
    first = tensors.input_ids.index(batch["input_ids"][0][: int(batch["attention_mask"][0].sum())].tolist())
    tokens = bert_tokenizer.convert_ids_to_tokens(tensors.input_ids[first])
    split = tokens.index("[SEP]")
    assert tokens[split + 1 :] == ["a", "second", "text", "[SEP]"]
    types = batch["token_type_ids"][0][: len(tokens)].tolist()
    assert types == [0] * (split + 1) + [1] * (len(tokens) - split - 1)


def test_teacher_confidence_drops_or_weights_rows(bert_tokenizer):
    from distill.core.config.train import TeacherConfidenceConfig

    rows = labelled_rows()  # teacher confidences 0.6 and 0.7
    drop = TrainConfig(batch_size=2, teacher_confidence=TeacherConfidenceConfig(min=0.65))
    kept = REVIEWS.tensors(rows, bert_tokenizer, spec(REVIEWS), drop)
    assert len(kept) == 1 and kept.row_targets["teacher_probs"].tolist() == [pytest.approx([0.7, 0.3])]
    assert kept.counts == {"min_confidence": 0.65, "kept": 1, "dropped": 1}
    with pytest.raises(DistillError, match=r"task reviews: train.teacher_confidence.min 0.9 drops every"):
        REVIEWS.tensors(
            rows,
            bert_tokenizer,
            spec(REVIEWS),
            TrainConfig(teacher_confidence=TeacherConfidenceConfig(min=0.9)),
        )
    weigh = TrainConfig(batch_size=2, teacher_confidence=TeacherConfidenceConfig(weight="confidence"))
    weighted = REVIEWS.tensors(rows, bert_tokenizer, spec(REVIEWS), weigh)
    assert weighted.row_targets["row_weight"].tolist() == pytest.approx([0.6, 0.7])
    batch = MultiTaskSchedule([weighted], 0, 0, 1, False).batch(0, bert_tokenizer.pad_token_id)["reviews"]
    probs = batch["teacher_probs"].max(-1).values
    assert batch["row_weight"].tolist() == pytest.approx(probs.tolist())  # sliced with its rows
    plain = REVIEWS.tensors(rows, bert_tokenizer, spec(REVIEWS), TrainConfig(batch_size=2))
    assert "row_weight" not in plain.row_targets and plain.counts is None
