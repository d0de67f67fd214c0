"""`distill teach --shard i/N` and `--merge`: the asking split across machines (or API keys).

``run_shard``: shard i of N asks only for the answers whose cache key falls in shard i, into its
own cache file, and writes no teach output; ``merge`` folds the shard caches into the main cache,
after which ``distill.teach.run.run`` asks nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.core.layout import cache_path
from distill.tasks import tasks_for
from distill.teach.cache import AnswerCache, LayeredCache, shard_of
from distill.teach.cache import merge as merge_caches
from distill.teach.prompts import Prompt
from distill.teach.run import load_examples
from distill.teach.teachers import load_teacher
from distill.teach.teachers.base import Answer, Teacher
from distill.teach.teachers.cached import CachedTeacher

Shard = tuple[int, int]
"""(i, N): the i-th of N disjoint shards, 0 ≤ i < N."""


def parse_shard(text: str) -> Shard:
    """``"i/N"`` (the CLI's ``--shard``) → (i, N); DistillError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise DistillError(f"--shard {text!r}: expected i/N, e.g. 0/4 (shards are numbered 0 … N-1)")
    return check_shard((int(match[1]), int(match[2])))


def check_shard(shard: Shard) -> Shard:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise DistillError(
            f"--shard {index}/{count}: needs N ≥ 1 and 0 ≤ i < N (shards are numbered 0 … N-1)"
        )
    return index, count


def shard_cache_path(cfg: PipelineConfig, shard: Shard) -> Path:
    """Shard i of N's own cache: the main cache's name with ``.shard-i-of-N`` before the suffix."""
    main = cache_path(cfg)
    index, count = check_shard(shard)
    return main.with_name(f"{main.stem}.shard-{index}-of-{count}{main.suffix}")


def _shard_name(main: Path) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(main.stem)}\.shard-(\d+)-of-(\d+){re.escape(main.suffix)}")


def shard_caches(cfg: PipelineConfig) -> list[Path]:
    """The shard caches beside the main cache (default names), by N, then i."""
    main = cache_path(cfg)
    name = _shard_name(main)
    if not main.parent.is_dir():
        return []
    found = {}
    for path in main.parent.iterdir():
        if (match := name.fullmatch(path.name)) and path.is_file():
            found[int(match[2]), int(match[1])] = path
    return [found[n_i] for n_i in sorted(found)]


class ShardTeacher(CachedTeacher):
    """A CachedTeacher that asks only for its shard's keys.

    Every other key gets a stand-in (a uniform distribution, an empty summary) that is neither
    cached nor written anywhere: it lets a task's ``teach`` run to its end unchanged, so the
    shard asks for every prompt a full run would (calibration's content-free prompts included),
    except other shards' ones. Whatever the task fits on stand-ins is thrown away.
    """

    def __init__(
        self, teacher: Teacher, cache: AnswerCache | LayeredCache, min_label_mass: float, shard: Shard
    ):
        super().__init__(teacher, cache, min_label_mass)  # type: ignore[arg-type]  # same get/put API
        self.shard = check_shard(shard)
        self.other_shards = 0
        """Items left to the other shards."""

    def _answer(
        self,
        kind: str,
        keys: list[str],
        prompts: Sequence[Prompt],
        ask: Callable[[list[Prompt]], Iterator[tuple[int, Answer]]],
        progress: Callable[[int], None] | None,
        n_labels: int = 0,
    ) -> list[Answer]:
        index, count = self.shard
        mine = [i for i, key in enumerate(keys) if shard_of(key, count) == index]
        got = super()._answer(
            kind, [keys[i] for i in mine], [prompts[i] for i in mine], ask, progress, n_labels
        )
        answers = [_stand_in(kind, n_labels) for _ in keys]
        for i, answer in zip(mine, got):
            answers[i] = answer
        self.other_shards += len(keys) - len(mine)
        if progress:
            progress(len(keys) - len(mine))
        return answers


def _stand_in(kind: str, n_labels: int) -> Answer:
    if kind == "summary":
        return {"text": "", "finish_reason": "stop", "method": "other_shard"}
    return {"distribution": [1.0 / n_labels] * n_labels, "label_mass": 1.0, "method": "other_shard"}


def run_shard(
    cfg: PipelineConfig, shard: Shard, teacher: Teacher | None = None, cache: str | Path | None = None
) -> dict[str, Any]:
    """Ask the teacher for shard ``shard`` = (i, N) of every task's taught splits, into ``cache``
    (default ``shard_cache_path``); returns the counts. Writes no teach output (it would be
    partial): ``merge`` the shards, then ``run`` writes them with no teacher call.

    The shard also reads the main cache, if there is one, and skips what it holds. A budget
    (teach.teacher.max_cost, max_requests) applies to this shard alone.
    """
    index, count = check_shard(shard)
    tasks = tasks_for(cfg)
    data, shots = load_examples(cfg, tasks)
    # Its own batch-job folder: shards of one run folder never collect each other's jobs.
    teacher = teacher or load_teacher(cfg.teach.teacher, cfg.path / "teach" / f"shard-{index}-of-{count}")
    path = Path(cache).expanduser() if cache else shard_cache_path(cfg, shard)
    store = _shard_store(path, cache_path(cfg))
    cached = ShardTeacher(teacher, store, cfg.teach.teacher.min_label_mass, shard)
    failures: list[dict[str, Any]] = []
    try:
        for task in tasks:
            examples = {split: data[task.name, split] for split in task.taught_splits(cfg)}
            answers, _ = task.teach(cached, cfg, examples, shots[task.name])
            failures += [
                {"task": task.name, "split": split, "id": ex["id"], "reason": a["error"]}
                for split, got in answers.items()
                for ex, a in zip(examples[split], got)
                if "error" in a
            ]
    finally:
        store.close()
    return {
        "shard": f"{index}/{count}",
        "complete": not cached.failures,
        "failures": failures,
        "failed": len(cached.failures),  # distinct prompts, content-free ones included
        "teacher": {"id": teacher.id, "usage": teacher.usage()},
        "cache": {
            "path": str(path),
            "also_read": str(store.also_read.path) if isinstance(store, LayeredCache) else None,
            "hits": cached.hits,
            "teacher_calls": cached.calls,
            "stored": cached.stored,
            "other_shards": cached.other_shards,
        },
    }


def _shard_store(path: Path, main: Path) -> AnswerCache | LayeredCache:
    own = AnswerCache(path)
    if not main.is_file() or main.resolve() == path.resolve():
        return own
    try:
        return LayeredCache(own, AnswerCache(main))
    except DistillError:
        own.close()
        raise


def merge(cfg: PipelineConfig, sources: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Fold shard caches (default: every ``shard_caches``) into the main cache; ``cache.merge``'s
    counts, plus ``missing_shards``: N → the shard numbers of i/N not among the sources (by
    their default names), so a merge before every shard is back says so."""
    main = cache_path(cfg)
    paths = [Path(s).expanduser() for s in sources] or shard_caches(cfg)
    if not paths:
        raise DistillError(
            f"no shard caches beside {main} (named {main.stem}.shard-<i>-of-<N>{main.suffix}); "
            "run `distill teach --shard i/N` first, or name the files to merge"
        )
    summary = merge_caches(paths, main)
    name = _shard_name(main)
    seen: dict[int, set[int]] = {}
    for p in paths:
        if m := name.fullmatch(p.name):
            seen.setdefault(int(m[2]), set()).add(int(m[1]))
    summary["missing_shards"] = {n: sorted(set(range(n)) - got) for n, got in seen.items() if len(got) < n}
    return summary
