"""The teacher-layers summarizer's warm-up: recovery of the cut (see distill/student/warmup.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distill.core.errors import DistillError
from distill.core.tensors import length_mask, pad


def heal_step(student: Any, teacher: Any, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """teacher_layers: next-token CE and 1 − cos to the teacher's last hidden states.

    ``rows``: spans in teacher ids; the student reads the same tokens in its own ids (its
    vocabulary holds every token of the warm-up text, so the two align position by position)."""
    codec = student.codec
    student_rows = [codec.student(r) for r in rows]
    if any(len(a) != len(b) for a, b in zip(student_rows, rows)):
        raise DistillError("warm-up: a span's tokens are outside the student's vocabulary")
    ids, mask = pad(student_rows, 0), length_mask(student_rows)
    teacher_ids = pad(rows, 0)
    with torch.no_grad():
        target = teacher(input_ids=teacher_ids, attention_mask=mask, output_hidden_states=True).hidden_states[
            -1
        ]
    out = student.summarizer.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    labels = torch.where(real, ids, -100)[:, 1:]
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    cos = F.cosine_similarity(out.hidden_states[-1][real].float(), target[real].float(), dim=-1)
    return ce, (1.0 - cos).mean()
