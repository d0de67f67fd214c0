"""The bert2bert summarizer: a transformers EncoderDecoderModel whose decoder is warm-started from
the shared encoder's own weights and cross-attends to it. A student with no summarization task
records this summarizer too, with no decoder: its backbone is then the bare encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError
from distill.core.losses import IGNORE_INDEX, sequence_kd_loss
from distill.core.tensors import length_mask, pad
from distill.student.summarizers.base import Parts, Summarizer, Warmup, config_from_dict
from distill.student.tokens import decoder_inputs, set_special_tokens

if TYPE_CHECKING:
    from distill.core.config import StudentConfig, WarmupConfig
    from distill.student.model import Student, StudentSpec


class Bert2Bert(Summarizer):
    name: ClassVar[str] = "bert2bert"
    exporter: ClassVar[str] = "seq2seq"

    @classmethod
    def warmup(cls, student, tokenizer, cfg, documents, g) -> Warmup:
        """Denoising: see distill/student/warmup.py."""
        return Warmup(
            name="denoise",
            tokens=tokenizer(documents, add_special_tokens=False)["input_ids"],
            params=[p for p in student.backbone.parameters() if p.requires_grad],
            step=lambda rows: denoise_step(student, tokenizer, rows, cfg.warmup, g),
        )

    @classmethod
    def check_pipeline(cls, cfg: PipelineConfig, writes: bool) -> None:
        if cfg.train.token_kd_weight > 0:
            raise ConfigError(
                "train.token_kd_weight: token-level KD needs the teacher's vocabulary "
                "(train.student.summarizer: teacher_layers)"
            )

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def pretrained(cls, path: str, tokenizer: Any, cfg: StudentConfig, writes: bool) -> nn.Module:
        from transformers import AutoModel, EncoderDecoderModel

        if not writes:
            return AutoModel.from_pretrained(path)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
        set_special_tokens(model, tokenizer, cfg.encoder)
        return model

    @classmethod
    def build(cls, cfg: StudentConfig, backbone: nn.Module, rows: list, extra_text: list[str]) -> Parts:
        if not hasattr(backbone, "decoder"):
            return Parts(backbone, spec={"encoder_config": backbone.config.to_dict(), "decoder_config": None})
        config = backbone.config
        return Parts(
            backbone,
            spec={"encoder_config": config.encoder.to_dict(), "decoder_config": config.decoder.to_dict()},
        )

    @classmethod
    def from_spec(cls, spec: StudentSpec, tokenizer: Any) -> tuple[nn.Module, None]:
        from transformers import AutoModel, EncoderDecoderConfig, EncoderDecoderModel

        if spec.decoder_config is None:
            return AutoModel.from_config(config_from_dict(spec.encoder_config)), None
        full = EncoderDecoderConfig.from_encoder_decoder_configs(
            config_from_dict(spec.encoder_config), config_from_dict(spec.decoder_config)
        )
        model = EncoderDecoderModel(config=full)
        set_special_tokens(model, tokenizer, spec.encoder_source)
        return model, None

    # --- running ------------------------------------------------------------------------------
    @classmethod
    def encoder(cls, student: Student) -> nn.Module:
        return student.backbone.encoder if student.spec.decoder_config else student.backbone

    @classmethod
    def _encoder_outputs(cls, student: Student, task: str, input_ids, attention_mask):
        """What the decoder cross-attends to (shared + private states, sharing permitting), and
        the features apart."""
        from transformers.modeling_outputs import BaseModelOutput

        features = student.features(task, input_ids, attention_mask, None)
        return BaseModelOutput(last_hidden_state=student.sharing.states(features)), features

    @classmethod
    def logits(cls, student, task, input_ids, attention_mask, target_ids, prompt) -> dict[str, torch.Tensor]:
        config = student.backbone.config
        decoder_input_ids, decoder_mask = decoder_inputs(
            target_ids, config.decoder_start_token_id, config.pad_token_id
        )
        encoded, features = cls._encoder_outputs(student, task, input_ids, attention_mask)
        out = student.backbone(
            encoder_outputs=encoded,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_mask,
        )
        return {"logits": out.logits, **student.aux_losses(task, features, attention_mask)}

    @classmethod
    def generate(
        cls, student, task, input_ids, attention_mask, max_new_tokens, decoding, prompt
    ) -> torch.Tensor:
        encoded, _ = cls._encoder_outputs(student, task, input_ids, attention_mask)
        return student.backbone.generate(
            encoder_outputs=encoded, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **decoding
        )


def denoise_step(
    student: Any, tokenizer: Any, rows: list[list[int]], wc: WarmupConfig, g: torch.Generator
) -> torch.Tensor:
    """bert2bert: mask ``mask_rate`` of the encoder's tokens; the decoder writes the span's start."""
    ids, mask = pad(rows, tokenizer.pad_token_id), length_mask(rows)
    masked = (torch.rand(ids.shape, generator=g) < wc.mask_rate) & mask.bool()
    corrupted = torch.where(masked, tokenizer.mask_token_id, ids)
    end = student.backbone.generation_config.eos_token_id
    targets = [r[: wc.target_length - 1] + [end] for r in rows]
    target_ids = pad(targets, IGNORE_INDEX)
    config = student.backbone.config
    decoder_ids, decoder_mask = decoder_inputs(target_ids, config.decoder_start_token_id, config.pad_token_id)
    logits = student.backbone(
        input_ids=corrupted,
        attention_mask=mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
    ).logits
    return sequence_kd_loss(logits, target_ids)
