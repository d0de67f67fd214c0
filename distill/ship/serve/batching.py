"""How `distill serve` groups work for the model, and what it counts while doing so.

Dynamic batching (``Batcher``): the items of concurrent requests for one key (a task, and for
summaries a ``max_tokens``) queue together; a worker takes up to ``max_batch`` of them, waiting at
most ``max_wait`` after the first, and runs them in the single model thread, so the event loop
keeps answering while the model works and two forwards never run at once.

Length-aware execution (``run_by_length``): a collected batch is padded to its longest row, so
on a CPU that is already busy at batch 1, one long review makes fifteen short ones pay for its
length. The batch's rows are sorted by token length and run in sub-batches whose padded size
(rows × longest row) stays within ``max_batch_tokens``; results go back in request order.

``Metrics``: counts per endpoint and per task, recent latencies, and the model calls with their
real and padded tokens (how much of the work was padding).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distill.core.manifest import latency_percentiles

LATENCY_WINDOW = 10_000
"""Latencies kept per endpoint for the percentiles: the most recent ones."""


# --- length-aware execution of one batch ----------------------------------------------------
def padded_tokens(lengths: list[int]) -> int:
    """What a forward over rows of these token lengths computes on: rows × the longest row."""
    return len(lengths) * max(lengths, default=0)


def token_budget_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Row indices grouped into sub-batches, shortest rows first, each with
    ``padded_tokens <= max_batch_tokens``; a row longer than the budget runs alone.

    Greedy over the rows sorted by length (stable, so equal lengths keep request order): the row
    being added is the group's longest, so the group's padded size is (size + 1) × its length.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def run_by_length(
    items: list[Any],
    lengths: list[int],
    max_batch_tokens: int,
    run: Callable[[list[Any], list[int]], list[Any]],
) -> list[Any]:
    """``run(part, part_lengths)`` on each sub-batch of ``token_budget_batches``; its results
    (one per item of ``part``) put back in the order of ``items``."""
    results: list[Any] = [None] * len(items)
    for group in token_budget_batches(lengths, max_batch_tokens):
        answers = run([items[i] for i in group], [lengths[i] for i in group])
        for i, answer in zip(group, answers, strict=True):
            results[i] = answer
    return results


# --- dynamic batching -----------------------------------------------------------------------
class Batcher:
    """Per key a queue of (item, future) and a worker that calls ``run(key, items)`` on up to
    ``max_batch`` items at a time in the one model thread, then resolves each item's future."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], list[Any]],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[Hashable, int, float], None],
    ):
        self._run, self._on_batch = run, on_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queues: dict[Hashable, asyncio.Queue] = {}
        self._workers: list[asyncio.Task] = []
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-model")

    async def submit(self, key: Hashable, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if key not in self._queues:
            self._queues[key] = asyncio.Queue()
            self._workers.append(loop.create_task(self._work(key, self._queues[key])))
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queues[key].put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[Any, asyncio.Future]]:
        """The first waiting item, then more until max_batch or max_wait after the first."""
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
                break
        return batch

    async def _work(self, key: Hashable, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, f) for item, f in await self._collect(queue) if not f.done()]
            if not batch:  # every request in it was cancelled
                continue
            items = [item for item, _ in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._model_thread, self._run, key, items)
            except Exception as e:  # each request of the batch gets the error; the worker goes on
                results = [e] * len(batch)
            else:
                self._on_batch(key, len(batch), time.perf_counter() - start)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)


# --- metrics --------------------------------------------------------------------------------
def _task_stats() -> dict[str, float]:
    return {"batches": 0, "items": 0, "seconds": 0.0, "model_calls": 0, "tokens": 0, "padded_tokens": 0}


class Metrics:
    """Counts per endpoint and per task, and each endpoint's recent latencies.

    The event loop records requests and batches, the model thread its model calls: a lock keeps
    ``snapshot`` from reading a dict while the other thread adds to it."""

    def __init__(self) -> None:
        self.started = time.time()
        self._lock = threading.Lock()
        self.requests: dict[str, dict[str, int]] = defaultdict(
            lambda: {"requests": 0, "4xx": 0, "5xx": 0, "items": 0}
        )
        self.latencies: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))
        self.batches: dict[str, dict[str, float]] = defaultdict(_task_stats)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            counts = self.requests[endpoint]
            counts["requests"] += 1
            counts["4xx"] += 400 <= status < 500
            counts["5xx"] += status >= 500
            self.latencies[endpoint].append(seconds)

    def items(self, endpoint: str, n: int) -> None:
        with self._lock:
            self.requests[endpoint]["items"] += n

    def batch(self, task: str, size: int, seconds: float) -> None:
        with self._lock:
            stats = self.batches[task]
            stats["batches"] += 1
            stats["items"] += size
            stats["seconds"] += seconds

    def model_call(self, task: str, lengths: list[int]) -> None:
        """One forward (or one generate) over rows of these token lengths."""
        with self._lock:
            stats = self.batches[task]
            stats["model_calls"] += 1
            stats["tokens"] += sum(lengths)
            stats["padded_tokens"] += padded_tokens(lengths)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        endpoints = {}
        for name, counts in self.requests.items():
            ms = [1000 * s for s in self.latencies[name]]
            errors = counts["4xx"] + counts["5xx"]
            endpoints[name] = {
                **counts,
                "errors": errors,
                **latency_percentiles(ms),
                "latency_window": len(ms),
            }
        tasks = {
            task: {
                **s,
                "seconds": round(s["seconds"], 4),
                "mean_batch_size": round(s["items"] / s["batches"], 3) if s["batches"] else None,
            }
            for task, s in self.batches.items()
        }
        keys = ("batches", "items", "model_calls")
        total = {k: sum(s[k] for s in self.batches.values()) for k in keys}
        mean = round(total["items"] / total["batches"], 3) if total["batches"] else None
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "endpoints": endpoints,
            "tasks": tasks,
            "batches": {**total, "mean_batch_size": mean},
        }
