"""Weighting method: Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019), by windows of micro-steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distill.core.errors import ConfigError
from distill.core.losses import weighted_total
from distill.train.weighting.base import (
    Combined,
    Weighting,
    global_losses,
)


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019), by windows of micro-steps.

    w_t = K·exp(r_t/T) / Σ_j exp(r_j/T), r_t = mean L_t over the last complete window / mean over
    the window before (windows of ``window`` micro-steps stand in for the paper's epochs); all
    weights are 1 until two windows are complete. Loss means use rank-averaged losses.
    """

    name = "dwa"
    needs_every_task = True

    @dataclass
    class Options:
        window: int = 20
        """Micro-steps per averaging window (the paper's epoch)."""
        temperature: float = 2.0
        """T of the softmax over loss descent rates."""

        def __post_init__(self) -> None:
            if self.window < 1 or self.temperature <= 0:
                raise ConfigError("train.weighting.window and temperature: must be positive")

    def __init__(
        self, tasks: list[str], static_weights: dict[str, float], seed: int, options: Any = None
    ) -> None:
        super().__init__(tasks, static_weights, seed, options)
        self.window, self.temperature = self.options.window, self.options.temperature
        self.window_sums = [0.0] * len(tasks)
        self.window_count = 0
        self.window_means: list[list[float]] = []  # the last two complete windows, oldest first

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        self._require_every_task(losses)
        weights = self.current_weights()
        self._record(global_losses(losses, self.tasks))
        total = weighted_total(self.scaled(losses), weights)
        return total, {t: w * self.static_weights[t] for t, w in weights.items()}

    def current_weights(self) -> dict[str, float]:
        if len(self.window_means) < 2:
            return dict.fromkeys(self.tasks, 1.0)
        before, last = (torch.tensor(m, dtype=torch.float64) for m in self.window_means)
        weights = len(self.tasks) * F.softmax(last / before / self.temperature, dim=0)
        return dict(zip(self.tasks, weights.tolist()))

    def _record(self, values: list[float]) -> None:
        self.window_sums = [s + v for s, v in zip(self.window_sums, values)]
        self.window_count += 1
        if self.window_count == self.window:
            self.window_means = [*self.window_means, [s / self.window for s in self.window_sums]][-2:]
            self.window_sums, self.window_count = [0.0] * len(self.tasks), 0

    def extra_state(self) -> dict[str, Any]:
        return {"sums": self.window_sums, "count": self.window_count, "means": self.window_means}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.window_sums, self.window_count = list(state["sums"]), int(state["count"])
        self.window_means = [list(m) for m in state["means"]]
