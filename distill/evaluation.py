"""`distill eval`: student vs teacher vs gold on the held-out split, and both models'
speed and size measured in the same run. Writes report.json and report.md."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.batches import encode_classification, encode_documents, pad
from distill.config import PipelineConfig, TaskConfig
from distill.data import read_jsonl
from distill.errors import DistillError
from distill.manifest import Timer, latency_percentiles, write_manifest
from distill.prompts import classification_prompt, summary_prompt
from distill.student import Student, load_student

ROUGE_MODULE = Path(__file__).parent / "metrics" / "rouge"


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else float("nan")


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> float:
    scores = []
    for c in range(n_labels):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """Σ_bins (|bin|/n)·|accuracy − confidence| over equal-width confidence bins."""
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def mean_kl(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over rows of KL(teacher ‖ student) for (n, labels) distributions."""
    t = np.clip(teacher, 1e-12, 1.0)
    s = np.clip(student, 1e-12, 1.0)
    return float(np.mean(np.sum(t * (np.log(t) - np.log(s)), axis=-1)))


def classification_metrics(
    task: TaskConfig, rows: list[dict[str, Any]], student_probs: np.ndarray
) -> dict[str, Any]:
    names = task.label_names
    teacher_probs = np.array([r["teacher_distribution"] for r in rows])
    has_gold = np.array([r["label"] is not None for r in rows])
    gold = np.array([names.index(r["label"]) for r in rows if r["label"] is not None], dtype=int)

    def against_gold(probs: np.ndarray) -> dict[str, float]:
        probs = probs[has_gold]
        pred = probs.argmax(-1)
        return {
            "accuracy": accuracy(pred, gold),
            "macro_f1": macro_f1(pred, gold, len(names)),
            "ece": expected_calibration_error(probs, gold),
        }

    return {
        "rows": len(rows),
        "rows_with_gold": int(has_gold.sum()),
        "student": against_gold(student_probs),
        "teacher": against_gold(teacher_probs),
        "agreement": float((student_probs.argmax(-1) == teacher_probs.argmax(-1)).mean()),
        "kl_teacher_student": mean_kl(teacher_probs, student_probs),
    }


@functools.cache
def _rouge_metric() -> Any:
    import evaluate

    return evaluate.load(str(ROUGE_MODULE))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    pairs = [(p, r) for p, r in zip(predictions, references) if r]
    if not pairs:
        return {}
    scores = _rouge_metric().compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    return {k: round(float(v), 4) for k, v in scores.items()}


@torch.inference_mode()
def student_probs(
    student: Student, tokenizer: Any, task: str, rows: list[dict[str, Any]], batch: int
) -> np.ndarray:
    ids = encode_classification(rows, tokenizer, student.spec.max_length)
    out = []
    for start in range(0, len(ids), batch):
        x = pad(ids[start : start + batch], tokenizer.pad_token_id)
        out.append(student.classify(task, x, (x != tokenizer.pad_token_id).long()).float().softmax(-1))
    return torch.cat(out).numpy()


def student_summaries(
    student: Student, tokenizer: Any, rows: list[dict[str, Any]], batch: int, max_new: int
) -> list[str]:
    ids = encode_documents(rows, tokenizer, student.spec.max_document_length)
    texts: list[str] = []
    for start in range(0, len(ids), batch):
        x = pad(ids[start : start + batch], tokenizer.pad_token_id)
        out = student.summarize(x, (x != tokenizer.pad_token_id).long(), max_new)
        texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return texts


def time_model(
    fn: Callable[[Sequence[Any]], Any], items: list[Any], batch: int, latency_items: int
) -> dict[str, float]:
    """items/s in batches of ``batch``, and p50/p95 latency over single-item calls."""
    fn(items[:1])  # warm-up: first-call allocations are not the steady state
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        fn(items[i : i + batch])
    elapsed = time.perf_counter() - start
    latencies = []
    for item in items[:latency_items]:
        t = time.perf_counter()
        fn([item])
        latencies.append((time.perf_counter() - t) * 1000)
    return {
        "items": len(items),
        "items_per_s": round(len(items) / elapsed, 2),
        **latency_percentiles(latencies),
    }


def measure_speed(
    cfg: PipelineConfig, student: Student, tokenizer: Any, test: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Both models timed in this run. An API teacher is not timed here (that would be paid for):
    its request latency and usage come from the teach manifest instead."""
    from distill.teacher import load_teacher

    api = cfg.teach.teacher.backend == "openai"
    teacher = None if api else load_teacher(cfg.teach.teacher)
    ec = cfg.eval
    speed: dict[str, Any] = {"student": {}, "teacher": {}}
    for task in cfg.tasks:
        rows = test[task.name]
        if task.kind == "classification":
            rows = rows[: ec.throughput_items]
            verbalizers = list(task.labels.values())
            speed["student"][task.name] = time_model(
                lambda b, t=task.name: student_probs(student, tokenizer, t, list(b), ec.batch_size),
                rows,
                ec.batch_size,
                ec.latency_items,
            )
            if api:
                continue
            prompts = [classification_prompt(task, r) for r in rows]
            speed["teacher"][task.name] = time_model(
                lambda b, v=verbalizers: list(teacher.label_distribution(b, v)),
                prompts,
                cfg.teach.teacher.batch_size,
                ec.latency_items,
            )
        else:  # generation is ~50x slower per item: time a smaller sample
            rows = rows[: max(2, ec.throughput_items // 8)]
            few = max(2, ec.latency_items // 4)
            speed["student"][task.name] = time_model(
                lambda b: student_summaries(student, tokenizer, list(b), ec.batch_size, ec.max_new_tokens),
                rows,
                ec.batch_size,
                few,
            )
            if api:
                continue
            speed["teacher"][task.name] = time_model(
                lambda b: list(teacher.summarize(b)),
                [summary_prompt(task, r) for r in rows],
                cfg.teach.teacher.batch_size,
                few,
            )
    speed["teacher_parameters"] = teacher.num_parameters() if teacher else None
    return speed


def run(cfg: PipelineConfig) -> dict[str, Any]:
    from distill.teach import output_path

    timer = Timer()
    student_dir = cfg.path / "train" / "student"
    with timer.section("load"):
        student, tokenizer = load_student(student_dir)
        torch.set_grad_enabled(False)
        split = cfg.eval.split
        test = {t.name: read_jsonl(output_path(cfg, t.name, split)) for t in cfg.tasks}
    report: dict[str, Any] = {"split": split, "tasks": {}}
    for task in cfg.tasks:
        rows = test[task.name]
        if not rows:
            raise DistillError(f"task {task.name}: the teacher's {split} output is empty")
        with timer.section(f"quality/{task.name}"):
            if task.kind == "classification":
                probs = student_probs(student, tokenizer, task.name, rows, cfg.eval.batch_size)
                report["tasks"][task.name] = classification_metrics(task, rows, probs)
            else:
                predicted = student_summaries(
                    student, tokenizer, rows, cfg.eval.batch_size, cfg.eval.max_new_tokens
                )
                teacher_text = [r["teacher_summary"] for r in rows]
                references = [r["reference"] or "" for r in rows]
                report["tasks"][task.name] = {
                    "rows": len(rows),
                    "student_vs_reference": rouge(predicted, references),
                    "teacher_vs_reference": rouge(teacher_text, references),
                    "student_vs_teacher": rouge(predicted, teacher_text),
                    "examples": [
                        {"student": p, "teacher": t} for p, t in zip(predicted[:3], teacher_text[:3])
                    ],
                }
    with timer.section("speed"):
        speed = measure_speed(cfg, student, tokenizer, test)
    student_params = sum(p.numel() for p in student.parameters())
    report["models"] = {
        "student": {
            "parameters": student_params,
            "disk_mb": round(sum(f.stat().st_size for f in student_dir.iterdir()) / 2**20, 1),
            "speed": speed["student"],
        },
        "teacher": {"parameters": speed["teacher_parameters"], "speed": speed["teacher"]},
        "compression": round(speed["teacher_parameters"] / student_params, 2)
        if speed["teacher_parameters"]
        else None,
    }
    teach_manifest = cfg.path / "teach" / "manifest.json"
    if cfg.teach.teacher.backend == "openai" and teach_manifest.is_file():
        report["models"]["teacher"]["api_usage"] = json.loads(teach_manifest.read_text())["teacher"]["usage"]
    report["gates"] = check_gates(report, cfg.eval.gates)
    out = cfg.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    write_manifest(out, "eval", cfg, gates=report["gates"], timings_s=timer.seconds)
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


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# distill report ({report['split']} split)", ""]
    cls = {k: v for k, v in report["tasks"].items() if "student" in v}
    if cls:
        lines += [
            "| task | model | accuracy | macro-F1 | ECE | agreement | KL(t‖s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in cls.items():
            for who in ("teacher", "student"):
                extra = (
                    [_fmt(m["agreement"]), _fmt(m["kl_teacher_student"])] if who == "student" else ["", ""]
                )
                row = [name, who, *(_fmt(m[who][k]) for k in ("accuracy", "macro_f1", "ece")), *extra]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    summ = {k: v for k, v in report["tasks"].items() if "student_vs_reference" in v}
    if summ:
        lines += ["| task | comparison | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|"]
        for name, m in summ.items():
            for key in ("teacher_vs_reference", "student_vs_reference", "student_vs_teacher"):
                s = m[key]
                row = [
                    name,
                    key.replace("_", " "),
                    *(_fmt(s.get(k, float("nan"))) for k in ("rouge1", "rouge2", "rougeL")),
                ]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    models = report["models"]
    lines += ["| model | task | items/s | p50 ms | p95 ms | parameters |", "|---|---|---|---|---|---|"]
    for who in ("teacher", "student"):
        for task, s in models[who]["speed"].items():
            row = [
                who,
                task,
                _fmt(s["items_per_s"]),
                _fmt(s["latency_p50_ms"]),
                _fmt(s["latency_p95_ms"]),
                f"{models[who]['parameters'] / 1e6:.1f}M",
            ]
            lines.append("| " + " | ".join(row) + " |")
    if models["compression"]:
        lines += ["", f"Teacher/student parameter ratio: {models['compression']}×"]
    usage = models["teacher"].get("api_usage")
    if usage:
        cost = f", estimated ${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
        lines += [
            "",
            f"API teacher (last teach run): {usage['requests']} requests, {usage['retries']} retries, "
            f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}; "
            f"request latency p50 {usage['latency_p50_ms']} ms, p95 {usage['latency_p95_ms']} ms",
        ]
    if report["gates"]:
        lines += ["", "| gate | value | min | passed |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {_fmt(g['value'])} | {g['min']} | {g['passed']} |" for k, g in report["gates"].items()
        ]
    return "\n".join(lines) + "\n"
