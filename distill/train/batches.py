"""Turning teacher-labelled rows into tensors, and a deterministic multi-task batch order.

Each task's epoch e is a list of global batches (G = micro-batch × world rows each) built
from a seeded permutation of its rows: with length grouping, chunks of ``CHUNK_BATCHES``
batches are sorted by input length before being cut into batches, and the batch order is
then shuffled, so a batch holds rows of similar length (little padding) while the order
stays random. A task's k-th visit takes batch k mod B_t of its epoch k div B_t (B_t batches
per epoch), each rank its own slice. With sampling ``all`` every task is visited at every
micro-step (k = s); otherwise the sampler draws the micro-step's task and counts the visits.
Everything is a function of (seed, task, epoch) and the sampler's (seed, step) alone, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.core.errors import DistillError
from distill.core.losses import IGNORE_INDEX
from distill.core.tensors import left_pad, length_mask, pad, pad_top

CHUNK_BATCHES = 50
"""Batches per length-sorted chunk: large enough to find rows of similar length, small enough
that the batches of one stretch of the permutation stay together (a short-range shuffle)."""


@dataclass
class TaskTensors:
    """Pre-tokenised rows of one task (token-id lists unpadded; per-row targets as tensors)."""

    name: str
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None
    """Sentence pairs: segment ids (0 first text, 1 second)."""
    row_targets: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-row tensors a batch slices by row (first dimension = rows): ``teacher_probs``
    (rows, labels), ``labels`` (rows,) …"""
    target_ids: list[list[int]] | None = None
    """Summarization: target token ids per row, unpadded."""
    decoder_prompt_ids: list[list[int]] | None = None
    """Summarization with a decoder-only summarizer: the prompt it reads, per row (its own ids)."""
    target_top: list[tuple[list[list[int]], list[list[float]]]] | None = None
    """Token-level KD: per row, the teacher's top-k ids (T, k) and log-probabilities (T, k) at
    each target token."""
    batch_size: int = 1
    counts: dict[str, Any] | None = None
    """The rows set aside or weighted, for the train manifest's ``row_counts``: summarization's
    cut teacher summaries (and how many were dropped), classification's train.teacher_confidence."""

    def __len__(self) -> int:
        return len(self.input_ids)


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (shares differ by at most one row)."""
    q, rem = divmod(len(batch), world)
    start = rank * q + min(rank, rem)
    return batch[start : start + q + (rank < rem)]


class MultiTaskSchedule:
    def __init__(
        self,
        tasks: list[TaskTensors],
        seed: int,
        rank: int,
        world: int,
        group_by_length: bool = True,
        sampler: Any = None,
    ):
        """``sampler`` (a ``distill.sampling.TaskSampler``) picks the tasks of each micro-step and
        counts each task's visits (its batch cursor); None: every task every step."""
        for task in tasks:
            if len(task) < world:
                raise DistillError(f"task {task.name}: {len(task)} rows cannot feed {world} processes")
        self.tasks = tasks
        self.seed = seed
        self.rank = rank
        self.world = world
        self.group_by_length = group_by_length
        self.sampler = sampler
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

    def indices(self, task_index: int, visit: int) -> list[int]:
        """Row indices of one task for this rank at the task's ``visit``-th batch."""
        epoch, b = divmod(visit, self.batches_per_epoch(task_index))
        return rank_slice(self.epoch_batches(task_index, epoch)[b], self.rank, self.world)

    def drawn(self, step: int) -> list[tuple[int, int]]:
        """(task index, its visit count) for every task micro-step ``step`` draws."""
        if self.sampler is None:
            return [(i, step) for i in range(len(self.tasks))]
        visits = self.sampler.visits(step)
        return [(i, visits[i]) for i in self.sampler.tasks(step)]

    def batch(self, step: int, pad_id: int) -> dict[str, dict[str, torch.Tensor]]:
        """task name → tensors for this rank at micro-step ``step`` (the drawn tasks only)."""
        out = {}
        for i, visit in self.drawn(step):
            task = self.tasks[i]
            idx = self.indices(i, visit)
            seqs = [task.input_ids[j] for j in idx]
            item = {"input_ids": pad(seqs, pad_id), "attention_mask": length_mask(seqs)}
            if task.token_type_ids is not None:
                item["token_type_ids"] = pad([task.token_type_ids[j] for j in idx], 0)
            if task.target_ids is not None:
                item["target_ids"] = pad([task.target_ids[j] for j in idx], IGNORE_INDEX)
            if task.decoder_prompt_ids is not None:
                prompts = [task.decoder_prompt_ids[j] for j in idx]
                item["decoder_prompt_ids"] = left_pad(prompts, 0)
                item["decoder_prompt_mask"] = left_pad([[1] * len(p) for p in prompts], 0)
            if task.target_top is not None:
                item["top_ids"], item["top_logprobs"] = pad_top([task.target_top[j] for j in idx])
            rows = torch.tensor(idx)
            item.update({key: values[rows] for key, values in task.row_targets.items()})
            out[task.name] = item
        return out
