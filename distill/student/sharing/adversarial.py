"""``adversarial``: shared_private plus a task discriminator on the pooled shared features
behind a gradient-reversal layer (the shared encoder learns features the discriminator cannot
tell apart: L_adv, weight λ_adv) and the orthogonality penalty ‖SᵀH‖²_F between a batch's
shared and private features (L_diff, weight γ), which pushes task-specific information out of
the shared space (Liu, Qiu & Huang 2017). ``adversary: confusion`` swaps the reversal for a
bounded objective: the discriminator learns the task from detached features, the encoder
pushes its prediction towards uniform (Tzeng et al. 2015)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.errors import ConfigError
from distill.student.sharing.base import Features, mean_pool
from distill.student.sharing.private import SharedPrivate

if TYPE_CHECKING:
    from distill.core.config import PipelineConfig


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by −scale (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x, scale)


def reversal_ramp(progress: float, ramp: float) -> float:
    """The reversal's strength after ``progress`` ∈ [0, 1] of training: Ganin & Lempitsky's
    2 / (1 + exp(−10 p)) − 1 with p = progress / ramp (0 at the start, 1 once p ≥ 1);
    ``ramp`` 0: full strength from the first step."""
    if ramp <= 0:
        return 1.0
    p = min(1.0, progress / ramp)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def orthogonality_penalty(shared: torch.Tensor, private: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """‖SᵀH‖²_F for a batch's shared S and private H features, both (batch, hidden).

    Rows are L2-normalised first (as the domain separation networks of Bousmalis et al. 2016
    do), so it measures directions, not the features' scale. Summed, as in the paper, it lies
    in [0, batch²] (a task with larger batches feels more of it); ``mean`` divides by batch², so
    it lies in [0, 1] whatever the batch."""
    s = F.normalize(shared.float(), dim=-1)
    h = F.normalize(private.float(), dim=-1)
    penalty = (s.transpose(0, 1) @ h).pow(2).sum()
    return penalty / shared.shape[0] ** 2 if mean else penalty


def adversarial_task_loss(logits: torch.Tensor, task_index: int) -> torch.Tensor:
    """Cross-entropy of the task discriminator, logits (batch, tasks), every row from ``task_index``."""
    target = torch.full((logits.shape[0],), task_index, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the discriminator's prediction, logits (batch, tasks), against the uniform
    distribution: ln(tasks) at chance, its minimum; it grows as the features give the task away."""
    return -F.log_softmax(logits.float(), dim=-1).mean(dim=-1).mean()


class Adversarial(SharedPrivate):
    name: ClassVar[str] = "adversarial"
    losses: ClassVar[tuple[str, ...]] = ("adversarial", "orthogonality")

    @dataclass
    class Options(SharedPrivate.Options):
        adversarial_weight: float = 0.05
        """λ_adv: weight of the task discriminator's loss."""
        orthogonality_weight: float = 0.01
        """γ: weight of the orthogonality penalty."""
        orthogonality: Literal["sum", "mean"] = "mean"
        """sum: ‖SᵀH‖²_F as in the paper, in [0, batch²]; mean: divided by batch², in [0, 1]."""
        reversal_ramp: float = 0.5
        """Share of training over which the reversal's strength (with confusion: the confusion
        term's) ramps 0 → 1 (Ganin & Lempitsky); 0: full strength from the first step."""
        adversary: Literal["reversal", "confusion"] = "reversal"
        """reversal: the encoder maximises the discriminator's cross-entropy through gradient
        reversal (the paper; unbounded, so it grows past chance); confusion: the discriminator
        learns the task from detached features, and the encoder, through the discriminator's
        detached weights, pushes its prediction towards uniform (bounded: at chance it is
        ln(tasks)). The logged loss is then λ_adv · (discriminator CE + strength · confusion CE).
        Not under ZeRO-3 (it reads the discriminator's weights outside its forward)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            if min(self.adversarial_weight, self.orthogonality_weight, self.reversal_ramp) < 0:
                raise ConfigError(
                    "train.student.sharing: adversarial_weight, orthogonality_weight and "
                    "reversal_ramp must be >= 0"
                )

    def __init__(self, options: Any, encoder: nn.Module, tasks: list[str], dropout: float):
        super().__init__(options, encoder, tasks, dropout)
        self.discriminator = nn.Linear(encoder.config.hidden_size, len(tasks))
        self._task_index = {name: i for i, name in enumerate(tasks)}

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig, zero_stage: int, gradient_weighting: bool) -> None:
        super().check_pipeline(cfg, zero_stage, gradient_weighting)
        if zero_stage == 3 and cfg.train.student.sharing.options.adversary == "confusion":
            raise ConfigError(
                "train.student.sharing.adversary: confusion reads the discriminator's whole weights, "
                "which ZeRO-3 partitions; use reversal or ZeRO 0–2"
            )

    def aux_losses(
        self, task: str, features: Features, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        o = self.options
        shared = mean_pool(features.shared, attention_mask)
        private = mean_pool(self.private_features(features), attention_mask)
        strength = reversal_ramp(self.progress, o.reversal_ramp)
        index = self._task_index[task]
        if o.adversary == "confusion":
            judged = self.discriminator(shared.detach())  # (batch, tasks): trains the discriminator
            d = self.discriminator
            fooled = F.linear(shared, d.weight.detach(), d.bias.detach())  # trains the encoder
            adversarial = adversarial_task_loss(judged, index) + strength * confusion_loss(fooled)
        else:
            judged = self.discriminator(gradient_reversal(shared, strength))
            adversarial = adversarial_task_loss(judged, index)
        return {
            "adversarial": o.adversarial_weight * adversarial,
            "orthogonality": o.orthogonality_weight
            * orthogonality_penalty(shared, private, mean=o.orthogonality == "mean"),
        }
