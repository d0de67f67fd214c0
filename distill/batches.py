"""Turning teacher-labelled rows into tensors, and a deterministic multi-task batch order.

Each task's rows form an endless stream of seeded permutations; global step s takes
positions [s·G, (s+1)·G) of every task's stream (G = micro-batch × world size) and
each rank its own slice. The batch at any step is a function of (seed, step) alone, so
a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from distill.losses import IGNORE_INDEX
from distill.student import StudentSpec


@dataclass
class TaskTensors:
    """Pre-tokenised rows of one task (lists of token-id lists, unpadded)."""

    name: str
    kind: str
    input_ids: list[list[int]]
    teacher_probs: list[list[float]] | None = None
    hard_labels: list[int] | None = None
    target_ids: list[list[int]] | None = None
    batch_size: int = 1

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_classification(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[list[int]]:
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and rows[0].get("text_pair") is not None else None
    return tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]


def encode_documents(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[list[int]]:
    return tokenizer([r["document"] for r in rows], truncation=True, max_length=max_length)["input_ids"]


def encode_targets(texts: list[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Summary tokens ending in [SEP] (the decoder's eos); [CLS] is prepended by the shift."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [seq[: max_length - 1] + [tokenizer.sep_token_id] for seq in ids]


def task_tensors(
    name: str, kind: str, rows: list[dict[str, Any]], tokenizer: Any, spec: StudentSpec, batch_size: int
) -> TaskTensors:
    if kind == "summarization":
        return TaskTensors(
            name,
            kind,
            encode_documents(rows, tokenizer, spec.max_document_length),
            target_ids=encode_targets(
                [r["teacher_summary"] for r in rows], tokenizer, spec.max_summary_length
            ),
            batch_size=batch_size,
        )
    labels = spec.tasks[name]
    assert labels is not None
    # Gold label where the row has one, else the teacher's argmax.
    hard = [labels.index(r["label"] if r["label"] is not None else r["teacher_label"]) for r in rows]
    return TaskTensors(
        name,
        kind,
        encode_classification(rows, tokenizer, spec.max_length),
        teacher_probs=[r["teacher_distribution"] for r in rows],
        hard_labels=hard,
        batch_size=batch_size,
    )


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


class MultiTaskSchedule:
    def __init__(self, tasks: list[TaskTensors], seed: int, rank: int, world: int):
        self.tasks = tasks
        self.seed = seed
        self.rank = rank
        self.world = world
        self._perms: dict[tuple[int, int], list[int]] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps for the task that needs the most to see all its rows once."""
        return max(math.ceil(len(t) / (t.batch_size * self.world)) for t in self.tasks)

    def _perm(self, task_index: int, epoch: int) -> list[int]:
        key = (task_index, epoch)
        if key not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + task_index * 10_007 + epoch)
            self._perms[key] = torch.randperm(len(self.tasks[task_index]), generator=g).tolist()
        return self._perms[key]

    def indices(self, task_index: int, step: int) -> list[int]:
        task = self.tasks[task_index]
        n, global_batch = len(task), task.batch_size * self.world
        start = step * global_batch + self.rank * task.batch_size
        return [self._perm(task_index, q // n)[q % n] for q in range(start, start + task.batch_size)]

    def batch(self, step: int, pad_id: int) -> dict[str, dict[str, torch.Tensor]]:
        """task name → tensors for this rank at this global step."""
        out = {}
        for i, task in enumerate(self.tasks):
            idx = self.indices(i, step)
            ids = pad([task.input_ids[j] for j in idx], pad_id)
            item = {"input_ids": ids, "attention_mask": (ids != pad_id).long()}
            if task.kind == "summarization":
                item["target_ids"] = pad([task.target_ids[j] for j in idx], IGNORE_INDEX)  # type: ignore[index]
            else:
                item["teacher_probs"] = torch.tensor([task.teacher_probs[j] for j in idx])  # type: ignore[index]
                item["labels"] = torch.tensor([task.hard_labels[j] for j in idx])  # type: ignore[index]
            out[task.name] = item
        return out
