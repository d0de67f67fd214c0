"""Weighting method: Σ_t w_t L_t with the configured static weights (1 for a task without one)."""

from __future__ import annotations

import torch

from distill.core.losses import weighted_total
from distill.train.weighting.base import (
    Combined,
    Weighting,
)


class Static(Weighting):
    """Σ_t w_t L_t with the configured static weights (1 for a task without one)."""

    name = "static"

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        weights = {t: self.static_weights[t] for t in losses}
        return weighted_total(losses, weights), weights
