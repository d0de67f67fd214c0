"""The bert2bert summarizer: a transformers EncoderDecoderModel whose decoder is warm-started from
the shared encoder's own weights and cross-attends to it."""

from __future__ import annotations

from typing import ClassVar

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError


class Bert2Bert:
    name: ClassVar[str] = "bert2bert"
    sharing: ClassVar[tuple[str, ...]] = ("hard", "shared_private", "adversarial")

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig) -> None:
        if cfg.train.token_kd_weight > 0:
            raise ConfigError(
                "train.token_kd_weight: token-level KD needs the teacher's vocabulary "
                "(train.student.summarizer: teacher_layers)"
            )
