"""Turning teacher-labelled rows into tensors, and a deterministic multi-task batch order.

Each task's epoch e is a list of global batches (G = micro-batch × world rows each) built
from a seeded permutation of its rows: with length grouping, chunks of ``CHUNK_BATCHES``
batches are sorted by input length before being cut into batches, and the batch order is
then shuffled, so a batch holds rows of similar length (little padding) while the order
stays random. Micro-step s takes batch s mod B_t of epoch s div B_t of every task t
(B_t batches per epoch) and each rank its own slice. Everything is a function of
(seed, task, epoch) alone, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from distill.errors import DistillError
from distill.losses import IGNORE_INDEX
from distill.student import StudentSpec, decoder_special_tokens

CHUNK_BATCHES = 50
"""Batches per length-sorted chunk: large enough to find rows of similar length, small enough
that the batches of one stretch of the permutation stay together (a short-range shuffle)."""


@dataclass
class TaskTensors:
    """Pre-tokenised rows of one task (token-id lists unpadded; per-row targets as tensors)."""

    name: str
    kind: str
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None
    """Sentence pairs: segment ids (0 first text, 1 second)."""
    teacher_probs: torch.Tensor | None = None
    """(rows, labels) teacher distributions."""
    hard_labels: torch.Tensor | None = None
    """(rows,) CE targets, IGNORE_INDEX for rows without one; None for pure KD."""
    target_ids: list[list[int]] | None = None
    batch_size: int = 1
    counts: dict[str, int] | None = None
    """Summarization: rows whose teacher summary was cut by the length limit, and how many
    of them were dropped."""

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_classification(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> dict[str, list[list[int]]]:
    """input_ids, plus token_type_ids for sentence pairs (the tokenizer puts its separator
    between the two texts)."""
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and rows[0].get("text_pair") is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    out = {"input_ids": encoded["input_ids"]}
    if pairs is not None and "token_type_ids" in encoded:
        out["token_type_ids"] = encoded["token_type_ids"]
    return out


def encode_documents(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[list[int]]:
    return tokenizer([r["document"] for r in rows], truncation=True, max_length=max_length)["input_ids"]


def encode_targets(
    texts: list[str], tokenizer: Any, max_length: int, finished: list[bool], encoder: str
) -> list[list[int]]:
    """Summary tokens, ending in the decoder's end token (sep or eos) only when the summary is
    finished: one cut by the teacher's length limit, or by ``max_length`` here, must not teach
    the student to stop there. The start token (cls or bos) is prepended by the shift."""
    _, end = decoder_special_tokens(tokenizer, encoder)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for seq, done in zip(ids, finished):
        ends = done and len(seq) < max_length
        out.append(seq[: max_length - 1] + [end] if ends else seq[:max_length])
    return out


def _summary_tensors(
    name: str,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    spec: StudentSpec,
    batch_size: int,
    cut_summaries: Literal["no_eos", "exclude"],
) -> TaskTensors:
    cut = [r["teacher_finish_reason"] == "length" for r in rows]
    kept = [r for r, c in zip(rows, cut) if not (c and cut_summaries == "exclude")]
    if not kept:
        raise DistillError(
            f"task {name}: every teacher summary was cut by the length limit and "
            "train.cut_summaries is exclude; raise teach.teacher.max_new_tokens"
        )
    finished = [r["teacher_finish_reason"] != "length" for r in kept]
    return TaskTensors(
        name,
        "summarization",
        encode_documents(kept, tokenizer, spec.max_document_length),
        target_ids=encode_targets(
            [r["teacher_summary"] for r in kept],
            tokenizer,
            spec.max_summary_length,
            finished,
            spec.encoder_source,
        ),
        batch_size=batch_size,
        counts={"cut": sum(cut), "excluded": len(rows) - len(kept)},
    )


def _hard_labels(
    rows: list[dict[str, Any]], labels: list[str], source: Literal["gold", "teacher", "none"]
) -> torch.Tensor | None:
    """(rows,) label indices for CE: gold (IGNORE_INDEX where a row has none), teacher argmax, or None."""
    if source == "none":
        return None
    if source == "gold":
        return torch.tensor(
            [labels.index(r["label"]) if r["label"] is not None else IGNORE_INDEX for r in rows]
        )
    return torch.tensor([labels.index(r["teacher_label"]) for r in rows])


def task_tensors(
    name: str,
    kind: str,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    spec: StudentSpec,
    batch_size: int,
    hard_labels: Literal["gold", "teacher", "none"] = "teacher",
    cut_summaries: Literal["no_eos", "exclude"] = "no_eos",
) -> TaskTensors:
    if kind == "summarization":
        return _summary_tensors(name, rows, tokenizer, spec, batch_size, cut_summaries)
    labels = spec.tasks[name]
    assert labels is not None
    encoded = tokenize_classification(rows, tokenizer, spec.max_length)
    return TaskTensors(
        name,
        kind,
        encoded["input_ids"],
        token_type_ids=encoded.get("token_type_ids"),
        teacher_probs=torch.tensor([r["teacher_distribution"] for r in rows]),
        hard_labels=_hard_labels(rows, labels, hard_labels),
        batch_size=batch_size,
    )


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


def length_mask(seqs: list[list[int]]) -> torch.Tensor:
    """(batch, width) 1 for real tokens: from the lengths, not ``!= pad_id``, which would hide
    real tokens in vocabularies whose pad id doubles as eos."""
    width = max(len(s) for s in seqs)
    return (torch.arange(width) < torch.tensor([len(s) for s in seqs]).unsqueeze(1)).long()


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (shares differ by at most one row)."""
    q, rem = divmod(len(batch), world)
    start = rank * q + min(rank, rem)
    return batch[start : start + q + (rank < rem)]


class MultiTaskSchedule:
    def __init__(
        self, tasks: list[TaskTensors], seed: int, rank: int, world: int, group_by_length: bool = True
    ):
        for task in tasks:
            if len(task) < world:
                raise DistillError(f"task {task.name}: {len(task)} rows cannot feed {world} processes")
        self.tasks = tasks
        self.seed = seed
        self.rank = rank
        self.world = world
        self.group_by_length = group_by_length
        self._epochs: dict[int, tuple[int, list[list[int]]]] = {}  # task → (epoch, its batches)

    def batches_per_epoch(self, task_index: int) -> int:
        """⌈rows / G⌉, less one when the short last batch has fewer rows than ranks (it is
        merged into the one before, so every rank gets at least one row)."""
        task = self.tasks[task_index]
        n, global_batch = len(task), task.batch_size * self.world
        count = math.ceil(n / global_batch)
        return count - 1 if count > 1 and 0 < n % global_batch < self.world else count

    @property
    def steps_per_epoch(self) -> int:
        """Micro-steps for the task that needs the most to see all its rows once."""
        return max(self.batches_per_epoch(i) for i in range(len(self.tasks)))

    def epoch_batches(self, task_index: int, epoch: int) -> list[list[int]]:
        """The global batches (row indices) of one task's epoch; each row in exactly one."""
        cached = self._epochs.get(task_index)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        task = self.tasks[task_index]
        global_batch = task.batch_size * self.world
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + task_index * 10_007 + epoch)
        order = torch.randperm(len(task), generator=g).tolist()
        if self.group_by_length:
            chunk = global_batch * CHUNK_BATCHES
            lengths = [len(s) for s in task.input_ids]
            order = [
                j
                for c in range(0, len(order), chunk)
                for j in sorted(order[c : c + chunk], key=lengths.__getitem__)
            ]
        batches = [order[k : k + global_batch] for k in range(0, len(order), global_batch)]
        if len(batches) > self.batches_per_epoch(task_index):
            batches[-2:] = [batches[-2] + batches[-1]]
        if self.group_by_length:
            batches = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist()]
        self._epochs[task_index] = (epoch, batches)
        return batches

    def indices(self, task_index: int, step: int) -> list[int]:
        """Row indices of one task for this rank at micro-step ``step``."""
        epoch, b = divmod(step, self.batches_per_epoch(task_index))
        return rank_slice(self.epoch_batches(task_index, epoch)[b], self.rank, self.world)

    def batch(self, step: int, pad_id: int) -> dict[str, dict[str, torch.Tensor]]:
        """task name → tensors for this rank at micro-step ``step``."""
        out = {}
        for i, task in enumerate(self.tasks):
            idx = self.indices(i, step)
            seqs = [task.input_ids[j] for j in idx]
            item = {"input_ids": pad(seqs, pad_id), "attention_mask": length_mask(seqs)}
            if task.token_type_ids is not None:
                item["token_type_ids"] = pad([task.token_type_ids[j] for j in idx], 0)
            if task.target_ids is not None:
                item["target_ids"] = pad([task.target_ids[j] for j in idx], IGNORE_INDEX)
            if task.teacher_probs is not None:
                rows = torch.tensor(idx)
                item["teacher_probs"] = task.teacher_probs[rows]  # (batch, labels)
                if task.hard_labels is not None:
                    item["labels"] = task.hard_labels[rows]  # (batch,)
            out[task.name] = item
        return out
