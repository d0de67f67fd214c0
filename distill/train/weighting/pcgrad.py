"""Weighting method: Projecting Conflicting Gradients (Yu et al., NeurIPS 2020) on the shared parameters."""

from __future__ import annotations

import torch

from distill.train.distributed import all_mean
from distill.train.weighting.base import (
    Combined,
    Weighting,
    flat_gradient,
    step_generator,
    surrogate,
)


def pcgrad_project(grads: torch.Tensor, order: list[int]) -> torch.Tensor:
    """PCGrad's gradient surgery (Yu et al., NeurIPS 2020). grads: (tasks, dim) -> (tasks, dim).

    For each task i, for each other task j in ``order``: if g_i·g_j < 0, then
    g_i ← g_i − (g_i·g_j)/‖g_j‖²·g_j, always projecting on the original g_j.
    """
    projected = grads.clone()
    for i in range(grads.shape[0]):
        for j in order:
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:  # implies ‖g_j‖ > 0
                projected[i] -= dot / grads[j].pow(2).sum() * grads[j]
    return projected


class PCGrad(Weighting):
    """Projecting Conflicting Gradients (Yu et al., NeurIPS 2020) on the shared parameters.

    Per-task gradients over every trainable parameter; the shared ones are rank-averaged,
    projected by ``pcgrad_project`` (task order drawn from (seed, step)) and summed, so they are
    identical on every rank; the others are summed locally (the engine averages them). Returns
    Σ_t L_t (value, for the log) plus a linear surrogate Σ_p g_p·p − (same, detached) whose
    gradient is exactly g_p. The task losses' graph is kept: the sharing losses (adversarial,
    orthogonality) backpropagate through it at engine.backward. Logged weights: the static task weights.
    """

    name = "pcgrad"
    needs_every_task = True  # with one task a step there is nothing to project against

    needs_gradients = True

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        params = self._bound()
        losses = self.scaled(losses)
        shared_ids = {id(p) for p in params.shared}
        shared = [p for p in params.trainable if id(p) in shared_ids]
        others = [p for p in params.trainable if id(p) not in shared_ids]
        present = [t for t in self.tasks if t in losses]
        task_grads = {t: flat_gradient(losses[t], shared + others, retain_graph=True) for t in present}
        shared_dim = sum(p.numel() for p in shared)
        # Rows for absent tasks stay zero so every rank all-reduces the same shape; zero rows
        # project nothing and are projected onto nothing.
        shared_grads = torch.zeros(len(self.tasks), shared_dim, device=task_grads[present[0]].device)
        for t, g in task_grads.items():
            shared_grads[self.tasks.index(t)] = g[:shared_dim]
        order = torch.randperm(len(self.tasks), generator=step_generator(self.seed, step)).tolist()
        shared_sum = pcgrad_project(all_mean(shared_grads), order).sum(0)
        other_sum = torch.stack([g[shared_dim:] for g in task_grads.values()]).sum(0)
        linear = surrogate(shared + others, torch.cat([shared_sum, other_sum]))
        value = sum(losses[t].detach().float() for t in present)
        return value + (linear - linear.detach()), {t: self.static_weights[t] for t in present}
