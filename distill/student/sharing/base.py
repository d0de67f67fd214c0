"""What a sharing mode of the student provides (``train.student.sharing``). A mode is one
``Sharing`` subclass (a file beside this one, registered in ``SHARINGS``) with its own
``Options``; the student reaches its task encoders, private features and auxiliary losses
only through these methods, so no other module compares mode names."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from distill.core.errors import ConfigError

if TYPE_CHECKING:
    from distill.core.config import PipelineConfig


@dataclass
class Features:
    """One batch's encoder states for one task."""

    shared: torch.Tensor
    """(batch, seq, hidden): the states of the task's encoder (the shared one, under hard sharing)."""
    private: torch.Tensor | None = None
    """(batch, seq, hidden): the task's private states, for modes that have them."""


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, hidden) → (batch, hidden), averaging real tokens only."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (batch, seq, 1)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def encoder_inputs(input_ids, attention_mask, token_type_ids) -> dict[str, torch.Tensor]:
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return {"input_ids": input_ids, "attention_mask": attention_mask, **extra}


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The numbered transformer layers of a BERT-style encoder (``encoder.encoder.layer``)."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(encoder, "embeddings"):
        raise ConfigError(
            f"train.student.sharing: needs a BERT-style encoder (embeddings + encoder.layer); "
            f"{type(encoder).__name__} has none"
        )
    return layers


def encoder_view(encoder: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """A model of ``encoder``'s class that reads ``encoder``'s own embeddings (the same module,
    shared storage) and runs ``layers`` (modules given, shared or not): a task's branch or
    private encoder, run by the encoder class's own forward (its attention masks included)."""
    config = copy.deepcopy(encoder.config)
    config.num_hidden_layers = len(layers)
    try:
        view = type(encoder)(config, add_pooling_layer=False)
    except TypeError:  # an encoder class without a pooler option
        view = type(encoder)(config)
    view.embeddings = encoder.embeddings
    view.encoder.layer = nn.ModuleList(layers)
    if getattr(view, "pooler", None) is not None:
        view.pooler = None  # mean pooling reads the states; an unused pooler gets no gradient
    return view


class Sharing(nn.Module):
    """Base: every task reads the one shared encoder (hard sharing's behaviour)."""

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]] = ()
    """Names of the auxiliary losses ``aux_losses`` returns (already weighted)."""
    zero3: ClassVar[bool] = True
    """Runs under ZeRO-3 (which partitions parameters outside their module's forward)."""
    reads_shared_encoder: ClassVar[bool] = True
    """Every task's states are the shared encoder's own (so a stock encoder-decoder exports it)."""
    shared_gradients: ClassVar[bool] = True
    """Has parameters every task reaches, so gradient weighting (gradnorm, pcgrad) means something."""

    @dataclass
    class Options:
        """Its own options, keys of ``train.student.sharing`` beside ``method`` (none here)."""

    def __init__(self, options: Any, encoder: nn.Module, tasks: list[str], dropout: float):
        super().__init__()
        self.options = options if options is not None else type(self).Options()
        self.task_names = list(tasks)
        self.progress = 0.0
        """Share of training done, in [0, 1] (the recipe sets it each step; a ramp reads it)."""

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig, zero_stage: int, gradient_weighting: bool) -> None:
        if zero_stage == 3 and not cls.zero3:
            raise ConfigError(
                f"train.student.sharing: {cls.name} needs whole parameters, which ZeRO-3 partitions; "
                "use ZeRO 0–2"
            )
        if gradient_weighting and not cls.shared_gradients:
            raise ConfigError(
                f"train.weighting.method: {cfg.train.weighting.method} weighs the gradients of the "
                f"parameters every task shares, and sharing {cls.name} has none"
            )

    def head_width(self, hidden: int) -> int:
        """Features a classification head reads."""
        return hidden

    def task_encoder(self, encoder: nn.Module, task: str) -> nn.Module:
        """The encoder whose states are ``task``'s shared features."""
        return encoder

    def private_states(self, encoder: nn.Module, task: str, inputs: dict[str, torch.Tensor]) -> Any:
        return None

    def features(self, encoder: nn.Module, task: str, inputs: dict[str, torch.Tensor]) -> Features:
        shared = self.task_encoder(encoder, task)(**inputs).last_hidden_state
        return Features(shared, self.private_states(encoder, task, inputs))

    def states(self, features: Features) -> torch.Tensor:
        """(batch, seq, hidden): what a summarization decoder reads."""
        return features.shared if features.private is None else features.shared + features.private

    def pooled(self, features: Features, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, head_width): what a classification head reads."""
        pooled = mean_pool(features.shared, attention_mask)
        if features.private is None:
            return pooled
        return torch.cat([pooled, mean_pool(features.private, attention_mask)], dim=-1)

    def aux_losses(
        self, task: str, features: Features, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {}

    def shared_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        """Parameters every task reaches."""
        return [p for p in encoder.parameters() if p.requires_grad]

    def last_shared_layer(self, encoder: nn.Module) -> int:
        """Index of the last encoder layer every task reaches (GradNorm's W)."""
        return getattr(encoder.config, "num_hidden_layers", 0) - 1

    def export_state(self, encoder: nn.Module, task: str) -> dict[str, Any]:
        """What ``distill export`` writes of the task beside its head: ``encoder`` (a module whose
        state loads into a stock encoder of the same config), ``private`` (its private module or
        None) and ``private_config`` (how modeling_distill.py rebuilds it)."""
        return {"encoder": self.task_encoder(encoder, task), "private": None, "private_config": None}


class Hard(Sharing):
    name: ClassVar[str] = "hard"
