"""Metrics over a task's eval rows and predictions, each with its 95% bootstrap interval.

Every interval resamples the eval rows (with replacement) through one index matrix per
task, so student and teacher figures computed from the same matrix are paired: each
resample holds the same rows for both.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.core.config import TaskConfig

CI_DIGITS = 4
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


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


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; fixed by the seed."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def percentile_interval(samples: np.ndarray) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of a statistic's resampled values (NaNs, from a resample
    with no usable row, are skipped); None when every resample was NaN."""
    samples = np.asarray(samples, dtype=float)
    if np.isnan(samples).all():
        return None
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [round(float(lo), CI_DIGITS), round(float(hi), CI_DIGITS)]


def estimate(
    name: str, statistic: Callable[[np.ndarray], float], n: int, resamples: np.ndarray
) -> dict[str, float | list[float] | None]:
    """``{name: statistic(all rows), name_ci95: [lo, hi]}``; ``statistic`` maps row indices to a value."""
    value = statistic(np.arange(n))
    samples = np.array([statistic(idx) for idx in resamples])
    return {name: round(value, CI_DIGITS), f"{name}_ci95": percentile_interval(samples)}


def mean_estimate(
    name: str, per_row: np.ndarray, resamples: np.ndarray
) -> dict[str, float | list[float] | None]:
    """``estimate`` of the mean of a per-row value (NaN rows skipped), vectorised over resamples."""
    value = float(np.nanmean(per_row)) if not np.isnan(per_row).all() else float("nan")
    with np.errstate(invalid="ignore"):
        picked = per_row[resamples]  # (resamples, n)
        counts = (~np.isnan(picked)).sum(-1)
        sums = np.nansum(picked, axis=-1)
        samples = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {name: round(value, CI_DIGITS), f"{name}_ci95": percentile_interval(samples)}


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


def majority_label(task: TaskConfig, train_rows: list[dict[str, Any]]) -> str | None:
    """The most common gold label of the train split (ties: the first in the task's label order)."""
    counts = Counter(r["label"] for r in train_rows if r["label"] is not None)
    if not counts:
        return None
    return max(task.label_names, key=lambda name: counts[name])


def majority_baseline(
    task: TaskConfig, train_rows: list[dict[str, Any]], gold: np.ndarray, resamples: np.ndarray
) -> dict[str, Any] | None:
    """The constant prediction of the train split's majority label, scored on the eval rows."""
    label = majority_label(task, train_rows)
    if label is None:
        return None
    with_gold = sum(r["label"] is not None for r in train_rows)
    share = sum(r["label"] == label for r in train_rows) / with_gold
    constant = np.full(len(gold), task.label_names.index(label))
    correct = np.where(gold >= 0, constant == gold, np.nan)
    return {
        "label": label,
        "train_share": round(share, 4),
        **mean_estimate("accuracy", correct, resamples),
        **estimate(
            "macro_f1", _on_gold(lambda k: macro_f1(constant[k], gold[k]), gold), len(gold), resamples
        ),
    }


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
    task: TaskConfig,
    rows: list[dict[str, Any]],
    student_probs: np.ndarray,
    train_rows: list[dict[str, Any]],
    resamples: np.ndarray,
    min_label_mass: float | None = None,
) -> dict[str, Any]:
    """``student_probs``: (n, labels). ``resamples``: (R, n) row indices shared by every figure."""
    names = task.label_names
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
        "majority_baseline": majority_baseline(task, train_rows, gold, resamples),
        "teacher_label_mass": label_mass_summary(rows, min_label_mass),
        "teacher_methods": dict(Counter(r["teacher_method"] for r in rows)),
    }
    baseline = report["majority_baseline"]
    for who in ("teacher", "student"):
        below = bool(baseline and (gold >= 0).any() and report[who]["accuracy"] <= baseline["accuracy"])
        report[who]["at_or_below_majority"] = below
    return report


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    # The settings of distill/eval/metrics/rouge (stemming, these four types).
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_row(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """ROUGE F-measure of each pair, (n,) per type; NaN where there is no reference."""
    scores = {t: np.full(len(predictions), np.nan) for t in ROUGE_TYPES}
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        if reference:
            pair = _rouge_scorer().score(reference, prediction)
            for t in ROUGE_TYPES:
                scores[t][i] = pair[t].fmeasure
    return scores


def rouge(predictions: list[str], references: list[str], resamples: np.ndarray) -> dict[str, Any]:
    """Mean ROUGE over the pairs with a reference, each with its bootstrap interval."""
    per_row = rouge_per_row(predictions, references)
    if np.isnan(per_row["rouge1"]).all():
        return {}
    out: dict[str, Any] = {}
    for t in ROUGE_TYPES:
        out.update(mean_estimate(t, per_row[t], resamples))
    return out


# Abbreviations whose period does not end a sentence (compared in lower case, without the
# final period); "et al" is two words, so the check looks at the text's tail, not its last word.
ABBREVIATIONS = (
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "gen", "gov", "sen", "rep", "rev",
    "lt", "col", "sgt", "capt", "inc", "ltd", "co", "corp", "vs", "fig", "approx",
    "e.g", "i.e", "et al", "u.s", "u.k", "u.n", "a.m", "p.m",
)  # fmt: skip
_ABBREVIATION_TAIL = re.compile(
    r"(?:^|[\s(\[\"'])(?:" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")\.$", re.IGNORECASE
)
# "George W. Bush": an initial, not a sentence end ("I." is left out: it often ends one).
_INITIAL_TAIL = re.compile(r"(?:^|\s)[A-HJ-Z]\.$")
# A sentence end: . ! or ? (and any closing quotes or brackets), whitespace, then what opens a
# sentence: an uppercase letter, a digit or an opening quote.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s+[A-Z0-9\"'\u201c\u2018])")


def lead_sentence(text: str) -> str:
    """The first sentence of ``text`` (all of it when no sentence end is found), stripped.

    Deterministic rules rather than a trained splitter, so the Lead baseline does not move
    with a library version. A period after a listed abbreviation or a single capital initial
    is not a sentence end ("U.S. It" stays one sentence: ambiguous, and kept together)."""
    text = text.strip()
    for end in _SENTENCE_END.finditer(text):
        head = text[: end.start() + 1]  # up to and with the . ! or ?
        if head.endswith(".") and (_ABBREVIATION_TAIL.search(head) or _INITIAL_TAIL.search(head)):
            continue
        return text[: end.end()]
    return text


def lead_words(text: str, n: int) -> str:
    """The first ``n`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:n])


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Word n-grams of lower-cased whitespace tokens."""
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_rate(texts: list[str], n: int = 3) -> float:
    """Mean over texts with at least one n-gram of (1 − unique n-grams / n-grams): the share of
    a text's n-grams that repeat an earlier one of the same text ("a b c a b c", n=3: 1 − 3/4).
    NaN when no text has an n-gram."""
    rates = [1 - len(set(grams)) / len(grams) for grams in (_ngrams(t, n) for t in texts) if grams]
    return float(np.mean(rates)) if rates else float("nan")


def distinct_outputs_per_100(texts: list[str]) -> float:
    """100 · distinct texts (after strip and lower-casing) / texts: 1 means one output for every
    input, the collapse a degenerate student shows. NaN for no texts."""
    if not texts:
        return float("nan")
    return 100 * len({t.strip().lower() for t in texts}) / len(texts)


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams, pooled over the texts.
    NaN when there is no n-gram."""
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def mean_words(texts: list[str]) -> float:
    return float(np.mean([len(t.split()) for t in texts])) if texts else float("nan")


def degeneration(texts: list[str], cut: int | None) -> dict[str, Any]:
    """Signs of a summarizer that repeats itself or says the same thing for every input."""
    return {
        "repeated_3gram_rate": round(repeated_ngram_rate(texts, 3), CI_DIGITS),
        "distinct_outputs_per_100": round(distinct_outputs_per_100(texts), 2),
        "distinct_2": round(distinct_n(texts, 2), CI_DIGITS),
        "mean_words": round(mean_words(texts), 2),
        "empty": sum(not t.strip() for t in texts),
        "cut": cut,
    }


def lead_baselines(rows: list[dict[str, Any]], resamples: np.ndarray) -> dict[str, Any]:
    """ROUGE of the document's first sentence and of its first N words, N = the mean reference
    length in words (rounded): what a summarizer must beat to be doing more than copying the
    opening. Empty when no row has a reference."""
    lengths = [len(r["reference"].split()) for r in rows if r["reference"]]
    if not lengths:
        return {}
    n = max(1, round(float(np.mean(lengths))))
    references = [r["reference"] or "" for r in rows]
    return {
        "lead_sentence": rouge([lead_sentence(r["document"]) for r in rows], references, resamples),
        "lead_words": rouge([lead_words(r["document"], n) for r in rows], references, resamples),
        "lead_words_n": n,
    }


def _example(row: dict[str, Any], student: str) -> dict[str, Any]:
    document = row["document"]
    return {
        "document": document[:300] + ("…" if len(document) > 300 else ""),
        "reference": row["reference"],
        "teacher": row["teacher_summary"],
        "student": student,
    }


def summary_metrics(
    rows: list[dict[str, Any]],
    predicted: list[str],
    resamples: np.ndarray,
    *,
    student_cut: list[bool] | None = None,
    greedy: list[str] | None = None,
    decoding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ROUGE of student, teacher and Lead baselines against the references, and how degenerate
    student and teacher outputs are.

    ``predicted``: the student's summaries under the configured ``decoding``; ``greedy``: its
    plain greedy summaries when that decoding is not plain greedy (None: ``predicted`` is).
    Degeneration is measured on greedy output, where repetition is not masked by
    no_repeat_ngram_size or beams. ``student_cut``: per row, the student hit its token limit."""
    for name, values in (("predicted", predicted), ("greedy", greedy), ("student_cut", student_cut)):
        if values is not None and len(values) != len(rows):
            raise ValueError(f"summary_metrics: {name} has {len(values)} entries for {len(rows)} rows")
    teacher_text = [r["teacher_summary"] for r in rows]
    references = [r["reference"] or "" for r in rows]
    teacher_cut = sum(r["teacher_finish_reason"] == "length" for r in rows)
    student = degeneration(
        greedy if greedy is not None else predicted,
        None if student_cut is None else sum(bool(c) for c in student_cut),
    )
    teacher = degeneration(teacher_text, teacher_cut)
    ratio = student["mean_words"] / teacher["mean_words"] if teacher["mean_words"] else None
    return {
        "rows": len(rows),
        "student_vs_reference": rouge(predicted, references, resamples),
        "student_vs_reference_greedy": rouge(greedy, references, resamples) if greedy is not None else None,
        "teacher_vs_reference": rouge(teacher_text, references, resamples),
        "student_vs_teacher": rouge(predicted, teacher_text, resamples),
        "lead": lead_baselines(rows, resamples),
        "teacher_cut_by_length": teacher_cut,
        "degeneration": {
            "student": student,
            "teacher": teacher,
            "student_to_teacher_length": None if ratio is None else round(ratio, CI_DIGITS),
        },
        "decoding": decoding,
        "examples": [_example(r, p) for r, p in zip(rows[:5], predicted[:5])],
    }
