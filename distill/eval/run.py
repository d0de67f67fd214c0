"""`distill eval`: student vs teacher vs gold on the held-out split, with 95% bootstrap
intervals and a majority-class baseline, and both models' speed measured in the same run on
the same device. Writes report.json, report.md, report.html (with plots) and rows.json (the
student's per-row scores)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.config import PipelineConfig
from distill.core.data import read_jsonl
from distill.core.devices import eval_device
from distill.core.errors import DistillError
from distill.core.layout import WEIGHTS_FILE, output_path, outputs_sha256
from distill.core.manifest import Timer, latency_percentiles, sha256_files, write_manifest
from distill.eval.report.markdown import html, markdown
from distill.eval.stats import bootstrap_indices
from distill.student.model import Student, load_student
from distill.tasks import Task, tasks_for

WARMUP_BATCHES = 2
MIN_P95_SAMPLES = 20


def warn(message: str) -> None:
    print(f"eval: warning: {message}", file=sys.stderr)


def time_slice(
    fn: Callable[[Sequence[Any]], Any],
    items: list[Any],
    batch: int,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Speed of ``fn`` within ``budget_s`` seconds of ``clock``: up to WARMUP_BATCHES untimed
    batches (fewer once they have used a quarter of the budget), then batched calls for half of
    what is left (items/s), then single-item calls (latency). Each phase runs at least once, so a
    model slower than its slice overruns it by those calls alone. Items cycle, so the budget, not
    the number of rows, decides how much is measured."""
    start_at = clock()
    deadline = start_at + budget_s
    stream = itertools.cycle(items)
    warmups = 0
    # First calls allocate and compile: not the steady state.
    while warmups < WARMUP_BATCHES and (not warmups or clock() - start_at < budget_s / 4):
        fn([next(stream) for _ in range(batch)])
        warmups += 1
    batched_until = clock() + (deadline - clock()) / 2
    done, busy = 0, 0.0
    while not done or clock() < batched_until:
        chunk = [next(stream) for _ in range(batch)]
        start = clock()
        fn(chunk)
        busy += clock() - start
        done += len(chunk)
    latencies: list[float] = []
    while not latencies or clock() < deadline:
        start = clock()
        fn([next(stream)])
        latencies.append((clock() - start) * 1000)
    result: dict[str, Any] = {
        "batch_size": batch,
        "budget_s": round(budget_s, 3),
        "warmup_batches": warmups,
        "batched_items": done,
        "batched_s": round(busy, 3),
        "items_per_s": round(done / busy, 2),
        "latency_samples": len(latencies),
        **latency_percentiles(latencies),
    }
    if len(latencies) < MIN_P95_SAMPLES:
        result["latency_p95_ms"] = None
        result["latency_p95_note"] = (
            f"{len(latencies)} single-item calls fit the budget; p95 needs at least {MIN_P95_SAMPLES}"
        )
    return result


def measure_speed(
    cfg: PipelineConfig,
    test: dict[str, list[dict[str, Any]]],
    student: Student,
    tokenizer: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Both models on ``device``, in batches of eval.speed_batch_size, each (model, task) pair for
    an equal share of eval.speed_budget_s. An API teacher is not timed here (that would be paid
    for): its request latency and usage come from the teach manifest instead."""
    from distill.teach.teachers import load_teacher

    ec = cfg.eval
    teacher = None
    if cfg.teach.teacher.backend != "openai":
        same = dataclasses.replace(cfg.teach.teacher, batch_size=ec.speed_batch_size, device=device.type)
        teacher = load_teacher(same)
    pairs = len(cfg.tasks) * (2 if teacher else 1)  # (model, task) pairs sharing the budget
    speed: dict[str, Any] = {"student": {}, "teacher": {}}
    for task in tasks_for(cfg):
        for who, (fn, items) in task.timed_calls(cfg, test[task.name], student, tokenizer, teacher).items():
            timed = time_slice(fn, items, ec.speed_batch_size, ec.speed_budget_s / pairs)
            speed[who][task.name] = {"device": str(device), **timed}
    speed["teacher_parameters"] = teacher.num_parameters() if teacher else None
    return speed


def student_provenance(cfg: PipelineConfig, student: Student, student_dir: Path) -> dict[str, Any]:
    """The loaded weights' hash and the student's training record; refuses a student trained on
    other teach outputs than the run folder holds now (unless eval.allow_stale_student)."""
    training = student.spec.training
    recorded = (training or {}).get("teach_outputs_sha256")
    try:
        current = outputs_sha256(cfg, "train")
    except FileNotFoundError as e:
        raise DistillError(
            f"eval: the teach train output {e.filename} is missing; run `distill teach`"
        ) from None
    provenance = {
        "weights_sha256": sha256_files([student_dir / WEIGHTS_FILE]),
        "training": training,
        "teach_outputs_sha256_now": current,
        "stale": recorded is not None and recorded != current,
    }
    if recorded is None:
        warn(
            f"the student in {student_dir} records no training provenance (an older `distill train`); "
            "cannot check it was trained on this run's teach outputs"
        )
    elif provenance["stale"]:
        message = (
            f"the student in {student_dir} was trained on teach outputs sha256 {recorded}, but "
            f"{cfg.path / 'teach'} now holds train outputs sha256 {current}"
        )
        if not cfg.eval.allow_stale_student:
            raise DistillError(f"{message}; rerun `distill train` or set eval.allow_stale_student: true")
        warn(message)
    return provenance


def baseline_warnings(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, m in report["tasks"].items():
        base = m.get("majority_baseline")
        for who in ("teacher", "student"):
            if "student" in m and m[who]["at_or_below_majority"]:
                lines.append(
                    f"{name}: the {who}'s accuracy {m[who]['accuracy']:.3f} is at or below the "
                    f"majority-class baseline {base['accuracy']:.3f} (always {base['label']!r})"
                )
    return lines


def task_report(
    cfg: PipelineConfig, task: Task, rows: list[dict[str, Any]], student: Student, tokenizer: Any
) -> dict:
    """One task's quality figures, each with its bootstrap interval over the eval rows."""
    ec = cfg.eval
    if not rows:
        raise DistillError(f"task {task.name}: the teacher's {ec.split} output is empty")
    resamples = bootstrap_indices(len(rows), ec.bootstrap_resamples, ec.bootstrap_seed)  # (R, n)
    section, scores = task.evaluate(cfg, rows, student, tokenizer, resamples)
    return section, row_record(task, rows, scores)


def row_record(task: Task, rows: list[dict[str, Any]], scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """A task's per-row student scores as eval writes them (``eval/rows.json``): what a later
    run's promotion compares against, row by row."""
    return {
        "headline": task.headline,
        "ids": [r["id"] for r in rows],
        "scores": {k: [None if v != v else float(v) for v in values] for k, values in scores.items()},
    }


def models_section(cfg: PipelineConfig, student: Student, student_dir: Path, speed: dict[str, Any]) -> dict:
    student_params = sum(p.numel() for p in student.parameters())
    teacher_params = speed["teacher_parameters"]
    models: dict[str, Any] = {
        "student": {
            "parameters": student_params,
            "disk_mb": round(sum(f.stat().st_size for f in student_dir.iterdir()) / 2**20, 1),
            "speed": speed["student"],
        },
        "teacher": {"parameters": teacher_params, "speed": speed["teacher"]},
        "compression": round(teacher_params / student_params, 2) if teacher_params else None,
    }
    teach_manifest = cfg.path / "teach" / "manifest.json"
    if cfg.teach.teacher.backend == "openai" and teach_manifest.is_file():
        models["teacher"]["api_usage"] = json.loads(teach_manifest.read_text())["teacher"]["usage"]
    return models


def run(cfg: PipelineConfig) -> dict[str, Any]:
    timer = Timer()
    student_dir = cfg.path / "train" / "student"
    ec = cfg.eval
    with timer.section("load"):
        student, tokenizer = load_student(student_dir)
        provenance = student_provenance(cfg, student, student_dir)
        device = eval_device(ec.device)
        student.to(device)
        torch.set_grad_enabled(False)
        test = {t.name: read_jsonl(output_path(cfg, t.name, ec.split)) for t in cfg.tasks}
    report: dict[str, Any] = {
        "split": ec.split,
        "student_training": {
            "hard_labels": (provenance["training"] or {}).get("hard_labels") or "unknown",
            "stale": provenance["stale"],
        },
        "bootstrap": {
            "resamples": ec.bootstrap_resamples,
            "seed": ec.bootstrap_seed,
            "interval": "95% percentile",
        },
        "tasks": {},
    }
    per_row = {}
    for task in tasks_for(cfg):
        with timer.section(f"quality/{task.name}"):
            report["tasks"][task.name], per_row[task.name] = task_report(
                cfg, task, test[task.name], student, tokenizer
            )
    report["warnings"] = baseline_warnings(report)
    for line in report["warnings"]:
        warn(line)
    with timer.section("speed"):
        speed = measure_speed(cfg, test, student, tokenizer, device)
    report["models"] = models_section(cfg, student, student_dir, speed)
    report["gates"] = check_gates(report, ec.gates)
    out = cfg.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "rows.json").write_text(json.dumps(per_row) + "\n")
    (out / "report.md").write_text(markdown(report))
    log = cfg.path / "train" / "log.jsonl"
    train_log = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else None
    (out / "report.html").write_text(html(report, train_log))
    write_manifest(out, "eval", cfg, timer, gates=report["gates"], student=provenance)
    return report


def lookup(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report["tasks"] if dotted.split(".")[0] in report["tasks"] else report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise DistillError(f"eval.gates: {dotted!r} is not in the report")
        node = node[key]
    return node


def check_gates(report: dict[str, Any], gates: dict[str, float]) -> dict[str, Any]:
    results = {}
    for path, minimum in gates.items():
        value = lookup(report, path)
        results[path] = {"value": value, "min": minimum, "passed": bool(value >= minimum)}
    return results
