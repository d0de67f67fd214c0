"""The teacher-layers summarizer: a decoder-only LM cut from a local model (by default the
teacher), reading the teacher's prompt in its vocabulary and the shared encoder through a
zero-initialised bridge (decoder.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError
from distill.student.sharing import mean_pool
from distill.student.summarizers.base import Parts, Summarizer, Warmup, config_from_dict
from distill.student.summarizers.teacher_layers.heal import heal_step
from distill.student.summarizers.teacher_layers.options import TeacherLayersOptions, teacher_layers_options

if TYPE_CHECKING:
    from distill.core.config import StudentConfig
    from distill.student.model import Student, StudentSpec

DECODER_TOKENIZER = "decoder_tokenizer"
"""Subfolder of a teacher-layers student: the teacher's tokenizer its decoder reads and writes."""


class TeacherLayers(Summarizer):
    name: ClassVar[str] = "teacher_layers"
    sharing: ClassVar[tuple[str, ...]] = ("hard",)
    """The train.student.sharing modes it supports: it reads the shared encoder through its
    bridge only."""
    exporter: ClassVar[str] = "causal_lm"
    Options = TeacherLayersOptions

    @classmethod
    def warmup(cls, student, tokenizer, cfg, documents, g) -> Warmup:
        """Healing the cut against the model it was cut from: see distill/student/warmup.py."""
        from transformers import AutoModelForCausalLM

        from distill.core.assets import resolve_teacher

        source = resolve_teacher(teacher_layers_options(cfg).decoder_source)
        teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()

        def step(rows: list[list[int]]) -> torch.Tensor:
            ce, cos = heal_step(student, teacher, rows)
            return ce + cfg.warmup.hidden_weight * cos

        return Warmup(
            name="heal",
            tokens=student.codec.tokenizer(documents, add_special_tokens=False)["input_ids"],
            params=[p for p in student.summarizer.parameters() if p.requires_grad],
            step=step,
        )

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig) -> None:
        student, teacher = cfg.train.student, cfg.teach.teacher
        if student.sharing not in cls.sharing:
            raise ConfigError(
                "train.student.summarizer: teacher_layers reads the shared encoder through its bridge "
                f"only; it supports sharing: {', '.join(cls.sharing)}"
            )
        if student.options is None:
            student.options = TeacherLayersOptions()
        options = student.options
        if options.decoder_source is None:
            if cfg.teacher_vocabulary != teacher.model:  # the model is served, not here
                raise ConfigError(
                    f"train.student.decoder_source: the teacher ({teacher.backend} backend) has no "
                    "local weights; name a local model whose layers seed the decoder (with the "
                    "served model's vocabulary for token-level KD)"
                )
            options.decoder_source = teacher.model
        cfg.decoder_reads_teacher_tokens = options.decoder_source == cfg.teacher_vocabulary
        if cfg.train.token_kd_weight > 0:
            if teacher.summary_top_k == 0:
                raise ConfigError(
                    "train.token_kd_weight: needs the teacher's per-token top-k "
                    "(teach.teacher.summary_top_k > 0)"
                )
            if not cfg.decoder_reads_teacher_tokens:
                raise ConfigError(
                    f"train.token_kd_weight: the decoder ({options.decoder_source!r}) must have the "
                    f"teacher's own vocabulary ({cfg.teacher_vocabulary!r}) to learn its per-token "
                    "distributions"
                )

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def pretrained(cls, path: str, tokenizer: Any, cfg: StudentConfig, writes: bool) -> nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(path)

    @classmethod
    def build(
        cls,
        cfg: StudentConfig,
        backbone: nn.Module,
        rows: list[tuple[str, dict[str, Any]]],
        extra_text: list[str],
    ) -> Parts:
        from distill.student.summarizers.teacher_layers.decoder import cut_teacher

        summarizer, codec, layers = cut_teacher(cfg, rows, backbone.config.hidden_size, extra_text)
        fields = {
            "encoder_config": backbone.config.to_dict(),
            "decoder_config": summarizer.lm.config.to_dict(),
            "decoder_source": teacher_layers_options(cfg).decoder_source,
            "decoder_layers": layers,
            "bridge": teacher_layers_options(cfg).bridge,
        }
        return Parts(backbone, summarizer, codec, fields)

    @classmethod
    def from_spec(cls, spec: StudentSpec, tokenizer: Any) -> tuple[nn.Module, nn.Module]:
        from transformers import AutoModel

        from distill.student.summarizers.teacher_layers.decoder import CausalSummarizer

        assert spec.decoder_config is not None
        backbone = AutoModel.from_config(config_from_dict(spec.encoder_config))
        hidden = spec.encoder_config["hidden_size"]
        return backbone, CausalSummarizer(config_from_dict(spec.decoder_config), hidden, spec.bridge)

    @classmethod
    def save_extra(cls, folder: Path, codec: Any) -> None:
        if codec is not None:
            codec.tokenizer.save_pretrained(folder / DECODER_TOKENIZER)

    @classmethod
    def load_codec(cls, folder: Path, summarizer: nn.Module | None) -> Any:
        from transformers import AutoTokenizer

        from distill.student.summarizers.teacher_layers.decoder import codec_for

        return codec_for(AutoTokenizer.from_pretrained(folder / DECODER_TOKENIZER), summarizer)

    # --- running ------------------------------------------------------------------------------
    @classmethod
    def encoder(cls, student: Student) -> nn.Module:
        return student.backbone

    @classmethod
    def _pooled(cls, student: Student, task: str, input_ids, attention_mask) -> torch.Tensor:
        """(batch, hidden) mean-pooled shared states: what the bridge reads."""
        shared, _ = student.features(task, input_ids, attention_mask, None)
        return mean_pool(shared, attention_mask)

    @classmethod
    def logits(cls, student, task, input_ids, attention_mask, target_ids, prompt) -> dict[str, torch.Tensor]:
        pooled = cls._pooled(student, task, input_ids, attention_mask)
        ids, mask = prompt["decoder_prompt_ids"], prompt["decoder_prompt_mask"]
        return {"logits": student.summarizer(ids, mask, pooled, target_ids)}

    @classmethod
    def generate(
        cls, student, task, input_ids, attention_mask, max_new_tokens, decoding, prompt
    ) -> torch.Tensor:
        assert prompt is not None, "a teacher-layers summarizer reads the decoder prompt"
        return student.summarizer.generate(
            prompt["decoder_prompt_ids"],
            prompt["decoder_prompt_mask"],
            cls._pooled(student, task, input_ids, attention_mask),
            max_new_tokens,
            student.codec.stop_student_ids,
            **decoding,
        )
