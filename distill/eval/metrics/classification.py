"""Classification metrics over a task's eval rows and predictions, each with its 95% bootstrap
interval (distill.eval.metrics.bootstrap), and the majority-class baseline they are read against."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.eval.metrics.bootstrap import CI_DIGITS, estimate, mean_estimate


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else float("nan")


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean F1 over the labels present in gold or predictions (as sklearn's average="macro"):
    a label nobody predicted and no row holds says nothing about the model, so it is left out."""
    labels = np.union1d(pred, gold)
    if not len(labels):
        return float("nan")
    scores = []
    for c in labels:
        tp = np.sum((pred == c) & (gold == c))
        scores.append(2 * tp / (np.sum(pred == c) + np.sum(gold == c)))  # = 2TP / (2TP + FP + FN)
    return float(np.mean(scores))


def confidence_bins(confidence: np.ndarray, bins: int = 10) -> np.ndarray:
    """Each confidence's equal-width bin (lo, hi] of [0, 1] as an index 0..bins-1 (−1 for 0).

    np.searchsorted against the np.linspace edges, so a confidence that equals an edge lands
    in the bin that edge closes, with the edges' own rounding (0.3 is not above linspace's
    0.30000000000000004)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges, confidence, side="left") - 1


def _bin_sums(probs: np.ndarray, gold: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per confidence bin: rows, Σ confidence, Σ correct; each (bins,). probs: (n, labels)."""
    confidence = probs.max(-1)
    correct = (probs.argmax(-1) == gold).astype(float)
    index = confidence_bins(confidence, bins)
    kept = index >= 0
    weights = (None, confidence[kept], correct[kept])
    return tuple(np.bincount(index[kept], weights=w, minlength=bins) for w in weights)


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """Σ_bins (|bin|/n)·|accuracy − confidence| over equal-width confidence bins (lo, hi].

    probs: (n, labels); gold: (n,) label indices."""
    if not len(gold):
        return float("nan")
    _, confidence, correct = _bin_sums(probs, gold, bins)
    # (|bin|/n)·|Σcorrect/|bin| − Σconfidence/|bin|| = |Σcorrect − Σconfidence| / n
    return float(np.abs(correct - confidence).sum() / len(gold))


def reliability_table(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> dict[str, list]:
    """The bins ``expected_calibration_error`` sums over, for a reliability diagram: per bin
    (lo, hi] its rows, mean confidence and accuracy (None for an empty bin).

    probs: (n, labels); gold: (n,) label indices."""
    count, confidence, correct = _bin_sums(probs, gold, bins)

    def per_bin(total: np.ndarray) -> list[float | None]:
        return [round(float(t / c), CI_DIGITS) if c else None for t, c in zip(total, count)]

    return {
        "edges": [round(float(e), CI_DIGITS) for e in np.linspace(0.0, 1.0, bins + 1)],
        "count": [int(c) for c in count],
        "mean_confidence": per_bin(confidence),
        "accuracy": per_bin(correct),
    }


def confusion_matrix(pred: np.ndarray, gold: np.ndarray, labels: int) -> list[list[int]]:
    """counts[g][p]: rows of gold label g predicted as p (label indices 0..labels-1), (labels, labels)."""
    counts = np.bincount(gold * labels + pred, minlength=labels * labels).reshape(labels, labels)
    return counts.tolist()


def kl_per_row(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """KL(teacher ‖ student) of each row of two (n, labels) distributions → (n,)."""
    t = np.clip(teacher, 1e-12, 1.0)
    s = np.clip(student, 1e-12, 1.0)
    return np.sum(t * (np.log(t) - np.log(s)), axis=-1)


def _on_gold(metric: Callable[[np.ndarray], float], gold: np.ndarray) -> Callable[[np.ndarray], float]:
    """A statistic over row indices that keeps only the rows with a gold label (gold ≥ 0)."""
    return lambda idx: metric(idx[gold[idx] >= 0])


def gold_metrics(probs: np.ndarray, gold: np.ndarray, resamples: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and ECE of (n, labels) ``probs`` against ``gold`` (n,), −1 = no gold,
    and the reliability bins and confusion matrix of the rows with gold."""
    pred = probs.argmax(-1)
    n = len(gold)
    correct = np.where(gold >= 0, pred == gold, np.nan)
    labeled = gold >= 0
    return {
        **mean_estimate("accuracy", correct, resamples),
        **estimate("macro_f1", _on_gold(lambda k: macro_f1(pred[k], gold[k]), gold), n, resamples),
        **estimate(
            "ece", _on_gold(lambda k: expected_calibration_error(probs[k], gold[k]), gold), n, resamples
        ),
        "reliability": reliability_table(probs[labeled], gold[labeled]),
        "confusion": confusion_matrix(pred[labeled], gold[labeled], probs.shape[-1]),
    }


NO_BASELINE = "no eval row has a gold label, so there is no majority-class baseline to read accuracy against"


def majority_label(names: list[str], gold: np.ndarray) -> str | None:
    """The most common label of ``gold`` ((n,) indices into the task's label ``names``, −1 = no
    gold); ties go to the first in the task's label order. None when no row has gold."""
    counts = np.bincount(gold[gold >= 0], minlength=len(names))
    return names[int(counts.argmax())] if counts.sum() else None  # argmax: first of ties


def majority_baseline(
    names: list[str], gold: np.ndarray, resamples: np.ndarray, train_rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The constant prediction of the scored rows' majority gold label (their label prior),
    scored on those rows: what a model must beat to know more than how often each label occurs.

    Taken from the scored split, not from train: production train rows often carry no gold,
    and the prior the model is judged on is the scored split's. ``train_share``: that label's
    share of the train rows with gold (None when they have none), to show a prior shift. None
    when no scored row has gold."""
    label = majority_label(names, gold)
    if label is None:
        return None
    constant = np.full(len(gold), names.index(label))
    correct = np.where(gold >= 0, constant == gold, np.nan)
    train_gold = [r["label"] for r in train_rows if r["label"] is not None]
    return {
        "label": label,
        "train_share": round(train_gold.count(label) / len(train_gold), 4) if train_gold else None,
        **mean_estimate("accuracy", correct, resamples),
        **estimate(
            "macro_f1", _on_gold(lambda k: macro_f1(constant[k], gold[k]), gold), len(gold), resamples
        ),
    }


def per_class(
    names: list[str], pred: np.ndarray, gold: np.ndarray, majority_rate: float | None
) -> dict[str, Any]:
    """Precision, recall and support of ``pred`` per gold class (rows with gold only), and the
    classes whose recall is below ``majority_rate`` (the majority-class baseline's accuracy): on
    those rows the model is right less often than always answering the most common label is."""
    keep = gold >= 0
    pred, gold = pred[keep], gold[keep]
    classes = {}
    for i, name in enumerate(names):
        predicted, actual = pred == i, gold == i
        hits = int((predicted & actual).sum())
        classes[name] = {
            "precision": round(hits / int(predicted.sum()), 4) if predicted.any() else None,
            "recall": round(hits / int(actual.sum()), 4) if actual.any() else None,
            "support": int(actual.sum()),
        }
    below = [
        name
        for name, c in classes.items()
        if majority_rate is not None and c["recall"] is not None and c["recall"] < majority_rate
    ]
    return {"classes": classes, "below_majority_rate": below, "majority_rate": majority_rate}


def label_mass_summary(rows: list[dict[str, Any]], min_label_mass: float | None) -> dict[str, Any]:
    """How much of the teacher's next-token mass fell on the verbalizers (low = off-format answers)."""
    mass = np.array([r["teacher_label_mass"] for r in rows], dtype=float)
    return {
        "min": round(float(mass.min()), 4),
        "p5": round(float(np.percentile(mass, 5)), 4),
        "p50": round(float(np.median(mass)), 4),
        "mean": round(float(mass.mean()), 4),
        "min_label_mass": min_label_mass,
        "below_min": int((mass < min_label_mass).sum()) if min_label_mass is not None else None,
    }


def classification_metrics(
    names: list[str],
    rows: list[dict[str, Any]],
    student_probs: np.ndarray,
    train_rows: list[dict[str, Any]],
    resamples: np.ndarray,
    min_label_mass: float | None = None,
) -> dict[str, Any]:
    """``names``: the task's labels, in the head's order. ``student_probs``: (n, labels).
    ``resamples``: (R, n) row indices shared by every figure.
    ``train_rows``: the teach train rows, read only for the majority baseline's ``train_share``."""
    teacher_probs = np.array([r["teacher_distribution"] for r in rows])  # (n, labels)
    gold = np.array([names.index(r["label"]) if r["label"] is not None else -1 for r in rows])
    agree = (student_probs.argmax(-1) == teacher_probs.argmax(-1)).astype(float)
    # Per row: student right − teacher right (−1, 0, 1); its mean is the accuracy gap, paired.
    gap = np.where(
        gold >= 0,
        (student_probs.argmax(-1) == gold).astype(float) - (teacher_probs.argmax(-1) == gold),
        np.nan,
    )
    report = {
        "rows": len(rows),
        "labels": list(names),  # the order of the confusion matrices' rows and columns
        "rows_with_gold": int((gold >= 0).sum()),
        "student": gold_metrics(student_probs, gold, resamples),
        "teacher": gold_metrics(teacher_probs, gold, resamples),
        **mean_estimate("agreement", agree, resamples),
        **mean_estimate("kl_teacher_student", kl_per_row(teacher_probs, student_probs), resamples),
        **mean_estimate("student_minus_teacher_accuracy", gap, resamples),
        "majority_baseline": majority_baseline(names, gold, resamples, train_rows),
        "teacher_label_mass": label_mass_summary(rows, min_label_mass),
        "teacher_methods": dict(Counter(r["teacher_method"] for r in rows)),
    }
    baseline = report["majority_baseline"]
    rate = baseline["accuracy"] if baseline else None
    report["teacher_per_class"] = per_class(names, teacher_probs.argmax(-1), gold, rate)
    if baseline is None:
        report["majority_baseline_note"] = NO_BASELINE
    for who in ("teacher", "student"):
        below = bool(baseline and (gold >= 0).any() and report[who]["accuracy"] <= baseline["accuracy"])
        report[who]["at_or_below_majority"] = below
    return report
