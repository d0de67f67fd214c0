"""The weighting interface: named task losses in, one loss for ``engine.backward`` out.

Every method returns a loss, so DeepSpeed's gradient path (ZeRO reduction, accumulation,
clipping, loss scaling) applies to all of them alike; gradient methods (GradNorm, PCGrad) take
their per-task gradients with ``torch.autograd.grad`` and return a surrogate whose gradient is
the one they want written. Anything a method derives from loss values or gradients is averaged
over ranks first (``all_mean``) so every rank holds the same weighting state.
Formulations follow LibMTL (``LibMTL/weighting/*.py``) and FAMO's official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from distill.train.distributed import all_mean

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

    name: ClassVar[str]
    """The ``train.weighting.method`` that picks it."""

    @dataclass
    class Options:
        """The method's own options, read from ``train.weighting`` beside ``method`` (none here)."""

    honours_task_weights: ClassVar[bool] = True
    """``train.task_weights`` scale each task's loss before the method weighs it. False for a
    method that would cancel such a scale (normalised gradients, log-losses, learned variances):
    setting task weights with it is a config error."""
    needs_gradients: ClassVar[bool] = False
    """Calls autograd.grad on shared parameters (so ZeRO-3, which partitions them, cannot run it)."""
    needs_every_task: ClassVar[bool] = False
    """Keeps per-task histories, so every task must be in every micro-step (task sampling ``all``)."""

    def __init__(
        self, tasks: list[str], static_weights: dict[str, float], seed: int, options: Any = None
    ) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        unknown = sorted(set(static_weights) - set(tasks))
        if unknown:
            raise ValueError(f"static weights name tasks {unknown} that are not among {tasks}")
        self.tasks = list(tasks)
        self.static_weights = {t: float(static_weights.get(t, 1.0)) for t in tasks}
        self.seed = seed
        self.params: SharedParameters | None = None

    def scaled(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each loss times its task's static weight: how a method that honours
        ``train.task_weights`` applies them before weighing the losses its own way."""
        return {t: loss * self.static_weights[t] for t, loss in losses.items()}

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


def flat_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool) -> torch.Tensor:
    """∂loss/∂params flattened to one float32 vector (dim,); zeros for parameters the loss misses."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).float().flatten() for p, g in zip(params, grads)]
    )


def surrogate(params: list[torch.nn.Parameter], gradient: torch.Tensor) -> torch.Tensor:
    """Σ_p (g_p·p).sum(), so ∂/∂p = g_p; ``gradient`` is the flat (dim,) concatenation of the g_p."""
    total = torch.zeros((), device=gradient.device)
    for p, g in zip(params, gradient.split([p.numel() for p in params])):
        total = total + (g.view_as(p).to(p.dtype) * p).sum(dtype=torch.float32)
    return total
