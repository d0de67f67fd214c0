"""`distill teach`: the teacher labels every classification example with a class
distribution and summarises every document; answers go through the SQLite cache. With
``teach.select`` the teacher labels only the train rows a learner chooses (distill/teach/active.py).

An item the teacher could not answer is never written as a label: its split's output is
withheld, the item is listed in ``teach/failures.jsonl`` with the reason, and the run ends
``complete: false``. A rerun asks only for those items (everything else is cached).

Asking in shards across machines (or API keys), and merging their caches: distill/teach/shard.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.core.config import PipelineConfig, TaskConfig
from distill.core.data import Example, read_jsonl, source_fingerprint, write_jsonl
from distill.core.layout import cache_path, failures_path, output_path
from distill.core.manifest import Timer, write_manifest
from distill.eval.metrics.classification import per_class
from distill.tasks import Task, task_for, tasks_for
from distill.teach.active import teach_pool
from distill.teach.audit import least_sure
from distill.teach.cache import AnswerCache
from distill.teach.teachers import load_teacher
from distill.teach.teachers.base import Teacher
from distill.teach.teachers.cached import CachedTeacher


def task_shots(cfg: PipelineConfig, task: TaskConfig, pool: list[Example] | None = None) -> list[Example]:
    """The demonstrations teach shows in every prompt of ``task``; any stage rebuilds the exact
    prompts with them."""
    return task_for(task).shots(cfg, pool)


def audit(cfg: PipelineConfig, task: Task, written: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``teach/<task>/audit.jsonl``: the ``teach.audit_rows`` rows the teacher was least sure of;
    and, where the validation split has gold, the teacher's per-class precision and recall there
    with the classes it gets right less often than the majority-class rate."""
    path = cfg.path / "teach" / task.name / "audit.jsonl"
    path.unlink(missing_ok=True)
    if cfg.teach.audit_rows:
        write_jsonl(path, least_sure(written, cfg.teach.audit_rows))
    record: dict[str, Any] = {"least_sure": str(path) if cfg.teach.audit_rows else None, "validation": None}
    rows = [r for r in written.get("validation", []) if r["label"] is not None]
    if rows:
        names = task.labels
        gold = np.array([names.index(r["label"]) for r in rows])
        pred = np.array([names.index(r["teacher_label"]) for r in rows])
        majority = float(np.bincount(gold, minlength=len(names)).max() / len(gold))
        record["validation"] = {"rows": len(rows), **per_class(names, pred, gold, round(majority, 4))}
    return record


def run(cfg: PipelineConfig, teacher: Teacher | None = None) -> dict[str, Any]:
    """Label every configured split of every task; returns the manifest's summary."""
    timer = Timer()
    tasks = tasks_for(cfg)
    with timer.section("load_data"):
        data, shots = load_examples(cfg, tasks)
    with timer.section("load_teacher"):
        teacher = teacher or load_teacher(cfg.teach.teacher, cfg.path / "teach")
    cache = AnswerCache(cache_path(cfg))
    cached = CachedTeacher(teacher, cache, cfg.teach.teacher.min_label_mass)
    counts: dict[str, dict[str, Any]] = {}
    calibration: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    selected: dict[str, Any] = {}
    audits: dict[str, Any] = {}
    try:
        for task in tasks:
            pseudo: list[dict[str, Any]] = []
            written: dict[str, list[dict[str, Any]]] = {}
            with timer.section(task.name):
                examples = {split: data[task.name, split] for split in task.taught_splits(cfg)}
                if cfg.teach.select.active and task.selectable and "train" in examples:
                    answers, fitted, examples["train"], pseudo, selected[task.name] = teach_pool(
                        task, cached, cfg, examples, shots[task.name]
                    )
                else:
                    answers, fitted = task.teach(cached, cfg, examples, shots[task.name])
                if fitted:
                    calibration[task.name] = fitted
            for split, got in answers.items():
                failed = [
                    {"task": task.name, "split": split, "id": ex["id"], "reason": a["error"]}
                    for ex, a in zip(examples[split], got)
                    if "error" in a
                ]
                path = output_path(cfg, task.name, split)
                if failed:  # never a partial split: train would silently learn from fewer rows
                    failures += failed
                    path.unlink(missing_ok=True)
                    counts[f"{task.name}/{split}"] = {"rows": len(got), "failed": len(failed)}
                    continue
                rows = task.output_rows(examples[split], got, fitted)
                rationales = task.rationales(cached, cfg, split, rows)
                if split == "train":
                    rows += pseudo  # marked teacher_method: pseudo_label
                write_jsonl(path, rows)
                counts[f"{task.name}/{split}"] = task.split_counts(rows)
                if rationales is not None:
                    counts[f"{task.name}/{split}"]["rationales"] = rationales
                written[split] = rows
            if task.selectable and written:
                audits[task.name] = audit(cfg, task, written)
    finally:
        cache.close()
    if failures:
        write_jsonl(failures_path(cfg), failures)
    else:
        failures_path(cfg).unlink(missing_ok=True)
    sources = {f"{t.name}/{s}": t.cfg.data[s] for t in tasks for s in t.taught_splits(cfg)}
    sources |= {f"{t.name}/traffic": t.cfg.traffic for t in tasks if t.cfg.traffic}
    summary = {
        "complete": not failures,
        "failures": len(failures),
        "counts": counts,
        "teacher": {
            "id": teacher.id,
            "parameters": teacher.num_parameters(),
            "decoding": teacher.decoding_params(),
            "few_shot": {
                "split": cfg.teach.few_shot_split,
                "ids": {name: [ex["id"] for ex in exs] for name, exs in shots.items() if exs},
            },
            "min_label_mass": cfg.teach.teacher.min_label_mass,
            "calibration": calibration,
            "usage": teacher.usage(),
        },
        "cache": {
            "path": str(cache.path),
            "hits": cached.hits,
            "teacher_calls": cached.calls,  # answers received, stored or not
            "stored": cached.stored,
        },
        "select": selected or None,
        "audit": audits,
        "inputs": {k: {"source": v, "sha256": source_fingerprint(v)} for k, v in sources.items()},
    }
    write_manifest(cfg.path / "teach", "teach", cfg, timer, **summary)
    return summary


def load_examples(
    cfg: PipelineConfig, tasks: list[Task]
) -> tuple[dict[tuple[str, str], list[Example]], dict[str, list[Example]]]:
    """(task, split) → the examples the teacher answers, and task → its demonstrations."""
    data = {(t.name, s): t.load_split(s) for t in tasks for s in t.taught_splits(cfg)}
    shots = {t.name: t.shots(cfg, data.get((t.name, cfg.teach.few_shot_split))) for t in tasks}
    for task in tasks:
        _leave_out_shots(data, task.name, cfg.teach.few_shot_split, shots[task.name])
    return data, shots


def _leave_out_shots(
    data: dict[tuple[str, str], list[Example]], task: str, split: str, shots: list[Example]
) -> None:
    """Rows shown as demonstrations leave their split: the teacher saw their gold label."""
    shown = {ex["id"] for ex in shots}
    if shown and (task, split) in data:
        data[task, split] = [ex for ex in data[task, split] if ex["id"] not in shown]


def failed_items(cfg: PipelineConfig) -> list[dict[str, Any]]:
    path = failures_path(cfg)
    return read_jsonl(path) if path.is_file() else []
