"""``shared_private``: each task also has a private encoder beside the shared one (Liu, Qiu &
Huang 2017); a label head reads [shared; private] pooled features, a summary decoder reads
shared + private states."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from distill.core.errors import ConfigError
from distill.student.sharing.base import Features, Sharing, encoder_layers, encoder_view


class PrivateEncoder(nn.Module):
    """One pre-norm transformer layer over the shared embeddings, randomly initialised."""

    def __init__(self, hidden: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embedded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """embedded (batch, seq, hidden), attention_mask (batch, seq) 1 = real → (batch, seq, hidden)."""
        return self.norm(self.layer(embedded, src_key_padding_mask=attention_mask == 0))


class SharedPrivate(Sharing):
    name: ClassVar[str] = "shared_private"
    reads_shared_encoder: ClassVar[bool] = False

    @dataclass
    class Options:
        private_init: Literal["random", "first_layer", "last_layer"] = "first_layer"
        """How each task's one-layer private encoder starts. random: a fresh pre-norm layer of
        width ``private_feedforward`` (the heads then read noise at full scale at first);
        first_layer / last_layer: a copy of that pretrained layer of the shared encoder, run
        over the shared embeddings (first_layer is the one trained on embeddings)."""
        private_feedforward: int = 512
        """Feed-forward width of a random private layer."""

        def __post_init__(self) -> None:
            if self.private_feedforward < 1:
                raise ConfigError("train.student.sharing.private_feedforward: must be >= 1")

    def __init__(self, options: Any, encoder: nn.Module, tasks: list[str], dropout: float):
        super().__init__(options, encoder, tasks, dropout)
        config, init = encoder.config, self.options.private_init
        if init == "random":
            made = {
                t: PrivateEncoder(
                    config.hidden_size, config.num_attention_heads, self.options.private_feedforward, dropout
                )
                for t in tasks
            }
        else:
            layer = encoder_layers(encoder)[0 if init == "first_layer" else -1]
            made = {t: encoder_view(encoder, [copy.deepcopy(layer)]) for t in tasks}
        self.private = nn.ModuleDict(made)

    def head_width(self, hidden: int) -> int:
        return 2 * hidden

    def private_states(self, encoder: nn.Module, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        module = self.private[task]
        if isinstance(module, PrivateEncoder):
            extra = {"token_type_ids": inputs["token_type_ids"]} if "token_type_ids" in inputs else {}
            embedded = encoder.embeddings(input_ids=inputs["input_ids"], **extra)
            return module(embedded, inputs["attention_mask"])
        return module(**inputs).last_hidden_state

    def export_state(self, encoder: nn.Module, task: str) -> dict[str, Any]:
        module = self.private[task]
        if isinstance(module, PrivateEncoder):
            config = {"feedforward": self.options.private_feedforward}
        else:
            config = {"layers": 1}
        return {"encoder": encoder, "private": module, "private_config": config}

    def private_features(self, features: Features) -> torch.Tensor:
        assert features.private is not None
        return features.private
