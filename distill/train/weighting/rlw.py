"""Weighting method: Random Loss Weighting (Lin et al., TMLR 2022): w = K·softmax(z), z ~ N(0, I),
each step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.losses import weighted_total
from distill.train.weighting.base import (
    Combined,
    Weighting,
    step_generator,
)


class RLW(Weighting):
    """Random Loss Weighting (Lin et al., TMLR 2022): w = K·softmax(z), z ~ N(0, I), each step.

    z is drawn for all tasks from a generator seeded by (seed, step), then the softmax runs over
    the present tasks (K of them): a pure function of (seed, step, present tasks).
    """

    name = "rlw"

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        z = torch.randn(len(self.tasks), generator=step_generator(self.seed, step), dtype=torch.float64)
        present = [t for t in self.tasks if t in losses]
        index = [self.tasks.index(t) for t in present]
        weights = len(present) * F.softmax(z[index], dim=0)
        weights_by_task = dict(zip(present, weights.tolist()))
        total = weighted_total(self.scaled(losses), weights_by_task)
        return total, {t: w * self.static_weights[t] for t, w in weights_by_task.items()}
