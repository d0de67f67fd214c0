"""The cascade: the student answers, and defers to its teacher the requests it is least sure
of (confidence = its top class probability, below a threshold). Thresholds are chosen on the
validation rows and scored on the eval rows, so no reported point is fitted on what it scores.

Temperature scaling would not change which rows fall below a quantile (it keeps the order of
confidences), so the rate-targeted thresholds need no calibration of the student."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.eval.metrics.bootstrap import mean_estimate

RATES = (0.0, 0.05, 0.1, 0.2, 0.5)
"""The deferral rates the report's cascade table shows."""


def cascade_inputs(names: list[str], rows: list[dict[str, Any]], probs: np.ndarray) -> dict[str, np.ndarray]:
    """Teach rows of a classification split and the student's (n, labels) ``probs`` on them → the
    cascade's inputs: student confidence and prediction, teacher prediction, gold (−1: none)."""
    return {
        "confidence": probs.max(-1),
        "student": probs.argmax(-1),
        "teacher": np.array([names.index(r["teacher_label"]) for r in rows]),
        "gold": np.array([names.index(r["label"]) if r["label"] is not None else -1 for r in rows]),
    }


def threshold_for_rate(confidence: np.ndarray, rate: float) -> float:
    """The confidence below which a ``rate`` share of ``confidence`` (validation rows) falls:
    deferring ``confidence < threshold`` defers round(rate·n) rows (fewer on ties). 0 defers
    nothing; above 1 (inf) defers everything."""
    n = len(confidence)
    k = int(round(rate * n))
    if k <= 0 or n == 0:
        return 0.0
    if k >= n:
        return float("inf")
    return float(np.sort(confidence)[k])


def cascade_correct(
    confidence: np.ndarray, student_pred: np.ndarray, teacher_pred: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(deferred (n,) bool, the cascade's prediction (n,))."""
    deferred = confidence < threshold
    return deferred, np.where(deferred, teacher_pred, student_pred)


def threshold_for_accuracy(
    confidence: np.ndarray,
    student_pred: np.ndarray,
    teacher_pred: np.ndarray,
    gold: np.ndarray,
    target: float,
) -> float:
    """The least deferral on these (validation) rows whose cascade accuracy against ``gold`` (−1:
    none) reaches ``target``; inf (defer everything) when no threshold does."""
    labelled = gold >= 0
    for t in [0.0, *np.unique(confidence), float("inf")]:  # ascending: deferral grows
        _, pred = cascade_correct(confidence, student_pred, teacher_pred, float(t))
        if labelled.any() and (pred[labelled] == gold[labelled]).mean() >= target:
            return float(t)
    return float("inf")


def cascade_point(
    confidence: np.ndarray,
    student_pred: np.ndarray,
    teacher_pred: np.ndarray,
    gold: np.ndarray,
    threshold: float,
    resamples: np.ndarray,
) -> dict[str, Any]:
    """One threshold on the eval rows: the share deferred, teacher calls per 1,000 requests,
    accuracy vs gold and agreement with the teacher, each with its interval."""
    deferred, pred = cascade_correct(confidence, student_pred, teacher_pred, threshold)
    correct = np.where(gold >= 0, (pred == gold).astype(float), np.nan)
    return {
        "threshold": None if threshold == float("inf") else round(threshold, 6),
        "deferred": round(float(deferred.mean()), 4),
        "teacher_calls_per_1000": round(1000 * float(deferred.mean()), 1),
        **mean_estimate("accuracy", correct, resamples),
        **mean_estimate("agreement", (pred == teacher_pred).astype(float), resamples),
    }


def cascade_section(
    validation: dict[str, np.ndarray] | None,
    test: dict[str, np.ndarray],
    resamples: np.ndarray,
    rate: float | None,
    accuracy: float | None,
) -> dict[str, Any]:
    """``validation`` and ``test``: ``confidence``, ``student``, ``teacher`` (predicted label
    indices) and ``gold`` (−1: none), (n,) each. One row per RATES entry (threshold from the
    validation rows' quantile) and the point chosen for serve.defer's target (``rate`` or
    ``accuracy``), marked ``chosen``."""
    if validation is None or not len(validation["confidence"]):
        return {
            "note": "no taught validation split: no threshold can be chosen without scoring the eval rows"
        }
    v = validation
    rows = []
    for r in RATES:
        point = cascade_point(test["confidence"], test["student"], test["teacher"], test["gold"],
                              threshold_for_rate(v["confidence"], r), resamples)  # fmt: skip
        rows.append({"target_rate": r, **point})
    if rate is not None:
        threshold, target = threshold_for_rate(v["confidence"], rate), f"rate {rate}"
    else:
        threshold = threshold_for_accuracy(v["confidence"], v["student"], v["teacher"], v["gold"], accuracy)
        target = f"accuracy {accuracy}"
    chosen = cascade_point(
        test["confidence"], test["student"], test["teacher"], test["gold"], threshold, resamples
    )
    deferred_on_validation = float((v["confidence"] < threshold).mean())
    return {
        "validation_rows": len(v["confidence"]),
        "rows": rows,
        "chosen": {"target": target, "validation_deferred": round(deferred_on_validation, 4), **chosen},
    }


def with_latency(section: dict[str, Any], student_ms: float | None, teacher_ms: float | None) -> None:
    """Each point's estimated mean latency per request: every request runs the student, a deferred
    one the teacher too (single-item p50 latencies from eval's speed phase)."""
    if student_ms is None or "rows" not in section:
        return
    for point in [*section["rows"], section["chosen"]]:
        extra = point["deferred"] * teacher_ms if teacher_ms is not None else None
        point["latency_ms"] = None if extra is None else round(student_ms + extra, 2)
