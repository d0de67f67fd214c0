"""The summary decoder's special tokens and teacher-forcing inputs."""

from __future__ import annotations

from typing import Any

import torch

from distill.core.errors import DistillError
from distill.core.losses import IGNORE_INDEX


def decoder_inputs(target_ids: torch.Tensor, start_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: decoder input = [start] + target[:-1], and its attention mask.

    target_ids: (batch, target_len) with IGNORE_INDEX at padding. The mask comes from the
    targets, not from ``!= pad_id``, so a tokenizer whose pad id equals a real token (eos)
    still attends to it. Returns two (batch, target_len) tensors.
    """
    real = target_ids != IGNORE_INDEX
    ids = torch.where(real, target_ids, pad_id)
    start = torch.full_like(ids[:, :1], start_id)
    decoder_ids = torch.cat([start, ids[:, :-1]], dim=1)
    mask = torch.cat([torch.ones_like(real[:, :1]), real[:, :-1]], dim=1)
    return decoder_ids, mask.long()


def decoder_special_tokens(tokenizer: Any, encoder: str) -> tuple[int, int]:
    """(start, end) ids of a summary: the tokenizer's cls or bos starts it, sep or eos ends it."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        missing = [
            name
            for name, value in (("cls/bos", start), ("sep/eos", end), ("pad", tokenizer.pad_token_id))
            if value is None
        ]
        raise DistillError(
            f"student.encoder {encoder!r}: its tokenizer has no {' and no '.join(missing)} token, "
            "which the summary decoder needs to start, end and pad a summary"
        )
    return start, end


def set_special_tokens(model: Any, tokenizer: Any, encoder: str) -> None:
    """The decoder starts a summary with the tokenizer's cls/bos and ends it with sep/eos."""
    start, end = decoder_special_tokens(tokenizer, encoder)
    ids = {
        "decoder_start_token_id": start,
        "bos_token_id": start,
        "eos_token_id": end,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for target in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(target, key, value)
    model.config.decoder.eos_token_id = end
    model.config.decoder.pad_token_id = tokenizer.pad_token_id


def encode_targets(
    texts: list[str], tokenizer: Any, max_length: int, finished: list[bool], encoder: str
) -> list[list[int]]:
    """Summary tokens, ending in the decoder's end token (sep or eos) only when the summary is
    finished: one cut by the teacher's length limit, or by ``max_length`` here, must not teach
    the student to stop there. The start token (cls or bos) is prepended by the shift."""
    _, end = decoder_special_tokens(tokenizer, encoder)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for seq, done in zip(ids, finished):
        ends = done and len(seq) < max_length
        out.append(seq[: max_length - 1] + [end] if ends else seq[:max_length])
    return out
