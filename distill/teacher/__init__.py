"""The teacher interface, and the answer cache wrapped around any backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from distill.cache import AnswerCache, answer_key
from distill.config import TeacherConfig
from distill.prompts import Prompt


class Teacher(Protocol):
    """A backend: label a batch → class distributions; summarise a batch → texts."""

    id: str
    """Names the model and its weights; part of every cache key."""

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per prompt: {"distribution": [p per verbalizer, sums to 1], "label_mass": float}."""
        ...

    def summarize(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        """Per prompt: {"text": str, "finish_reason": "stop" | "length"}."""
        ...

    def decoding_params(self) -> dict[str, Any]:
        """Every setting that changes an answer; part of every cache key."""
        ...

    def num_parameters(self) -> int | None: ...


def load_teacher(cfg: TeacherConfig) -> Teacher:
    from distill.teacher.local import LocalTeacher

    return LocalTeacher(cfg)


class CachedTeacher:
    """Answers from the cache where it can; asks the backend only for misses, in
    length-sorted batches (less padding), committing each batch as it completes."""

    def __init__(self, teacher: Teacher, cache: AnswerCache, batch_size: int):
        self.teacher = teacher
        self.cache = cache
        self.batch_size = batch_size
        self.hits = 0
        self.calls = 0

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
        keys: list[str],
        prompts: Sequence[Prompt],
        ask: Callable[[list[Prompt]], list[dict[str, Any]]],
        progress: Callable[[int], None] | None,
    ) -> list[dict[str, Any]]:
        found = self.cache.get_many(keys)
        cached = sum(k in found for k in keys)
        self.hits += cached
        if progress:
            progress(cached)
        todo: dict[str, Prompt] = {}
        for key, prompt in zip(keys, prompts):
            if key not in found:
                todo.setdefault(key, prompt)
        order = sorted(todo, key=lambda k: len(todo[k].user))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            answers = ask([todo[k] for k in batch])
            self.calls += len(batch)
            fresh = dict(zip(batch, answers))
            self.cache.put_many(fresh)
            found.update(fresh)
            if progress:
                progress(sum(1 for k in keys if k in fresh))
        return [found[k] for k in keys]

    def label_distribution(
        self,
        prompts: Sequence[Prompt],
        verbalizers: Sequence[str],
        version: str,
        progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        keys = [self._key("label", version, p, list(verbalizers)) for p in prompts]
        return self._answer(
            keys, prompts, lambda b: self.teacher.label_distribution(b, verbalizers), progress
        )

    def summarize(
        self, prompts: Sequence[Prompt], version: str, progress: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        keys = [self._key("summary", version, p) for p in prompts]
        return self._answer(keys, prompts, self.teacher.summarize, progress)
