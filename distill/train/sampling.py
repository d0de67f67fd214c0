"""Which tasks a multi-task micro-step draws a batch from.

``all`` gives every task a batch every micro-step. The sampled methods draw ONE task per
micro-step from a distribution over task sizes n_i (training rows or batches per epoch):

- ``proportional``: p_i ∝ n_i
- ``temperature``: p_i ∝ n_i^(1/T) (T5's temperature-scaled mixing, Raffel et al. 2020)
- ``annealed``: p_i ∝ n_i^α with α = 1 − 0.8·progress, progress = step / (total_steps − 1),
  so α goes from 1 (proportional) to 0.2 (PALs, Stickland & Murray 2019, which anneals α per
  epoch as 1 − 0.8 (e − 1)/(E − 1); here per micro-step)
- ``uniform``: p_i = 1/K

A draw is a pure function of (seed, step): the step-th output of SplitMix64 seeded with
``seed`` is turned into a uniform number and looked up in the cumulative distribution. So
every rank draws the same task, and a resumed run draws exactly what an uninterrupted one
would. SplitMix64 rather than a torch/numpy generator per step: it is jumpable to any step
in O(1), about 20× cheaper than building a generator each step, and its stream is fixed by
the algorithm, not by a library version that may change between a run and its resume.
"""

from __future__ import annotations

import bisect

METHODS = ("all", "proportional", "temperature", "annealed", "uniform")

ANNEAL_FLOOR = 0.2
"""α at the end of training for ``annealed`` (PALs' 1 − 0.8)."""

SNAPSHOT_EVERY = 1024
"""TaskSampler keeps visit counts every this many steps, so a step asked out of order
walks at most this many draws from the nearest earlier snapshot."""

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def _check(method: str, sizes: list[int], temperature: float) -> None:
    if method not in METHODS:
        raise ValueError(f"task sampling method {method!r} is not one of {', '.join(METHODS)}")
    if not sizes:
        raise ValueError("task sampling needs at least one task")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"task sizes must be positive (a task with no rows has no batch): {sizes}")
    if not temperature > 0:
        raise ValueError(f"task sampling temperature must be > 0, got {temperature}")


def task_probabilities(
    method: str, sizes: list[int], progress: float, temperature: float = 2.0
) -> list[float]:
    """p_i for each task at ``progress`` ∈ [0, 1] through training (only ``annealed`` uses it).

    ``all`` is no distribution (every task every step) and raises ValueError."""
    _check(method, sizes, temperature)
    if method == "all":
        raise ValueError("task sampling method 'all' draws every task; it has no probabilities")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"training progress must be in [0, 1], got {progress}")
    exponent = {
        "proportional": 1.0,
        "temperature": 1.0 / temperature,
        "annealed": 1.0 - (1.0 - ANNEAL_FLOOR) * progress,
        "uniform": 0.0,
    }[method]
    weights = [n**exponent for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def _progress(step: int, total_steps: int) -> float:
    """step / (total_steps − 1), held at 1 past the last step and 0 for a one-step run."""
    if step < 0:
        raise ValueError(f"micro-step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return 0.0 if total_steps == 1 else min(step / (total_steps - 1), 1.0)


def _uniform(seed: int, step: int) -> float:
    """The step-th output of SplitMix64 seeded with ``seed``, as a float in [0, 1)."""
    z = (seed + (step + 1) * _GOLDEN_GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)  # top 53 bits: every double in [0, 1) on a 2^-53 grid


def _cumulative(probabilities: list[float]) -> list[float]:
    out, acc = [], 0.0
    for p in probabilities:
        acc += p
        out.append(acc)
    return out


def _pick(cumulative: list[float], u: float) -> int:
    # min(): float rounding can leave the last cumulative a hair under 1 > u
    return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)


def draw(
    method: str, sizes: list[int], seed: int, step: int, total_steps: int, temperature: float = 2.0
) -> list[int]:
    """Task indices for micro-step ``step``: ``all`` → every task; otherwise one drawn task."""
    progress = _progress(step, total_steps)
    _check(method, sizes, temperature)
    if method == "all":
        return list(range(len(sizes)))
    cumulative = _cumulative(task_probabilities(method, sizes, progress, temperature))
    return [_pick(cumulative, _uniform(seed, step))]


def steps_for_epochs(method: str, batches_per_epoch: list[int], epochs: int) -> int:
    """Micro-steps for ``epochs`` epochs over the training data.

    ``all``: epochs × max(B_i), the task needing the most steps sees each row once per epoch.
    Sampled methods: epochs × ΣB_i, as many draws as there are batches across tasks (each
    task sees about p_i·ΣB_i of them per epoch, not necessarily its own B_i)."""
    _check(method, batches_per_epoch, 1.0)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    per_epoch = max(batches_per_epoch) if method == "all" else sum(batches_per_epoch)
    return epochs * per_epoch


class TaskSampler:
    """``draw`` for one run, with each task's visit count (its batch cursor) at any step."""

    def __init__(self, method: str, sizes: list[int], seed: int, total_steps: int, temperature: float = 2.0):
        _check(method, sizes, temperature)
        _progress(0, total_steps)
        self.method = method
        self.sizes = list(sizes)
        self.seed = seed
        self.total_steps = total_steps
        self.temperature = temperature
        # Fixed distributions: one cumulative table for every step; annealed builds it per step.
        self._fixed = None
        if method not in ("all", "annealed"):
            self._fixed = _cumulative(task_probabilities(method, self.sizes, 0.0, temperature))
        self._cursor = (0, [0] * len(sizes))  # (step, visits before it)
        self._snapshots = [[0] * len(sizes)]  # visits before step k·SNAPSHOT_EVERY

    def probabilities(self, step: int) -> list[float]:
        """p_i at micro-step ``step`` (ValueError for ``all``)."""
        return task_probabilities(
            self.method, self.sizes, _progress(step, self.total_steps), self.temperature
        )

    def tasks(self, step: int) -> list[int]:
        """Same as ``draw(method, sizes, seed, step, total_steps, temperature)``."""
        if self._fixed is None:
            return draw(self.method, self.sizes, self.seed, step, self.total_steps, self.temperature)
        _progress(step, self.total_steps)
        return [_pick(self._fixed, _uniform(self.seed, step))]

    def visits(self, step: int) -> list[int]:
        """Per task, how many of micro-steps 0..step−1 drew it: the index of the task's next
        batch. O(1) amortised for increasing steps; an earlier step walks from the nearest
        snapshot, and a first call at step s (a resume) walks s draws once."""
        _progress(step, self.total_steps)
        if self.method == "all":
            return [step] * len(self.sizes)
        at, counts = self._cursor
        if step < at:
            at = min(step // SNAPSHOT_EVERY, len(self._snapshots) - 1) * SNAPSHOT_EVERY
            counts = self._snapshots[at // SNAPSHOT_EVERY]
        counts = list(counts)
        for s in range(at, step):
            counts[self.tasks(s)[0]] += 1
            if (s + 1) % SNAPSHOT_EVERY == 0 and (s + 1) // SNAPSHOT_EVERY == len(self._snapshots):
                self._snapshots.append(list(counts))
        self._cursor = (step, counts)
        return list(counts)

    def expected_visits(self) -> list[float]:
        """Expected draws of each task over the whole run (Σ_s p_i(s)), e.g. for a manifest:
        divided by a task's batches per epoch, the epochs it will see."""
        if self.method == "all":
            return [float(self.total_steps)] * len(self.sizes)
        if self.method != "annealed":
            return [p * self.total_steps for p in self.probabilities(0)]
        totals = [0.0] * len(self.sizes)
        for s in range(self.total_steps):
            for i, p in enumerate(self.probabilities(s)):
                totals[i] += p
        return totals
