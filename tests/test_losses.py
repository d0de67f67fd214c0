import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    IGNORE_INDEX,
    distillation_loss,
    hard_label_ce,
    sequence_kd_loss,
    soft_label_kl,
    weighted_total,
)


def test_kl_is_zero_when_student_matches_teacher():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    teacher = logits.softmax(-1)
    assert soft_label_kl(logits, teacher, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_closed_form_for_uniform_student():
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    uniform_logits = torch.zeros(1, 3)
    expected = sum(p * math.log(p / (1 / 3)) for p in (0.7, 0.2, 0.1))
    assert soft_label_kl(uniform_logits, teacher, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_temperature_softens_teacher_and_scales_by_t_squared():
    teacher = torch.tensor([[0.8, 0.2]])
    student = torch.tensor([[0.0, 0.0]])
    t = 2.0
    soft = torch.tensor([0.8, 0.2]) ** (1 / t)
    soft = soft / soft.sum()
    kl = sum(p * math.log(p / 0.5) for p in soft.tolist())
    assert soft_label_kl(student, teacher, t).item() == pytest.approx(t**2 * kl, rel=1e-5)


def test_kl_direction_is_teacher_to_student():
    teacher = torch.tensor([[0.9, 0.1]])
    student_logits = torch.log(torch.tensor([[0.5, 0.5]]))
    by_hand = F.kl_div(torch.log(torch.tensor([[0.5, 0.5]])), teacher, reduction="batchmean")
    assert soft_label_kl(student_logits, teacher, 1.0).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_distillation_mix_weights_parts():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 0])
    parts = distillation_loss(logits, teacher, labels, temperature=3.0, soft_weight=0.25)
    assert parts["ce"].item() == pytest.approx(hard_label_ce(logits, labels).item())
    assert parts["loss"].item() == pytest.approx(0.25 * parts["kd"].item() + 0.75 * parts["ce"].item())
    only_hard = distillation_loss(logits, teacher, labels, 3.0, soft_weight=0.0)
    assert only_hard["loss"].item() == pytest.approx(only_hard["ce"].item())


def test_sequence_kd_ignores_padding():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 10.0
    targets = torch.tensor([[2, IGNORE_INDEX, IGNORE_INDEX]])
    expected = -torch.log_softmax(logits[0, 0], -1)[2].item()
    assert sequence_kd_loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    uniform = sequence_kd_loss(torch.zeros(2, 4, 5), torch.tensor([[1, 2, 3, 4], [0, 0, IGNORE_INDEX, 1]]))
    assert uniform.item() == pytest.approx(math.log(5), rel=1e-5)


def test_weighted_total_uses_task_weights():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert weighted_total(losses, {"a": 0.5, "b": 2.0}).item() == pytest.approx(7.0)
