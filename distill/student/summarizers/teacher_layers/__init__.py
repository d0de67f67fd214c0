"""The teacher-layers summarizer: a decoder-only LM cut from a local model (by default the
teacher), reading the teacher's prompt in its vocabulary and the shared encoder through a
zero-initialised bridge (decoder.py)."""

from __future__ import annotations

from typing import ClassVar

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError


class TeacherLayers:
    name: ClassVar[str] = "teacher_layers"
    sharing: ClassVar[tuple[str, ...]] = ("hard",)
    """The train.student.sharing modes it supports: it reads the shared encoder through its
    bridge only."""

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig) -> None:
        student, teacher = cfg.train.student, cfg.teach.teacher
        if student.sharing not in cls.sharing:
            raise ConfigError(
                "train.student.summarizer: teacher_layers reads the shared encoder through its bridge "
                f"only; it supports sharing: {', '.join(cls.sharing)}"
            )
        if student.decoder_source is None:
            if teacher.backend != "local":
                raise ConfigError(
                    "train.student.decoder_source: the teacher is an API; name a local model whose "
                    "layers seed the decoder (with the served model's vocabulary for token-level KD)"
                )
            student.decoder_source = teacher.model
        if cfg.train.token_kd_weight > 0:
            if teacher.summary_top_k == 0:
                raise ConfigError(
                    "train.token_kd_weight: needs the teacher's per-token top-k "
                    "(teach.teacher.summary_top_k > 0)"
                )
            if not cfg.decoder_reads_teacher_tokens:
                vocabulary = teacher.model if teacher.backend == "local" else teacher.tokenizer
                raise ConfigError(
                    f"train.token_kd_weight: the decoder ({student.decoder_source!r}) must have the "
                    f"teacher's own vocabulary ({vocabulary!r}) to learn its per-token distributions"
                )
