"""`distill teach`: the teacher labels every classification example with a class
distribution and summarises every document; answers go through the SQLite cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.assets import home
from distill.cache import AnswerCache
from distill.config import PipelineConfig, TaskConfig
from distill.data import Example, load_split, source_fingerprint, write_jsonl
from distill.manifest import Timer, write_manifest
from distill.prompts import classification_prompt, few_shot_examples, summary_prompt, template_version
from distill.teacher import CachedTeacher, Teacher, load_teacher


def cache_path(cfg: PipelineConfig) -> Path:
    if cfg.teach.cache:
        return Path(cfg.teach.cache).expanduser()
    return Path(os.environ.get("DISTILL_CACHE", home() / "teacher.sqlite"))


def output_path(cfg: PipelineConfig, task: str, split: str) -> Path:
    return cfg.path / "teach" / task / f"{split}.jsonl"


def _label_rows(
    cached: CachedTeacher, task: TaskConfig, examples: list[Example], shots: list[Example], bar: tqdm
) -> list[dict[str, Any]]:
    prompts = [classification_prompt(task, ex, shots) for ex in examples]
    answers = cached.label_distribution(
        prompts, list(task.labels.values()), template_version(task), bar.update
    )
    names = task.label_names
    return [
        {
            **ex,
            "teacher_distribution": a["distribution"],
            "teacher_label": names[max(range(len(names)), key=a["distribution"].__getitem__)],
            "teacher_label_mass": a["label_mass"],
        }
        for ex, a in zip(examples, answers)
    ]


def _summary_rows(
    cached: CachedTeacher, task: TaskConfig, examples: list[Example], bar: tqdm
) -> list[dict[str, Any]]:
    prompts = [summary_prompt(task, ex) for ex in examples]
    answers = cached.summarize(prompts, template_version(task), bar.update)
    return [
        {**ex, "teacher_summary": a["text"], "teacher_finish_reason": a["finish_reason"]}
        for ex, a in zip(examples, answers)
    ]


def run(cfg: PipelineConfig, teacher: Teacher | None = None) -> dict[str, Any]:
    """Label every configured split of every task; returns the manifest's counts."""
    timer = Timer()
    with timer.section("load_data"):
        data = {(t.name, s): load_split(t, s) for t in cfg.tasks for s in cfg.teach.splits}
        shots = {
            t.name: few_shot_examples(
                t, data.get((t.name, "train")) or load_split(t, "train"), cfg.teach.few_shot
            )
            if cfg.teach.few_shot
            else []
            for t in cfg.tasks
            if t.kind == "classification"
        }
    with timer.section("load_teacher"):
        teacher = teacher or load_teacher(cfg.teach.teacher)
    cache = AnswerCache(cache_path(cfg))
    cached = CachedTeacher(teacher, cache, cfg.teach.teacher.batch_size)
    counts: dict[str, dict[str, Any]] = {}
    try:
        for task in cfg.tasks:
            for split in cfg.teach.splits:
                examples = data[task.name, split]
                with (
                    timer.section(f"{task.name}/{split}"),
                    tqdm(total=len(examples), desc=f"teach {task.name}/{split}", unit="item") as bar,
                ):
                    if task.kind == "classification":
                        rows = _label_rows(cached, task, examples, shots[task.name], bar)
                    else:
                        rows = _summary_rows(cached, task, examples, bar)
                write_jsonl(output_path(cfg, task.name, split), rows)
                counts[f"{task.name}/{split}"] = _split_counts(task, rows)
    finally:
        cache.close()
    sources = {f"{t.name}/{s}": t.data[s] for t in cfg.tasks for s in cfg.teach.splits}
    summary = {
        "counts": counts,
        "teacher": {
            "id": teacher.id,
            "parameters": teacher.num_parameters(),
            "decoding": teacher.decoding_params(),
            "few_shot": {name: [ex["id"] for ex in exs] for name, exs in shots.items()},
        },
        "cache": {"path": str(cache.path), "hits": cached.hits, "teacher_calls": cached.calls},
        "inputs": {k: {"source": v, "sha256": source_fingerprint(v)} for k, v in sources.items()},
        "timings_s": timer.seconds,
    }
    write_manifest(cfg.path / "teach", "teach", cfg, **summary)
    return summary


def _split_counts(task: TaskConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task.kind == "classification":
        return {
            "rows": len(rows),
            "with_gold": sum(r["label"] is not None for r in rows),
            "teacher_labels": {name: sum(r["teacher_label"] == name for r in rows) for name in task.labels},
            "mean_label_mass": round(sum(r["teacher_label_mass"] for r in rows) / max(len(rows), 1), 4),
        }
    return {
        "rows": len(rows),
        "with_reference": sum(r["reference"] is not None for r in rows),
        "cut_by_length": sum(r["teacher_finish_reason"] == "length" for r in rows),
        "empty_summaries": sum(not r["teacher_summary"] for r in rows),
    }
