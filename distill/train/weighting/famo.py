"""Weighting method: Fast Adaptive Multitask Optimization (Liu, Liu, Stone, Liu, NeurIPS 2023),
official code's form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distill.core.losses import weighted_total
from distill.train.weighting.base import (
    Combined,
    Weighting,
    global_losses,
)


class FAMO(Weighting):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Stone, Liu, NeurIPS 2023), official code's form.

    Logits w (init 0), z = softmax(w), D_t = L_t − min_t + 1e-8 with min_t = 0, and the model loss
    Σ_t z_t·log D_t / c with c = Σ_t z_t / D_t (detached). The logits have their own Adam (lr
    ``lr``, weight decay ``gamma``) stepped on ∂z/∂w^T δ with δ_t = log D_t(prev) − log D_t(now).
    The official code takes "now" by re-running the batch after the optimizer step; this uses the
    next micro-step's losses instead (no extra forward), so with gradient accumulation δ within an
    accumulation window measures batch-to-batch change rather than progress.

    D is the rank-averaged loss, and the returned loss is Σ_t z_t / (c·D_t) · L_t: its gradient is
    that of Σ z_t log D_t / c at the global batch's losses (∂ log D_t = ∂L_t / D_t). Logged weight:
    the effective z_t / (c·D_t).
    """

    needs_every_task = True

    name = "famo"
    honours_task_weights = False  # its objective Σ z_t log L_t ignores a constant scale of L_t

    @dataclass
    class Options:
        lr: float = 0.025
        """Learning rate of the logits' own Adam."""
        gamma: float = 0.01
        """Weight decay of the logits."""

    def __init__(
        self, tasks: list[str], static_weights: dict[str, float], seed: int, options: Any = None
    ) -> None:
        super().__init__(tasks, static_weights, seed, options)
        lr, gamma = self.options.lr, self.options.gamma
        # A plain tensor, not a Parameter: the engine's optimizer must not train it.
        self.logits = torch.zeros(len(tasks), requires_grad=True)
        self.logit_optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=gamma)
        self.previous_losses: list[float] | None = None
        self.min_losses = [0.0] * len(tasks)

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        self._require_every_task(losses)
        current = global_losses(losses, self.tasks)
        if self.previous_losses is not None:
            self.update_logits(self.previous_losses, current)
        self.previous_losses = current
        z = F.softmax(self.logits.detach().double(), dim=0)
        gap = torch.tensor(current, dtype=torch.float64) - torch.tensor(self.min_losses) + 1e-8
        c = (z / gap).sum()
        weights = dict(zip(self.tasks, (z / (c * gap)).tolist()))
        return weighted_total(losses, weights), weights

    def update_logits(self, previous: list[float], current: list[float]) -> None:
        minimum = torch.tensor(self.min_losses)
        delta = (torch.tensor(previous) - minimum + 1e-8).log() - (
            torch.tensor(current) - minimum + 1e-8
        ).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.logits, -1), self.logits, grad_outputs=delta)[0]
        self.logit_optimizer.zero_grad()
        self.logits.grad = d
        self.logit_optimizer.step()

    def extra_state(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().tolist(),
            "optimizer": self.logit_optimizer.state_dict(),
            "previous_losses": self.previous_losses,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(torch.tensor(state["logits"]))
        self.logit_optimizer.load_state_dict(state["optimizer"])
        self.previous_losses = state["previous_losses"]
