"""The answer cache wrapped around any teacher backend, and the check every answer passes first."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from distill.teach.cache import AnswerCache, answer_key
from distill.teach.prompts import Prompt
from distill.teach.teachers.base import Answer, Teacher

UNGATED_METHODS = ("score_labels",)
"""Label methods whose label_mass is no share of an answer (forced-choice scores), so
``min_label_mass`` does not apply to them."""


def check_answer(kind: str, answer: Any, n_labels: int = 0, min_label_mass: float = 0.0) -> str | None:
    """Why ``answer`` may not be cached, or None. Guards the cache against any backend's bug, and
    against an answer that mostly was not a label at all (``min_label_mass``)."""
    if not isinstance(answer, dict):
        return f"answer is {type(answer).__name__}, not a mapping"
    if "error" in answer:
        return str(answer["error"])
    if kind == "summary":
        ok = isinstance(answer.get("text"), str) and answer.get("finish_reason") in ("stop", "length")
        return (
            None if ok and _tokens_ok(answer.get("tokens")) else f"malformed summary answer {answer!r:.200}"
        )
    dist = answer.get("distribution")
    if (
        not isinstance(dist, list)
        or len(dist) != n_labels
        or not all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in dist)
        or abs(sum(dist) - 1.0) > 1e-4
    ):
        return f"malformed class distribution {dist!r:.200}"
    mass = answer.get("label_mass", 1.0)
    if answer.get("method") not in UNGATED_METHODS and mass < min_label_mass:
        return (
            f"label mass {mass:.3f} < min_label_mass {min_label_mass}: the teacher mostly answered "
            "something other than a label"
        )
    return None


def _tokens_ok(tokens: Any) -> bool:
    """A summary's optional token-level answer: ids (n,), top_ids and top_logprobs (n, k), finite."""
    if tokens is None:
        return True
    try:
        ids, top_ids, top_lp = tokens["ids"], tokens["top_ids"], tokens["top_logprobs"]
        return (
            len(ids) == len(top_ids) == len(top_lp)
            and all(isinstance(i, int) for i in ids)
            and all(len(a) == len(b) > 0 for a, b in zip(top_ids, top_lp))
            and all(math.isfinite(v) and v <= 0 for row in top_lp for v in row)
        )
    except (KeyError, TypeError):
        return False


class CachedTeacher:
    """Answers from the cache where it can; asks the backend only for misses and commits each
    answer the moment it arrives. Failed items are never cached; they are kept in ``failures``."""

    def __init__(self, teacher: Teacher, cache: AnswerCache, min_label_mass: float = 0.0):
        self.teacher = teacher
        self.cache = cache
        self.min_label_mass = min_label_mass
        self.hits = 0
        self.calls = 0
        """Answers the backend returned, stored or not: what the asking cost. An item the backend
        itself could not answer (``{"error": …}``) is a failure, not an answer."""
        self.stored = 0
        """Of ``calls``, those that passed ``check_answer`` and went into the cache."""
        self.failures: dict[str, str] = {}
        """Cache key → why the backend could not answer it."""

    def _key(self, kind: str, version: str, prompt: Prompt, extra: Any = None) -> str:
        return answer_key(
            teacher=self.teacher.id,
            kind=kind,
            prompt_version=version,
            prompt=asdict(prompt),
            extra=extra,
            decoding=self.teacher.decoding_params(),
        )

    def _answer(
        self,
        kind: str,
        keys: list[str],
        prompts: Sequence[Prompt],
        ask: Callable[[list[Prompt]], Iterator[tuple[int, Answer]]],
        progress: Callable[[int], None] | None,
        n_labels: int = 0,
    ) -> list[Answer]:
        """Per prompt, the answer, or ``{"error": reason}`` for one the backend failed."""
        found = self.cache.get_many(keys)
        # A cached answer must pass today's checks too (a raised min_label_mass, a damaged entry).
        found = {k: a for k, a in found.items() if not check_answer(kind, a, n_labels, self.min_label_mass)}
        hits = sum(k in found for k in keys)
        self.hits += hits
        if progress:
            progress(hits)
        todo: dict[str, Prompt] = {}
        for key, prompt in zip(keys, prompts):
            if key not in found:
                todo.setdefault(key, prompt)
        order = list(todo)
        copies = Counter(keys)
        failed: dict[str, str] = {}
        if order:
            for i, answer in ask([todo[k] for k in order]):
                key = order[i]
                self.calls += not (isinstance(answer, dict) and "error" in answer)
                reason = check_answer(kind, answer, n_labels, self.min_label_mass)
                if reason:
                    failed[key] = reason
                    continue
                self.cache.put_many({key: answer})
                found[key] = answer
                self.stored += 1
                if progress:
                    progress(copies[key])
        for key in order:
            if key not in found and key not in failed:
                failed[key] = "the backend returned no answer"
        self.failures.update(failed)
        return [found[k] if k in found else {"error": failed[k]} for k in keys]

    def label_distribution(
        self,
        prompts: Sequence[Prompt],
        verbalizers: Sequence[str],
        version: str,
        progress: Callable[[int], None] | None = None,
    ) -> list[Answer]:
        keys = [self._key("label", version, p, list(verbalizers)) for p in prompts]
        return self._answer(
            "label",
            keys,
            prompts,
            lambda b: self.teacher.label_distribution(b, verbalizers),
            progress,
            n_labels=len(verbalizers),
        )

    def summarize(
        self, prompts: Sequence[Prompt], version: str, progress: Callable[[int], None] | None = None
    ) -> list[Answer]:
        keys = [self._key("summary", version, p) for p in prompts]
        return self._answer("summary", keys, prompts, self.teacher.summarize, progress)
