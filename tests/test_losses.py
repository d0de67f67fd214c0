import math

import pytest
import torch
import torch.nn.functional as F

from distill.core.losses import (
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


def test_sequence_kd_passes_its_ignore_index():
    # Padding with 4, a real vocabulary id: a loss that dropped ignore_index (and so fell back to
    # PyTorch's -100) would count the two padded positions, which the logits make very unlikely.
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 10.0
    padded = torch.tensor([[2, 4, 4]])
    expected = -torch.log_softmax(logits[0, 0], -1)[2].item()
    assert sequence_kd_loss(logits, padded, ignore_index=4).item() == pytest.approx(expected, rel=1e-5)
    assert (
        sequence_kd_loss(logits, padded, ignore_index=4).item()
        < 0.01
        < sequence_kd_loss(logits, padded).item()
    )


def test_hard_label_ce_skips_rows_without_a_label():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    labels = torch.tensor([0, IGNORE_INDEX, 1])
    by_hand = (-logits[0].log_softmax(-1)[0] - logits[2].log_softmax(-1)[1]) / 2
    assert hard_label_ce(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)
    with_sentinel = hard_label_ce(logits, torch.tensor([0, 1, 1]), ignore_index=1)
    assert with_sentinel.item() == pytest.approx(-logits[0].log_softmax(-1)[0].item(), rel=1e-5)


def test_hard_label_ce_is_zero_when_no_row_has_a_label():
    logits = torch.randn(3, 2, requires_grad=True)
    ce = hard_label_ce(logits, torch.full((3,), IGNORE_INDEX))
    assert ce.item() == 0.0  # not NaN, so a batch without gold labels adds nothing
    ce.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 2))


def test_pure_kd_has_no_ce_part():
    logits = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.6, 0.4]])
    parts = distillation_loss(logits, teacher, None, temperature=2.0, soft_weight=1.0)
    assert set(parts) == {"loss", "kd"}
    assert parts["loss"].item() == pytest.approx(soft_label_kl(logits, teacher, 2.0).item())
    with pytest.raises(ValueError, match="soft_weight 0.5"):
        distillation_loss(logits, teacher, None, temperature=2.0, soft_weight=0.5)


def test_weighted_total_uses_task_weights():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert weighted_total(losses, {"a": 0.5, "b": 2.0}).item() == pytest.approx(7.0)


def test_confidence_weighting_equals_the_per_row_weighted_closed_form():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = torch.tensor([0, IGNORE_INDEX, 1])
    w = teacher.max(-1).values  # 0.9, 0.6, 0.8: train.teacher_confidence weight
    t, alpha = 2.0, 0.3
    kl, ce = [], []
    for z, p, y in zip(logits.tolist(), teacher.tolist(), labels.tolist()):
        pt = [v ** (1 / t) for v in p]
        pt = [v / sum(pt) for v in pt]
        q = [math.exp(v / t) for v in z]
        q = [v / sum(q) for v in q]
        kl.append(t**2 * sum(a * math.log(a / b) for a, b in zip(pt, q)))
        ce.append(-math.log(math.exp(z[y]) / sum(math.exp(v) for v in z)) if y != IGNORE_INDEX else None)
    kd_by_hand = sum(wi * k for wi, k in zip(w.tolist(), kl)) / w.sum().item()
    ce_by_hand = (0.9 * ce[0] + 0.8 * ce[2]) / (0.9 + 0.8)  # the unlabelled row has no CE share
    parts = distillation_loss(logits, teacher, labels, t, alpha, weight=w)
    assert parts["kd"].item() == pytest.approx(kd_by_hand, rel=1e-5)
    assert parts["ce"].item() == pytest.approx(ce_by_hand, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(alpha * kd_by_hand + (1 - alpha) * ce_by_hand, rel=1e-5)
    # equal weights are the unweighted loss; the weights move it (the rows' losses differ)
    plain = distillation_loss(logits, teacher, labels, t, alpha)
    same = distillation_loss(logits, teacher, labels, t, alpha, weight=torch.full((3,), 0.5))
    assert same["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)
    assert abs(parts["loss"].item() - plain["loss"].item()) > 1e-3
