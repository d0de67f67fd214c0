"""``branch``: hierarchical sharing. The embeddings and the first ``shared_layers`` encoder
layers are shared; each task has its own copy of the layers above (the first task reads the
pipeline's encoder itself). Low layers learn what every task needs, high layers what one task
needs (Søgaard & Goldberg 2016; Sanh et al. 2019, HMTL)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from distill.core.errors import ConfigError
from distill.student.sharing.base import Sharing, encoder_layers, encoder_view


class Branch(Sharing):
    name: ClassVar[str] = "branch"
    reads_shared_encoder: ClassVar[bool] = False
    zero3: ClassVar[bool] = False  # its shared layers sit in several modules

    @dataclass
    class Options:
        shared_layers: int = 3
        """Encoder layers every task shares (from the bottom); the rest are per task."""

        def __post_init__(self) -> None:
            if self.shared_layers < 0:
                raise ConfigError("train.student.sharing.shared_layers: must be >= 0")

    def __init__(self, options: Any, encoder: nn.Module, tasks: list[str], dropout: float):
        super().__init__(options, encoder, tasks, dropout)
        layers = encoder_layers(encoder)
        k = self.options.shared_layers
        if k > len(layers):
            raise ConfigError(
                f"train.student.sharing.shared_layers: {k}, but the encoder has {len(layers)} layers"
            )
        self.branches = nn.ModuleDict(
            {t: encoder_view(encoder, [*layers[:k], *copy.deepcopy(layers[k:])]) for t in tasks[1:]}
        )

    def task_encoder(self, encoder: nn.Module, task: str) -> nn.Module:
        return self.branches[task] if task in self.branches else encoder  # noqa: SIM401 (a ModuleDict has no get)

    def shared_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        shared = [encoder.embeddings, *encoder_layers(encoder)[: self.options.shared_layers]]
        return [p for m in shared for p in m.parameters() if p.requires_grad]

    def last_shared_layer(self, encoder: nn.Module) -> int:
        return self.options.shared_layers - 1
