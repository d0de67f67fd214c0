"""``soft``: each task keeps its own copy of the encoder, tied to the mean of the copies by an
L2 penalty (soft parameter sharing; Duong et al. 2015, Yang & Hospedales 2017). The first task
reads the pipeline's encoder itself, every other task a copy that starts equal to it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from distill.core.errors import ConfigError
from distill.student.sharing.base import Features, Sharing


def tie_penalty(copies: list[list[torch.Tensor]], index: int) -> torch.Tensor:
    """‖θ_index − sg(θ̄)‖² for parameter lists ``copies`` (one list per task, aligned): summed
    over the tasks it is Σ_t ‖θ_t − θ̄‖², and its gradient on θ_t is that sum's
    (Σ_t (θ_t − θ̄) = 0, so θ̄'s own dependence on θ_t adds nothing)."""
    total = copies[index][0].new_zeros((), dtype=torch.float32)
    for own, *others in zip(copies[index], *(c for i, c in enumerate(copies) if i != index)):
        mean = (own.detach().float() + sum(o.detach().float() for o in others)) / len(copies)
        total = total + (own.float() - mean).pow(2).sum()
    return total


class Soft(Sharing):
    name: ClassVar[str] = "soft"
    reads_shared_encoder: ClassVar[bool] = False
    losses: ClassVar[tuple[str, ...]] = ("tie",)
    zero3: ClassVar[bool] = False  # the penalty reads every copy's whole parameters
    shared_gradients: ClassVar[bool] = False

    @dataclass
    class Options:
        tie_weight: float = 1.0e-3
        """Weight of Σ_t ‖θ_t − θ̄‖² over the encoder copies' parameters (each task's batch adds
        its own copy's term); 0: independent encoders, one per task."""

        def __post_init__(self) -> None:
            if self.tie_weight < 0:
                raise ConfigError("train.student.sharing.tie_weight: must be >= 0")

    def __init__(self, options: Any, encoder: nn.Module, tasks: list[str], dropout: float):
        super().__init__(options, encoder, tasks, dropout)
        self.copies = nn.ModuleDict({t: copy.deepcopy(encoder) for t in tasks[1:]})
        self._encoder = [encoder]  # a plain list: not registered twice, read by the penalty

    def task_encoder(self, encoder: nn.Module, task: str) -> nn.Module:
        return self.copies[task] if task in self.copies else encoder  # noqa: SIM401 (a ModuleDict has no get)

    def aux_losses(
        self, task: str, features: Features, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if len(self.task_names) < 2 or self.options.tie_weight == 0:
            return {}
        encoders = [self.task_encoder(self._encoder[0], t) for t in self.task_names]
        copies = [[p for p in e.parameters() if p.requires_grad] for e in encoders]
        return {"tie": self.options.tie_weight * tie_penalty(copies, self.task_names.index(task))}

    def shared_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        return []
