"""The cascade's thresholds (chosen on validation rows) and its scores, against hand counts; the
teacher's per-class precision and recall."""

import numpy as np
import pytest

from distill.eval.metrics.bootstrap import bootstrap_indices
from distill.eval.metrics.cascade import (
    cascade_point,
    cascade_section,
    threshold_for_accuracy,
    threshold_for_rate,
    with_latency,
)
from distill.eval.metrics.classification import per_class


def test_rate_threshold_defers_that_share_of_the_validation_rows():
    conf = np.array([0.9, 0.55, 0.7, 0.6, 0.95, 0.8, 0.51, 0.65, 0.99, 0.75])
    assert threshold_for_rate(conf, 0.0) == 0.0
    assert threshold_for_rate(conf, 0.2) == 0.6  # 0.51 and 0.55 fall below it
    assert (conf < threshold_for_rate(conf, 0.2)).sum() == 2
    assert (conf < threshold_for_rate(conf, 0.5)).sum() == 5
    assert threshold_for_rate(conf, 1.0) == float("inf")


def test_cascade_point_counts_by_hand():
    conf = np.array([0.9, 0.5, 0.6, 0.95])
    student = np.array([1, 0, 0, 1])
    teacher = np.array([1, 1, 1, 0])
    gold = np.array([1, 1, 0, -1])
    point = cascade_point(conf, student, teacher, gold, 0.7, bootstrap_indices(4, 50, 0))
    # rows 1 and 2 go to the teacher: predictions 1, 1, 1, 1 → right on rows 0, 1; wrong on 2
    assert point["deferred"] == 0.5 and point["teacher_calls_per_1000"] == 500.0
    assert point["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert point["agreement"] == pytest.approx(3 / 4)  # row 3: student 1, teacher 0
    none = cascade_point(conf, student, teacher, gold, 0.0, bootstrap_indices(4, 50, 0))
    assert none["deferred"] == 0.0 and none["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    everything = cascade_point(conf, student, teacher, gold, float("inf"), bootstrap_indices(4, 50, 0))
    assert everything["threshold"] is None and everything["agreement"] == 1.0


def test_accuracy_threshold_is_the_least_deferral_that_reaches_the_target():
    conf = np.array([0.55, 0.6, 0.7, 0.8, 0.9])
    student = np.array([0, 0, 1, 1, 1])
    teacher = np.array([1, 1, 0, 1, 1])
    gold = np.array([1, 1, 0, 1, 1])  # student wrong on the three least sure rows
    assert threshold_for_accuracy(conf, student, teacher, gold, 0.4) == 0.0  # 2/5 already
    assert threshold_for_accuracy(conf, student, teacher, gold, 0.6) == 0.6  # defer row 0: 3/5
    assert threshold_for_accuracy(conf, student, teacher, gold, 1.0) == 0.8  # defer rows 0-2
    wrong_teacher = np.array([0, 0, 1, 0, 0])
    assert threshold_for_accuracy(conf, student, wrong_teacher, gold, 1.0) == float("inf")


def test_cascade_section_chooses_on_validation_and_scores_on_test():
    rng = np.random.default_rng(0)
    n = 200

    def split():
        conf = rng.uniform(0.5, 1.0, n)
        gold = rng.integers(0, 2, n)
        student = np.where(rng.uniform(size=n) < conf, gold, 1 - gold)  # unsure → often wrong
        teacher = np.where(rng.uniform(size=n) < 0.9, gold, 1 - gold)
        return {"confidence": conf, "student": student, "teacher": teacher, "gold": gold}

    val, test = split(), split()
    section = cascade_section(val, test, bootstrap_indices(n, 100, 0), 0.2, None)
    assert [r["target_rate"] for r in section["rows"]] == [0.0, 0.05, 0.1, 0.2, 0.5]
    assert section["chosen"]["validation_deferred"] == 0.2
    assert section["chosen"]["threshold"] == section["rows"][3]["threshold"]
    deferred = [r["deferred"] for r in section["rows"]]
    assert deferred == sorted(deferred) and abs(deferred[3] - 0.2) < 0.08  # another split's share
    accs = [r["accuracy"] for r in section["rows"]]
    assert accs[-1] > accs[0] + 0.05  # deferring the unsure rows to a 90% teacher pays
    with_latency(section, 10.0, 200.0)
    assert section["rows"][0]["latency_ms"] == 10.0
    assert section["chosen"]["latency_ms"] == pytest.approx(10.0 + section["chosen"]["deferred"] * 200.0)
    assert "note" in cascade_section(None, test, bootstrap_indices(n, 10, 0), 0.2, None)


def test_teacher_per_class_precision_recall_and_classes_below_the_majority_rate():
    names = ["a", "b", "c"]
    pred = np.array([0, 0, 0, 1, 1, 2, 0, 0])
    gold = np.array([0, 0, 1, 1, 2, 2, 2, -1])
    out = per_class(names, pred, gold, majority_rate=3 / 7)
    assert out["classes"]["a"] == {"precision": 0.5, "recall": 1.0, "support": 2}  # row 7 has no gold
    assert out["classes"]["b"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert out["classes"]["c"] == {"precision": 1.0, "recall": pytest.approx(1 / 3, abs=1e-4), "support": 3}
    assert out["below_majority_rate"] == ["c"]
