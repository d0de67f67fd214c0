"""`distill teach`: the teacher labels every classification example with a class
distribution and summarises every document; answers go through the SQLite cache.

An item the teacher could not answer is never written as a label: its split's output is
withheld, the item is listed in ``teach/failures.jsonl`` with the reason, and the run ends
``complete: false``. A rerun asks only for those items (everything else is cached).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill.assets import home
from distill.cache import AnswerCache
from distill.calibration import CONTENT_FREE_INPUTS, calibrate, fit_temperature, nll
from distill.config import PipelineConfig, TaskConfig
from distill.data import Example, load_split, read_jsonl, source_fingerprint, write_jsonl
from distill.errors import DistillError
from distill.manifest import Timer, sha256_files, write_manifest
from distill.prompts import classification_prompt, few_shot_examples, summary_prompt, template_version
from distill.teacher import Answer, CachedTeacher, Teacher, load_teacher


def cache_path(cfg: PipelineConfig) -> Path:
    if cfg.teach.cache:
        return Path(cfg.teach.cache).expanduser()
    return Path(os.environ.get("DISTILL_CACHE", home() / "teacher.sqlite"))


def output_path(cfg: PipelineConfig, task: str, split: str) -> Path:
    return cfg.path / "teach" / task / f"{split}.jsonl"


def outputs_sha256(cfg: PipelineConfig, split: str) -> str:
    """One hash over every task's teach output for ``split``: what a student was trained on
    (split "train"), recorded by train and checked by eval."""
    return sha256_files([output_path(cfg, t.name, split) for t in cfg.tasks])


def failures_path(cfg: PipelineConfig) -> Path:
    return cfg.path / "teach" / "failures.jsonl"


def _splits(cfg: PipelineConfig, task: TaskConfig) -> list[str]:
    """teach.splits, plus the calibration dev split for classification tasks that fit a temperature."""
    splits = list(cfg.teach.splits)
    cal = cfg.teach.calibration
    if task.kind == "classification" and cal.temperature and cal.split not in splits:
        splits.append(cal.split)
    return splits


def _ask_splits(
    cfg: PipelineConfig,
    task: TaskConfig,
    data: dict[tuple[str, str], list[Example]],
    ask: Callable[[list[Example], Callable[[int], None]], list[Answer]],
) -> dict[str, list[Answer]]:
    """Split → the teacher's answers for its examples, with a progress bar per split."""
    answers = {}
    for split in _splits(cfg, task):
        examples = data[task.name, split]
        with tqdm(total=len(examples), desc=f"teach {task.name}/{split}", unit="item") as bar:
            answers[split] = ask(examples, bar.update)
    return answers


def task_shots(cfg: PipelineConfig, task: TaskConfig, pool: list[Example] | None = None) -> list[Example]:
    """The demonstrations teach shows in every classification prompt of ``task`` (from
    ``teach.few_shot_split``); any stage rebuilds the exact prompts with them."""
    if task.kind != "classification" or not cfg.teach.few_shot:
        return []
    if pool is None:
        pool = load_split(task, cfg.teach.few_shot_split)
    return few_shot_examples(task, pool, cfg.teach.few_shot)


def _fit_calibration(
    cached: CachedTeacher,
    cfg: PipelineConfig,
    task: TaskConfig,
    answers: dict[str, list[Answer]],
    examples: dict[str, list[Example]],
    shots: list[Example],
) -> dict[str, Any]:
    """The prior and temperature for this task, from raw (uncalibrated) answers."""
    cal = cfg.teach.calibration
    fitted: dict[str, Any] = {"prior": None, "prior_source": cal.prior, "temperature": None}
    if cal.prior == "content_free":
        blanks = [
            {"id": f"content-free-{i}", "text": t, "text_pair": None}
            for i, t in enumerate(CONTENT_FREE_INPUTS)
        ]
        if task.text_pair_field:
            blanks = [{**b, "text_pair": b["text"]} for b in blanks]
        # The exact prompt real rows get, demonstrations included (Zhao et al. 2021): the prior
        # being divided out is the one this prompt induces.
        got = cached.label_distribution(
            [classification_prompt(task, b, shots) for b in blanks],
            list(task.labels.values()),
            template_version(task),
        )
        good = [a["distribution"] for a in got if "error" not in a]
        if not good:
            raise DistillError(
                f"teach.calibration: the content-free inputs got no answer ({got[0]['error']})"
            )
        fitted["prior"] = np.mean(good, axis=0).tolist()
    elif cal.prior == "pool_mean":
        good = [a["distribution"] for a in answers["train"] if "error" not in a]
        fitted["prior"] = np.mean(good, axis=0).tolist()
    if cal.temperature:
        names = task.label_names
        pairs = [
            (a["distribution"], names.index(ex["label"]))
            for a, ex in zip(answers[cal.split], examples[cal.split])
            if "error" not in a and ex["label"] is not None
        ]
        if len(pairs) < 10:
            raise DistillError(
                f"teach.calibration: task {task.name} has {len(pairs)} gold-labeled {cal.split} answers; "
                "fitting a temperature needs at least 10"
            )
        dists = calibrate(np.array([p[0] for p in pairs]), fitted["prior"], None)
        gold = np.array([p[1] for p in pairs])
        fitted["temperature"] = fit_temperature(dists, gold)
        tau = fitted["temperature"]
        if not 0.051 < tau < 19.9:
            print(
                f"teach: warning: task {task.name}: the fitted temperature {tau:.3g} "
                "sits at the search bound: its answers say little about the gold labels",
                file=sys.stderr,
            )
        fitted["dev_nll"] = {
            "before": round(nll(dists, gold), 4),
            "after": round(nll(calibrate(dists, None, fitted["temperature"]), gold), 4),
            "rows": len(pairs),
        }
    return fitted


def _label_task(
    cached: CachedTeacher, cfg: PipelineConfig, task: TaskConfig, data, shots: list[Example]
) -> tuple[dict[str, list[Answer]], dict[str, Any] | None]:
    verbalizers = list(task.labels.values())
    answers = _ask_splits(
        cfg,
        task,
        data,
        lambda examples, progress: cached.label_distribution(
            [classification_prompt(task, ex, shots) for ex in examples],
            verbalizers,
            template_version(task),
            progress,
        ),
    )
    cal = cfg.teach.calibration
    if cal.prior == "none" and not cal.temperature:
        return answers, None
    examples = {s: data[task.name, s] for s in answers}
    fitted = _fit_calibration(cached, cfg, task, answers, examples, shots)
    return answers, fitted


def _summary_task(
    cached: CachedTeacher, cfg: PipelineConfig, task: TaskConfig, data
) -> dict[str, list[Answer]]:
    return _ask_splits(
        cfg,
        task,
        data,
        lambda examples, progress: cached.summarize(
            [summary_prompt(task, ex) for ex in examples], template_version(task), progress
        ),
    )


def _label_rows(
    task: TaskConfig, examples: list[Example], answers: list[Answer], fitted
) -> list[dict[str, Any]]:
    names = task.label_names
    raw = np.array([a["distribution"] for a in answers])
    dists = calibrate(raw, fitted["prior"], fitted["temperature"]) if fitted else raw
    rows = []
    for ex, a, dist, raw_dist in zip(examples, answers, dists.tolist(), raw.tolist()):
        row = {
            **ex,
            "teacher_distribution": dist,
            "teacher_label": names[max(range(len(names)), key=dist.__getitem__)],
            "teacher_label_mass": a["label_mass"],
            "teacher_method": a.get("method", "verbalizer_logits"),
        }
        if fitted:
            row["teacher_distribution_raw"] = raw_dist
        rows.append(row)
    return rows


def _summary_rows(examples: list[Example], answers: list[Answer]) -> list[dict[str, Any]]:
    return [
        {**ex, "teacher_summary": a["text"], "teacher_finish_reason": a["finish_reason"]}
        for ex, a in zip(examples, answers)
    ]


def run(cfg: PipelineConfig, teacher: Teacher | None = None) -> dict[str, Any]:
    """Label every configured split of every task; returns the manifest's summary."""
    timer = Timer()
    with timer.section("load_data"):
        data = {(t.name, s): load_split(t, s) for t in cfg.tasks for s in _splits(cfg, t)}
        shots = {t.name: task_shots(cfg, t, data.get((t.name, cfg.teach.few_shot_split))) for t in cfg.tasks}
        for task in cfg.tasks:
            _leave_out_shots(data, task.name, cfg.teach.few_shot_split, shots[task.name])
    with timer.section("load_teacher"):
        teacher = teacher or load_teacher(cfg.teach.teacher, cfg.path / "teach")
    cache = AnswerCache(cache_path(cfg))
    cached = CachedTeacher(teacher, cache, cfg.teach.teacher.min_label_mass)
    counts: dict[str, dict[str, Any]] = {}
    calibration: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    try:
        for task in cfg.tasks:
            with timer.section(task.name):
                if task.kind == "classification":
                    answers, fitted = _label_task(cached, cfg, task, data, shots[task.name])
                    if fitted:
                        calibration[task.name] = fitted
                else:
                    answers = _summary_task(cached, cfg, task, data)
            for split, got in answers.items():
                examples = data[task.name, split]
                failed = [
                    {"task": task.name, "split": split, "id": ex["id"], "reason": a["error"]}
                    for ex, a in zip(examples, got)
                    if "error" in a
                ]
                path = output_path(cfg, task.name, split)
                if failed:  # never a partial split: train would silently learn from fewer rows
                    failures += failed
                    path.unlink(missing_ok=True)
                    counts[f"{task.name}/{split}"] = {"rows": len(examples), "failed": len(failed)}
                    continue
                if task.kind == "classification":
                    rows = _label_rows(task, examples, got, calibration.get(task.name))
                else:
                    rows = _summary_rows(examples, got)
                write_jsonl(path, rows)
                counts[f"{task.name}/{split}"] = _split_counts(task, rows)
    finally:
        cache.close()
    if failures:
        write_jsonl(failures_path(cfg), failures)
    else:
        failures_path(cfg).unlink(missing_ok=True)
    sources = {f"{t.name}/{s}": t.data[s] for t in cfg.tasks for s in _splits(cfg, t)}
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
        "cache": {"path": str(cache.path), "hits": cached.hits, "teacher_calls": cached.calls},
        "inputs": {k: {"source": v, "sha256": source_fingerprint(v)} for k, v in sources.items()},
    }
    write_manifest(cfg.path / "teach", "teach", cfg, timer, **summary)
    return summary


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


def _split_counts(task: TaskConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task.kind == "classification":
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["teacher_method"]] = methods.get(r["teacher_method"], 0) + 1
        return {
            "rows": len(rows),
            "with_gold": sum(r["label"] is not None for r in rows),
            "teacher_labels": {name: sum(r["teacher_label"] == name for r in rows) for name in task.labels},
            "mean_label_mass": round(sum(r["teacher_label_mass"] for r in rows) / max(len(rows), 1), 4),
            "methods": methods,
        }
    return {
        "rows": len(rows),
        "with_reference": sum(r["reference"] is not None for r in rows),
        "cut_by_length": sum(r["teacher_finish_reason"] == "length" for r in rows),
        "empty_summaries": sum(not r["teacher_summary"] for r in rows),
    }
