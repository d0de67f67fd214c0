"""Weighting method: GradNorm (Chen et al., ICML 2018), with weights stepped by hand rather than by
the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.core.losses import weighted_total
from distill.train.distributed import all_mean
from distill.train.weighting.base import (
    Combined,
    Weighting,
    flat_gradient,
    global_losses,
)


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018), with weights stepped by hand rather than by the engine.

    g_t = ∂L_t/∂W (unweighted loss, W the last shared layer, rank-averaged), G_t = w_t·‖g_t‖,
    r_t = L̃_t / mean(L̃) with L̃_t = L_t / L_t(first step) (rank-averaged losses), and
    target_t = mean(G)·r_t^α held constant. One gradient-descent step (lr ``lr``) on
    Σ_t |G_t − target_t|, whose gradient in w_t is sign(G_t − target_t)·‖g_t‖; then w ≥ 1e-3 and
    Σ w = K. Returns Σ_t w_t L_t with the weights from before this step.
    """

    needs_gradients = True
    needs_every_task = True

    name = "gradnorm"
    honours_task_weights = False  # it equalises weighted gradient norms, cancelling a loss scale

    @dataclass
    class Options:
        alpha: float = 1.5
        """Restoring force towards equal training rates."""
        lr: float = 0.025
        """Step size of the weights' gradient descent."""

    def __init__(
        self, tasks: list[str], static_weights: dict[str, float], seed: int, options: Any = None
    ) -> None:
        super().__init__(tasks, static_weights, seed, options)
        self.alpha, self.lr = self.options.alpha, self.options.lr
        self.loss_weights = [1.0] * len(tasks)
        self.initial_losses: list[float] | None = None

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        self._require_every_task(losses)
        last_shared = self._bound().last_shared
        grads = torch.stack([flat_gradient(losses[t], last_shared, retain_graph=True) for t in self.tasks])
        norms = all_mean(grads).norm(dim=1).double().cpu()  # (tasks,)
        current = global_losses(losses, self.tasks)
        if self.initial_losses is None:
            self.initial_losses = current
        weights = dict(zip(self.tasks, self.loss_weights))
        self.update_weights(norms, torch.tensor(current, dtype=torch.float64))
        return weighted_total(losses, weights), weights

    def update_weights(self, norms: torch.Tensor, current: torch.Tensor) -> None:
        w = torch.tensor(self.loss_weights, dtype=torch.float64)
        scaled_norms = w * norms  # G_t
        relative = current / torch.tensor(self.initial_losses, dtype=torch.float64)
        target = scaled_norms.mean() * (relative / relative.mean()) ** self.alpha
        w = (w - self.lr * torch.sign(scaled_norms - target) * norms).clamp(min=1e-3)
        self.loss_weights = (w * len(self.tasks) / w.sum()).tolist()

    def extra_state(self) -> dict[str, Any]:
        return {"loss_weights": self.loss_weights, "initial_losses": self.initial_losses}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.loss_weights = list(state["loss_weights"])
        self.initial_losses = state["initial_losses"]
