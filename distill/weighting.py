"""Multi-task loss weighting: named task losses in, one loss for ``engine.backward`` out.

Every method returns a loss, so DeepSpeed's gradient path (ZeRO reduction, accumulation,
clipping, loss scaling) applies to all of them alike; gradient methods (GradNorm, PCGrad) take
their per-task gradients with ``torch.autograd.grad`` and return a surrogate whose gradient is
the one they want written. Anything a method derives from loss values or gradients is averaged
over ranks first (``all_mean``) so every rank holds the same weighting state.
Formulations follow LibMTL (``LibMTL/weighting/*.py``) and FAMO's official code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from distill.distributed import all_mean
from distill.losses import weighted_total

Combined = tuple[torch.Tensor, dict[str, float]]
"""(loss for engine.backward, the weight each present task got, for the log)."""


@dataclass
class SharedParameters:
    shared: list[torch.nn.Parameter]
    """Parameters every task reaches (the shared encoder)."""
    last_shared: list[torch.nn.Parameter]
    """The last shared layer (GradNorm's W)."""
    trainable: list[torch.nn.Parameter]
    """Every trainable parameter of the model, shared ones included."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step): the same on every rank and on resume."""
    mixed = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def global_losses(losses: dict[str, torch.Tensor], tasks: list[str]) -> list[float]:
    """The rank-mean of each task's loss value, in ``tasks`` order."""
    local = torch.stack([losses[t].detach().float() for t in tasks])
    return all_mean(local).tolist()


class Weighting(torch.nn.Module):
    """Base: holds the task list and options; subclasses implement ``combine``.

    ``step`` is the loop's counter; it must be the same on every rank and never repeat
    (RLW and PCGrad draw their randomness from (seed, step)).
    """

    needs_gradients: ClassVar[bool] = False
    """Calls autograd.grad on shared parameters (so ZeRO-3, which partitions them, cannot run it)."""
    needs_every_task: ClassVar[bool] = False
    """Keeps per-task histories, so every task must be in every micro-step (task sampling ``all``)."""

    def __init__(self, tasks: list[str], static_weights: dict[str, float], seed: int) -> None:
        super().__init__()
        unknown = sorted(set(static_weights) - set(tasks))
        if unknown:
            raise ValueError(f"static weights name tasks {unknown} that are not among {tasks}")
        self.tasks = list(tasks)
        self.static_weights = {t: float(static_weights.get(t, 1.0)) for t in tasks}
        self.seed = seed
        self.params: SharedParameters | None = None

    def bind(self, params: SharedParameters) -> None:
        self.params = params

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        """Named task losses of one micro-step -> (loss for engine.backward, each present task's weight)."""
        raise NotImplementedError

    def forward(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        # Calling the module (rather than combine) lets ZeRO-3's forward hooks gather its parameters.
        return self.combine(losses, step)

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state for the checkpoint's client_state (parameters go with the model)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _require_every_task(self, losses: dict[str, torch.Tensor]) -> None:
        if set(losses) != set(self.tasks):
            raise ValueError(
                f"{type(self).__name__} needs every task each step; got {sorted(losses)}, tasks {self.tasks}"
            )

    def _bound(self) -> SharedParameters:
        if self.params is None:
            raise RuntimeError(f"{type(self).__name__}.bind(SharedParameters) was not called")
        return self.params


class Static(Weighting):
    """Σ_t w_t L_t with the configured static weights (1 for a task without one)."""

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        weights = {t: self.static_weights[t] for t in losses}
        return weighted_total(losses, weights), weights


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018), LibMTL's ``UW`` form.

    loss = Σ_t L_t / (2·exp(s_t)) + s_t / 2 with s_t = log σ_t² a learnable parameter (init 0),
    trained by the engine's optimizer with the model. Logged weight: 1 / (2·exp(s_t)).
    """

    def __init__(self, tasks: list[str], static_weights: dict[str, float], seed: int) -> None:
        super().__init__(tasks, static_weights, seed)
        self.log_variance = torch.nn.Parameter(torch.zeros(len(tasks)))

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        index = [self.tasks.index(t) for t in losses]
        s = self.log_variance[index].float()  # (present,)
        scale = 1.0 / (2.0 * s.exp())
        loss = (torch.stack([losses[t].float() for t in losses]) * scale + s / 2).sum()
        return loss, dict(zip(losses, scale.detach().tolist()))


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019), by windows of micro-steps.

    w_t = K·exp(r_t/T) / Σ_j exp(r_j/T), r_t = mean L_t over the last complete window / mean over
    the window before (windows of ``window`` micro-steps stand in for the paper's epochs); all
    weights are 1 until two windows are complete. Loss means use rank-averaged losses.
    """

    needs_every_task = True

    def __init__(
        self,
        tasks: list[str],
        static_weights: dict[str, float],
        seed: int,
        *,
        window: int = 20,
        temperature: float = 2.0,
    ) -> None:
        super().__init__(tasks, static_weights, seed)
        if window < 1:
            raise ValueError(f"dwa window must be >= 1, got {window}")
        self.window, self.temperature = window, temperature
        self.window_sums = [0.0] * len(tasks)
        self.window_count = 0
        self.window_means: list[list[float]] = []  # the last two complete windows, oldest first

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        self._require_every_task(losses)
        weights = self.current_weights()
        self._record(global_losses(losses, self.tasks))
        return weighted_total(losses, weights), weights

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


class RLW(Weighting):
    """Random Loss Weighting (Lin et al., TMLR 2022): w = K·softmax(z), z ~ N(0, I), each step.

    z is drawn for all tasks from a generator seeded by (seed, step), then the softmax runs over
    the present tasks (K of them): a pure function of (seed, step, present tasks).
    """

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        z = torch.randn(len(self.tasks), generator=step_generator(self.seed, step), dtype=torch.float64)
        present = [t for t in self.tasks if t in losses]
        index = [self.tasks.index(t) for t in present]
        weights = len(present) * F.softmax(z[index], dim=0)
        weights_by_task = dict(zip(present, weights.tolist()))
        return weighted_total(losses, weights_by_task), weights_by_task


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

    def __init__(
        self,
        tasks: list[str],
        static_weights: dict[str, float],
        seed: int,
        *,
        lr: float = 0.025,
        gamma: float = 0.01,
    ) -> None:
        super().__init__(tasks, static_weights, seed)
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


def flat_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool) -> torch.Tensor:
    """∂loss/∂params flattened to one float32 vector (dim,); zeros for parameters the loss misses."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).float().flatten() for p, g in zip(params, grads)]
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

    def __init__(
        self,
        tasks: list[str],
        static_weights: dict[str, float],
        seed: int,
        *,
        alpha: float = 1.5,
        lr: float = 0.025,
    ) -> None:
        super().__init__(tasks, static_weights, seed)
        self.alpha, self.lr = alpha, lr
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
    orthogonality) backpropagate through it at engine.backward. Logged weights: 1 each.
    """

    needs_gradients = True

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> Combined:
        params = self._bound()
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
        return value + (linear - linear.detach()), dict.fromkeys(present, 1.0)


def surrogate(params: list[torch.nn.Parameter], gradient: torch.Tensor) -> torch.Tensor:
    """Σ_p (g_p·p).sum(), so ∂/∂p = g_p; ``gradient`` is the flat (dim,) concatenation of the g_p."""
    total = torch.zeros((), device=gradient.device)
    for p, g in zip(params, gradient.split([p.numel() for p in params])):
        total = total + (g.view_as(p).to(p.dtype) * p).sum(dtype=torch.float32)
    return total


METHODS = ("static", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad")
_CLASSES: dict[str, type[Weighting]] = {
    "static": Static,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "rlw": RLW,
    "famo": FAMO,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
}


def build_weighting(
    method: str, tasks: list[str], static_weights: dict[str, float], seed: int, **options: Any
) -> Weighting:
    """The weighting ``method`` over ``tasks``; ``options`` are the method's own (e.g. dwa's window)."""
    if method not in _CLASSES:
        raise ValueError(f"unknown weighting method {method!r}; choose from {', '.join(METHODS)}")
    cls = _CLASSES[method]
    allowed = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"weighting {method!r} takes options {allowed or 'none'}; got unknown {unknown}")
    return cls(tasks, static_weights, seed, **options)
