"""`distill eval`: student vs teacher vs gold on the held-out split, with 95% bootstrap
intervals and a majority-class baseline, and both models' speed measured in the same run on
the same device. Writes report.json, report.md, report.html (with plots) and rows.json (the
student's per-row scores)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.config import PipelineConfig
from distill.core.data import read_jsonl
from distill.core.devices import eval_device
from distill.core.errors import DistillError
from distill.core.layout import DEFER_FILE, output_path
from distill.core.manifest import Timer, write_manifest
from distill.eval.gates import check_gates
from distill.eval.metrics.bootstrap import bootstrap_indices
from distill.eval.metrics.cascade import with_latency
from distill.eval.provenance import student_provenance, warn
from distill.eval.report.markdown import html, markdown
from distill.eval.speed import measure_speed
from distill.student.model import Student, load_student
from distill.tasks import Task, tasks_for


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


def ship_scored_decoding(cfg: PipelineConfig, student: Student, student_dir: Path) -> dict[str, str]:
    """Make student.json's ``decoding`` what this eval scored (the pipeline's, which may differ
    from what train stored: ``--set eval.decoding.num_beams=4``), so that serve and export write
    what was last scored. Per summarization task: "kept" or "rewritten (was …)"."""
    from distill.core.layout import SPEC_FILE
    from distill.tasks.summarization import shipped_decodings

    stored = student.spec.decoding or {}
    scored = shipped_decodings(cfg, tasks_for(cfg)) or {}

    def was(entry: dict[str, Any] | None) -> str:
        return ", ".join(f"{k}={v}" for k, v in entry.items()) if entry else "not stored"

    notes = {
        name: "kept" if stored.get(name) == entry else f"rewritten (was {was(stored.get(name))})"
        for name, entry in scored.items()
    }
    if any(note != "kept" for note in notes.values()):
        spec = dataclasses.replace(student.spec, decoding={**stored, **scored})
        (student_dir / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
        student.spec = spec
    return notes


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
    from distill.teach.teachers import backend_class

    teach_manifest = cfg.path / "teach" / "manifest.json"
    if not backend_class(cfg.teach.teacher.backend).timed_locally and teach_manifest.is_file():
        models["teacher"]["api_usage"] = json.loads(teach_manifest.read_text())["teacher"]["usage"]
    return models


def store_defer_thresholds(
    cfg: PipelineConfig, report: dict[str, Any], speed: dict[str, Any], student_dir: Path
) -> None:
    """Each cascade's estimated latency, and the thresholds chosen on validation for serve.defer's
    target written beside the student (``defer.json``), which ``distill serve --defer`` reads."""
    chosen = {}
    for name, m in report["tasks"].items():
        casc = m.get("cascade")
        if not casc or "chosen" not in casc:
            continue
        student_ms = speed["student"].get(name, {}).get("latency_p50_ms")
        with_latency(casc, student_ms, speed["teacher"].get(name, {}).get("latency_p50_ms"))
        point = casc["chosen"]
        chosen[name] = {
            "threshold": point["threshold"],  # None: defer everything
            "target": point["target"],
            "validation_deferred": point["validation_deferred"],
            "validation_rows": casc["validation_rows"],
            f"{cfg.eval.split}_deferred": point["deferred"],
            f"{cfg.eval.split}_accuracy": point["accuracy"],
        }
    if chosen:
        (student_dir / DEFER_FILE).write_text(json.dumps(chosen, indent=2) + "\n")


@torch.no_grad()  # scoped: a global switch would leak into the caller's process
def run(cfg: PipelineConfig) -> dict[str, Any]:
    timer = Timer()
    student_dir = cfg.path / "train" / "student"
    ec = cfg.eval
    with timer.section("load"):
        student, tokenizer = load_student(student_dir)
        provenance = student_provenance(cfg, student, student_dir)
        device = eval_device(ec.device)
        student.to(device)
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
    for name, note in ship_scored_decoding(cfg, student, student_dir).items():
        report["tasks"][name]["student_json_decoding"] = note
    teach_manifest = cfg.path / "teach" / "manifest.json"
    if teach_manifest.is_file():
        report["teach_select"] = json.loads(teach_manifest.read_text()).get("select")
    report["warnings"] = baseline_warnings(report)
    for line in report["warnings"]:
        warn(line)
    with timer.section("speed"):
        speed = measure_speed(cfg, test, student, tokenizer, device)
    report["models"] = models_section(cfg, student, student_dir, speed)
    store_defer_thresholds(cfg, report, speed, student_dir)
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
