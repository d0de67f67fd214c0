"""Summary metrics over a task's eval rows: ROUGE against the references (with bootstrap
intervals), the Lead baselines a summarizer must beat, and signs of degeneration."""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from distill.eval.metrics.bootstrap import CI_DIGITS, mean_estimate

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


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
