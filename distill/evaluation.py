"""`distill eval`: student vs teacher vs gold on the held-out split, with 95% bootstrap
intervals and a majority-class baseline, and both models' speed measured in the same run on
the same device. Writes report.json and report.md."""

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

from distill.batches import encode_documents, length_mask, pad, tokenize_classification
from distill.config import PipelineConfig, TaskConfig
from distill.data import read_jsonl
from distill.errors import DistillError
from distill.manifest import Timer, latency_percentiles, sha256_files, write_manifest
from distill.prompts import classification_prompt, summary_prompt
from distill.report import markdown
from distill.stats import bootstrap_indices, classification_metrics, summary_metrics
from distill.student import WEIGHTS_FILE, Student, load_student
from distill.teach import output_path, outputs_sha256, task_shots

WARMUP_BATCHES = 2
MIN_P95_SAMPLES = 20


def warn(message: str) -> None:
    print(f"eval: warning: {message}", file=sys.stderr)


@torch.inference_mode()
def student_probs(
    student: Student, tokenizer: Any, task: str, rows: list[dict[str, Any]], batch: int
) -> np.ndarray:
    """(n, labels) class probabilities, computed on the student's device, from the same inputs
    training saw (segment ids for sentence pairs, a mask from the lengths)."""
    encoded = tokenize_classification(rows, tokenizer, student.spec.max_length)
    ids, segments = encoded["input_ids"], encoded.get("token_type_ids")
    device = next(student.parameters()).device
    out = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        x = pad(chunk, tokenizer.pad_token_id).to(device)
        types = pad(segments[start : start + batch], 0).to(device) if segments else None
        logits = student.classify(task, x, length_mask(chunk).to(device), types)
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out).numpy()


def student_summaries(
    student: Student, tokenizer: Any, rows: list[dict[str, Any]], batch: int, max_new: int
) -> list[str]:
    ids = encode_documents(rows, tokenizer, student.spec.max_document_length)
    device = next(student.parameters()).device
    texts: list[str] = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        x = pad(chunk, tokenizer.pad_token_id).to(device)
        out = student.summarize(x, length_mask(chunk).to(device), max_new)
        texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return texts


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


def eval_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DistillError("eval.device: cuda, but no CUDA device is visible")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _timed_calls(
    cfg: PipelineConfig,
    task: TaskConfig,
    rows: list[dict[str, Any]],
    student: Student,
    tokenizer: Any,
    teacher: Any,
) -> dict[str, tuple[Callable[[Sequence[Any]], Any], list[Any]]]:
    """Model → (call on a list of items, the items), with the prompts teach really sent."""
    calls: dict[str, tuple[Callable[[Sequence[Any]], Any], list[Any]]] = {}
    if task.kind == "classification":
        calls["student"] = (lambda b: student_probs(student, tokenizer, task.name, list(b), len(b)), rows)
        if teacher is not None:
            shots, verbalizers = task_shots(cfg, task), list(task.labels.values())
            prompts = [classification_prompt(task, r, shots) for r in rows]
            calls["teacher"] = (lambda b: list(teacher.label_distribution(b, verbalizers)), prompts)
    else:
        calls["student"] = (
            lambda b: student_summaries(student, tokenizer, list(b), len(b), cfg.eval.max_new_tokens),
            rows,
        )
        if teacher is not None:
            calls["teacher"] = (lambda b: list(teacher.summarize(b)), [summary_prompt(task, r) for r in rows])
    return calls


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
    from distill.teacher import load_teacher

    ec = cfg.eval
    teacher = None
    if cfg.teach.teacher.backend != "openai":
        same = dataclasses.replace(cfg.teach.teacher, batch_size=ec.speed_batch_size, device=device.type)
        teacher = load_teacher(same)
    pairs = len(cfg.tasks) * (2 if teacher else 1)
    speed: dict[str, Any] = {"student": {}, "teacher": {}}
    for task in cfg.tasks:
        for who, (fn, items) in _timed_calls(cfg, task, test[task.name], student, tokenizer, teacher).items():
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
    cfg: PipelineConfig, task: TaskConfig, rows: list[dict[str, Any]], student: Student, tokenizer: Any
) -> dict[str, Any]:
    """One task's quality figures, each with its bootstrap interval over the eval rows."""
    ec = cfg.eval
    if not rows:
        raise DistillError(f"task {task.name}: the teacher's {ec.split} output is empty")
    resamples = bootstrap_indices(len(rows), ec.bootstrap_resamples, ec.bootstrap_seed)  # (R, n)
    if task.kind == "classification":
        probs = student_probs(student, tokenizer, task.name, rows, ec.batch_size)
        train_rows = read_jsonl(output_path(cfg, task.name, "train"))
        min_mass = cfg.teach.teacher.min_label_mass
        return classification_metrics(task, rows, probs, train_rows, resamples, min_mass)
    predicted = student_summaries(student, tokenizer, rows, ec.batch_size, ec.max_new_tokens)
    return summary_metrics(rows, predicted, resamples)


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
    for task in cfg.tasks:
        with timer.section(f"quality/{task.name}"):
            report["tasks"][task.name] = task_report(cfg, task, test[task.name], student, tokenizer)
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
    (out / "report.md").write_text(markdown(report))
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
