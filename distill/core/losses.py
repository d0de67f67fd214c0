"""Distillation losses as pure functions over tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label / target id that contributes no loss (rows without a hard label, summary padding)."""


def _weighted_mean(per_row: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Σ wᵢ·lᵢ / Σ wᵢ (the plain mean when ``weight`` is None; 0 when every weight is 0)."""
    if weight is None:
        return per_row.mean()
    weight = weight.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1e-12)


def soft_label_kl(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(teacher_T ‖ student_T), averaged over the batch (weighted by ``weight`` (batch,)
    per row when given: Σ wᵢ·KLᵢ / Σ wᵢ).

    student_logits: (batch, labels). teacher_probs: (batch, labels), rows sum to 1; they
    are sharpened or softened to temperature T as p^(1/T) renormalised (the same as
    softmax(log p / T)). The T² factor keeps gradient magnitudes comparable across T
    (Hinton et al., 2015).
    """
    teacher_log = torch.log(teacher_probs.float().clamp(min=1e-12)) / temperature
    teacher_t = teacher_log.log_softmax(-1)
    student_t = (student_logits.float() / temperature).log_softmax(-1)
    kl = F.kl_div(student_t, teacher_t, log_target=True, reduction="none").sum(-1)
    return _weighted_mean(kl, weight) * temperature**2


def hard_label_ce(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the rows that have a label, 0 when none has one.

    student_logits: (batch, labels); labels: (batch,) label indices, ``ignore_index`` for rows
    without one. Sum / count (count clamped to 1) rather than the mean reduction, which is NaN
    for an all-ignored batch; this also needs no host sync to check for that case. ``weight``
    (batch,): Σ wᵢ·CEᵢ / Σ wᵢ over the labelled rows.
    """
    if weight is None:
        total = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index, reduction="sum")
        return total / (labels != ignore_index).sum().clamp(min=1)
    per_row = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index, reduction="none")
    w = weight.float() * (labels != ignore_index)
    return (per_row * w).sum() / w.sum().clamp(min=1e-12)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    soft_weight: float,
    weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """soft_weight · T²·KL + (1 − soft_weight) · CE; returns the mix and its parts.

    ``labels`` None is pure KD (soft_weight must then be 1): no "ce" part. ``weight`` (batch,):
    each row's share of both terms (train.teacher_confidence: weight).
    """
    kd = soft_label_kl(student_logits, teacher_probs, temperature, weight)
    if labels is None:
        if soft_weight != 1.0:
            raise ValueError(f"no hard labels but soft_weight {soft_weight} gives CE a weight")
        return {"loss": kd, "kd": kd}
    ce = hard_label_ce(student_logits, labels, weight=weight)
    return {"loss": soft_weight * kd + (1.0 - soft_weight) * ce, "kd": kd, "ce": ce}


def sequence_kd_loss(
    logits: torch.Tensor, target_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Token cross-entropy on the teacher's summary (sequence-level KD, Kim & Rush 2016).

    logits: (batch, target_len, vocab); target_ids: (batch, target_len) with ``ignore_index``
    at padding. Mean over real tokens.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(), ignore_index=ignore_index)


def token_kd_loss(
    logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher ‖ student) per summary token over the teacher's top-k tokens (token-level KD).

    logits: (batch, T, vocab) student; top_ids, top_logprobs: (batch, T, k) the teacher's k most
    likely next tokens (student ids) and their log-probabilities; mask: (batch, T) real tokens.
    The teacher's top-k is renormalised to a distribution p; the student's full softmax q is
    read at those ids: Σ_j p_j (log p_j − log q_j). Mean over real tokens. A listed id may
    repeat nowhere; padding rows of top_logprobs may be -inf (they are masked).
    """
    p_log = top_logprobs.float().log_softmax(-1)  # (batch, T, k)
    q_log = logits.float().log_softmax(-1).gather(-1, top_ids)  # (batch, T, k)
    p_log = torch.where(mask.unsqueeze(-1), p_log, 0.0)
    per_token = (p_log.exp() * (p_log - torch.where(mask.unsqueeze(-1), q_log, 0.0))).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ_task weight_task · loss_task over the tasks present in ``losses``."""
    return sum(weights.get(task, 1.0) * loss for task, loss in losses.items())  # type: ignore[return-value]
