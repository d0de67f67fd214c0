"""`distill serve --defer PIPELINE`: a classification request the student is unsure of (its top
class probability below the threshold eval chose on the validation split, ``defer.json`` beside
the student) is answered by the pipeline's teacher instead, through the same cached teacher code
teach uses: the same prompt, cache key and calibration, so the next teach finds the answer in
the cache and pays nothing for it.

Every deferred request is appended to ``run_dir/traffic/<task>.jsonl`` in the task's own data
format (with the student's and the teacher's answers beside it); a task that lists that file as
``traffic`` trains on it in the next run. A teacher that errors, answers garbage or takes longer
than ``serve.defer.timeout_s``: the student's answer is served, marked ``teacher_unavailable``,
counted in ``/metrics``, and the request is still logged (its teacher answer left empty), so the
next teach asks for it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.core.layout import DEFER_FILE, cache_path
from distill.tasks import task_for
from distill.teach.prompts import template_version


def traffic_path(cfg: PipelineConfig, task: str) -> Path:
    return cfg.path / "traffic" / f"{task}.jsonl"


def read_thresholds(student_dir: Path) -> dict[str, Any]:
    path = Path(student_dir) / DEFER_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(
            f"serve --defer: {path} not found: `distill eval` chooses each task's threshold on the "
            "validation split and stores it there"
        ) from None
    except ValueError as e:
        raise DistillError(f"serve --defer: {path} is not JSON ({e})") from None


def _calibration(cfg: PipelineConfig, student_dir: Path) -> dict[str, Any]:
    """What teach fitted on the teacher's answers, per task: from the student's own run's teach
    manifest (its run folder), else the pipeline's."""
    for run in (Path(student_dir).resolve().parent.parent, cfg.path):
        manifest = run / "teach" / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())["teacher"].get("calibration") or {}
    raise DistillError(f"serve --defer: no teach manifest in {Path(student_dir).parent.parent} or {cfg.path}")


class Deferral:
    """The teacher behind the student. Teacher calls run one at a time in a thread of their own
    (which also owns the SQLite cache connection), each bounded by ``timeout_s``."""

    def __init__(self, cfg: PipelineConfig, student_dir: Path, served: dict[str, Any]):
        self.cfg, self.timeout_s = cfg, cfg.serve.defer.timeout_s
        stored = read_thresholds(student_dir)
        fitted = _calibration(cfg, student_dir)
        pipeline_tasks = {t.name: task_for(t) for t in cfg.tasks}
        self.tasks: dict[str, Any] = {}
        for name, served_task in served.items():
            if served_task.generates_text:
                continue
            if name not in pipeline_tasks or name not in stored:
                where = "the pipeline" if name not in pipeline_tasks else DEFER_FILE
                raise DistillError(f"serve --defer: task {name!r} is not in {where}")
            task = pipeline_tasks[name]
            if task.labels != served_task.labels:
                raise DistillError(
                    f"serve --defer: task {name!r}: the pipeline's labels {task.labels} are not the "
                    f"student's {served_task.labels}"
                )
            threshold = stored[name]["threshold"]
            self.tasks[name] = {
                "task": task,
                "threshold": float("inf") if threshold is None else float(threshold),
                "target": stored[name].get("target"),
                "shots": task.shots(cfg, None),
                "fitted": fitted.get(name),
            }
        self.counts: dict[str, dict[str, int]] = defaultdict(
            lambda: {"deferred": 0, "teacher_answered": 0, "teacher_unavailable": 0}
        )
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")
        self._cached = self._pool.submit(self._load).result()  # a bad teacher config fails here

    def _load(self) -> Any:
        from distill.teach.cache import AnswerCache
        from distill.teach.teachers import load_teacher
        from distill.teach.teachers.cached import CachedTeacher

        teacher_cfg = self.cfg.teach.teacher
        if getattr(teacher_cfg.options, "mode", None) == "batch":  # a request cannot wait for a batch job
            teacher_cfg = replace(teacher_cfg, options=replace(teacher_cfg.options, mode="online"))
        teacher = load_teacher(teacher_cfg, self.cfg.path / "teach")
        return CachedTeacher(
            teacher, AnswerCache(cache_path(self.cfg)), self.cfg.teach.teacher.min_label_mass
        )

    def record(self) -> dict[str, Any]:
        return {
            name: {
                "threshold": None if t["threshold"] == float("inf") else t["threshold"],
                "target": t["target"],
            }
            for name, t in self.tasks.items()
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"tasks": {k: dict(v) for k, v in self.counts.items()}, "last_error": self.last_error}

    def _ask(self, name: str, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """In the teacher thread: the teacher's calibrated rows, or {"error": …} per example."""
        t = self.tasks[name]
        task = t["task"]
        answers = self._cached.label_distribution(
            [task.prompt(ex, t["shots"]) for ex in examples],
            list(task.options.labels.values()),
            template_version(task.cfg, task.options.labels),
        )
        ok = [(i, a) for i, a in enumerate(answers) if "error" not in a]
        rows = task.output_rows([examples[i] for i, _ in ok], [a for _, a in ok], t["fitted"])
        out: list[dict[str, Any]] = [{"error": a.get("error")} for a in answers]
        for (i, _), row in zip(ok, rows):
            out[i] = row
        return out

    async def answer(
        self, name: str, rows: list[dict[str, Any]], probs: list[list[float]]
    ) -> list[dict[str, Any]]:
        """Per row: ``distribution``, ``answered_by`` (student or teacher), ``teacher_unavailable``."""
        t = self.tasks[name]
        out = [{"distribution": p, "answered_by": "student", "teacher_unavailable": False} for p in probs]
        deferred = [i for i, p in enumerate(probs) if max(p) < t["threshold"]]
        if not deferred:
            return out
        task = t["task"]
        examples = [task.example(task.data_row(rows[i]), i, "request") for i in deferred]
        for ex in examples:
            ex["id"] = _row_id(ex)
        try:
            loop = asyncio.get_running_loop()
            got = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._ask, name, examples), self.timeout_s
            )
        except asyncio.TimeoutError:
            got = [{"error": f"the teacher took longer than serve.defer.timeout_s {self.timeout_s} s"}] * len(
                examples
            )
        except Exception as e:  # the teacher's own bug: still the student's answer, still serving
            got = [{"error": f"{type(e).__name__}: {e}"}] * len(examples)
        traffic = []
        for i, ex, answer in zip(deferred, examples, got):
            student = np.asarray(probs[i])
            row = {**task.data_row(ex), "student_label": task.labels[int(student.argmax())],
                   "student_confidence": round(float(student.max()), 6),
                   "served_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
            if "error" in answer:
                out[i]["teacher_unavailable"] = True
                row.update(teacher_label=None, teacher_distribution=None, teacher_unavailable=answer["error"])
                self.last_error = answer["error"]
            else:
                out[i].update(distribution=answer["teacher_distribution"], answered_by="teacher")
                row.update(
                    teacher_label=answer["teacher_label"], teacher_distribution=answer["teacher_distribution"]
                )
            traffic.append(row)
        with self._lock:
            counts = self.counts[name]
            counts["deferred"] += len(deferred)
            unavailable = sum(o["teacher_unavailable"] for o in out)
            counts["teacher_unavailable"] += unavailable
            counts["teacher_answered"] += len(deferred) - unavailable
            path = traffic_path(self.cfg, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in traffic)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _row_id(example: dict[str, Any]) -> str:
    """A request's id in the traffic log: its content's hash, so one text asked twice is one row."""
    text = json.dumps([example.get("text"), example.get("text_pair")])
    return "traffic-" + hashlib.sha256(text.encode()).hexdigest()[:16]
