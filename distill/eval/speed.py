"""Eval's speed phase: both models timed on the same device, in the same run, within a fixed
wall-clock budget (items/s batched, and single-item latency)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from distill.core.config import PipelineConfig
from distill.core.manifest import latency_percentiles
from distill.student.model import Student
from distill.tasks import tasks_for

WARMUP_BATCHES = 2
MIN_P95_SAMPLES = 20


def time_slice(
    fn: Callable[[Sequence[Any]], Any],
    items: list[Any],
    batch: int,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Speed of ``fn`` within ``budget_s`` seconds of ``clock``: up to WARMUP_BATCHES untimed
    batches (fewer once they have used a quarter of the budget), then batched calls for half of
    what is left (items/s), then single-item calls (latency). Each phase runs at least once, so a
    model slower than its slice overruns it by those calls alone. Items cycle, so the budget, not
    the number of rows, decides how much is measured."""
    start_at = clock()
    deadline = start_at + budget_s
    stream = itertools.cycle(items)
    warmups = 0
    # First calls allocate and compile: not the steady state.
    while warmups < WARMUP_BATCHES and (not warmups or clock() - start_at < budget_s / 4):
        fn([next(stream) for _ in range(batch)])
        warmups += 1
    batched_until = clock() + (deadline - clock()) / 2
    done, busy = 0, 0.0
    while not done or clock() < batched_until:
        chunk = [next(stream) for _ in range(batch)]
        start = clock()
        fn(chunk)
        busy += clock() - start
        done += len(chunk)
    latencies: list[float] = []
    while not latencies or clock() < deadline:
        start = clock()
        fn([next(stream)])
        latencies.append((clock() - start) * 1000)
    result: dict[str, Any] = {
        "batch_size": batch,
        "budget_s": round(budget_s, 3),
        "warmup_batches": warmups,
        "batched_items": done,
        "batched_s": round(busy, 3),
        "items_per_s": round(done / busy, 2),
        "latency_samples": len(latencies),
        **latency_percentiles(latencies),
    }
    if len(latencies) < MIN_P95_SAMPLES:
        result["latency_p95_ms"] = None
        result["latency_p95_note"] = (
            f"{len(latencies)} single-item calls fit the budget; p95 needs at least {MIN_P95_SAMPLES}"
        )
    return result


def measure_speed(
    cfg: PipelineConfig,
    test: dict[str, list[dict[str, Any]]],
    student: Student,
    tokenizer: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Both models on ``device``, in batches of eval.speed_batch_size, each (model, task) pair for
    an equal share of eval.speed_budget_s. A teacher whose backend is not ``timed_locally`` (an
    API: timing it would be paid for) is not timed here: its request latency and usage come
    from the teach manifest instead."""
    from distill.teach.teachers import backend_class

    ec = cfg.eval
    backend = backend_class(cfg.teach.teacher.backend)
    teacher = (
        backend.for_timing(cfg.teach.teacher, ec.speed_batch_size, device.type)
        if backend.timed_locally
        else None
    )
    pairs = len(cfg.tasks) * (2 if teacher else 1)  # (model, task) pairs sharing the budget
    speed: dict[str, Any] = {"student": {}, "teacher": {}}
    for task in tasks_for(cfg):
        for who, (fn, items) in task.timed_calls(cfg, test[task.name], student, tokenizer, teacher).items():
            timed = time_slice(fn, items, ec.speed_batch_size, ec.speed_budget_s / pairs)
            speed[who][task.name] = {"device": str(device), **timed}
    speed["teacher_parameters"] = teacher.num_parameters() if teacher else None
    return speed
