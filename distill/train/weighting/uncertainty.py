"""Weighting method: Homoscedastic uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018),
LibMTL's ``UW`` form."""

from __future__ import annotations

from typing import Any

import torch

from distill.train.weighting.base import (
    Combined,
    Weighting,
)


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018), LibMTL's ``UW`` form.

    loss = Σ_t L_t / (2·exp(s_t)) + s_t / 2 with s_t = log σ_t² a learnable parameter (init 0),
    trained by the engine's optimizer with the model. Logged weight: 1 / (2·exp(s_t)).
    """

    name = "uncertainty"
    honours_task_weights = False  # a loss scale s_t only moves σ_t²: s_t·L_t / σ_t² is unchanged

    def __init__(
        self, tasks: list[str], static_weights: dict[str, float], seed: int, options: Any = None
    ) -> None:
        super().__init__(tasks, static_weights, seed, options)
        self.log_variance = torch.nn.Parameter(torch.zeros(len(tasks)))

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        index = [self.tasks.index(t) for t in losses]
        s = self.log_variance[index].float()  # (present,)
        scale = 1.0 / (2.0 * s.exp())
        loss = (torch.stack([losses[t].float() for t in losses]) * scale + s / 2).sum()
        return loss, dict(zip(losses, scale.detach().tolist()))
