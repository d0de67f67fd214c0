"""What a summarizer of the student provides. A summarizer is one class (a file or folder beside
this one, registered in ``SUMMARIZERS``); the student builds, saves, loads, trains and runs its
decoder only through these methods, and ``distill export`` asks it which exporter writes it, so
neither compares summarizer names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from distill.core.config import PipelineConfig, StudentConfig
    from distill.student.model import Student, StudentSpec


@dataclass
class Parts:
    """A freshly built student's backbone and summarizer, and what its spec records of them."""

    backbone: nn.Module
    """An EncoderDecoderModel when the decoder lives in it (bert2bert), else a bare encoder."""
    summarizer: nn.Module | None = None
    """A decoder beside the backbone (teacher_layers), else None."""
    codec: Any = None
    """The summarizer's text ↔ ids, when it has a vocabulary of its own."""
    spec: dict[str, Any] = field(default_factory=dict)
    """StudentSpec fields: encoder_config, decoder_config, and the summarizer's own."""


@dataclass
class Warmup:
    """A summarizer's warm-up objective (distill/student/warmup.py runs the loop around it)."""

    name: str
    """What the record calls it: heal, denoise …"""
    tokens: list[list[int]]
    """The warm-up documents in the ids ``step`` reads; the loop cuts them into spans."""
    params: list[nn.Parameter]
    """What the warm-up trains."""
    step: Callable[[list[list[int]]], torch.Tensor]
    """A batch of spans → the loss."""


def config_from_dict(data: dict[str, Any]) -> Any:
    """A transformers config from its ``to_dict()`` (what a spec stores)."""
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


class Summarizer:
    """The interface; each method says what the student or export asks of it."""

    name: ClassVar[str]

    @dataclass
    class Options:
        """Its own options, read from ``train.student`` beside ``summarizer`` (none here)."""

    exporter: ClassVar[str]
    """The ``distill export`` format that writes a summarization task of it (a key of
    distill/ship/export/run.py's EXPORTERS)."""

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig, writes: bool) -> None:
        """Raise ConfigError for pipeline settings it cannot run under (``writes``: some task of
        the pipeline writes text, so the summarizer will be built)."""

    @classmethod
    def warmup(
        cls, student: Student, tokenizer: Any, cfg: StudentConfig, documents: list[str], g: torch.Generator
    ) -> Warmup:
        """Its one-time warm-up objective on ``documents`` (``g``: the warm-up's own RNG)."""
        raise NotImplementedError

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def pretrained(cls, path: str, tokenizer: Any, cfg: StudentConfig, writes: bool) -> nn.Module:
        """The backbone warm-started from the pretrained encoder at ``path`` (``writes``: some
        task writes text). OSError if it cannot be loaded."""
        raise NotImplementedError

    @classmethod
    def build(
        cls,
        cfg: StudentConfig,
        backbone: nn.Module,
        rows: list[tuple[str, dict[str, Any]]],
        extra_text: list[str],
    ) -> Parts:
        """The rest of a fresh student around ``backbone``; ``rows``: (instruction, teach train
        row) of the summarization tasks, ``extra_text``: more text the decoder must read."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: StudentSpec, tokenizer: Any) -> tuple[nn.Module, nn.Module | None]:
        """Backbone and summarizer of a saved student, randomly initialised (weights load next)."""
        raise NotImplementedError

    @classmethod
    def save_extra(cls, folder: Path, codec: Any) -> None:
        """Write what a saved student needs beyond its weights and encoder tokenizer."""

    @classmethod
    def load_codec(cls, folder: Path, summarizer: nn.Module | None) -> Any:
        """The codec of a loaded student (None when the summarizer has none)."""
        return None

    # --- running ------------------------------------------------------------------------------
    @classmethod
    def encoder(cls, student: Student) -> nn.Module:
        """The shared encoder inside the student's modules."""
        raise NotImplementedError

    @classmethod
    def logits(
        cls,
        student: Student,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_ids: torch.Tensor,
        prompt: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced "logits" (batch, target_len, vocab), plus the sharing mode's auxiliary
        losses (``student.aux_losses``)."""
        raise NotImplementedError

    @classmethod
    def generate(
        cls,
        student: Student,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        decoding: dict[str, Any],
        prompt: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """(batch, new) generated ids; ``decoding``: generate options (num_beams, …)."""
        raise NotImplementedError
