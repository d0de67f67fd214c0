"""`distill export`: a trained student as one folder per task that plain ``transformers`` loads.

Each task is written by the exporter its task object names (``Task.exporter``; a summarization
task names the one of the student's summarizer):

- ``classifier`` (classifier.py): a sequence classifier for ``pipeline("text-classification")``,
  with its own modeling file (mean pooling; ``trust_remote_code=True``).
- ``seq2seq`` (seq2seq.py): a BERT2BERT summarizer as ``AutoModelForSeq2SeqLM``, used through
  ``generate``.
- ``causal_lm`` (causal.py): a teacher-layers summarizer as its source causal LM, for
  ``pipeline("text-generation")``.

Summaries decode as eval scored them (student.json ``decoding``), or greedily up to
max_summary_length for an older student. Every task folder is loaded back through
transformers and compared with the student's own eval path on probe texts (or on
``measure_rows``); ``export.json`` records what was written, how to call it, how it decodes,
whether it is exact and why not, and those measurements.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distill.core.errors import DistillError
from distill.ship.export.base import Exporter
from distill.ship.export.causal import CausalExport
from distill.ship.export.classifier import ClassifierExport
from distill.ship.export.seq2seq import Seq2SeqExport
from distill.tasks import task_from_student

if TYPE_CHECKING:
    from distill.student.model import Student, StudentSpec
    from distill.tasks import Task

EXPORT_FILE = "export.json"
EXPORTERS: dict[str, type[Exporter]] = {e.name: e for e in (ClassifierExport, Seq2SeqExport, CausalExport)}
"""The artifact formats, by the name a task's ``exporter`` returns."""
PROBE_TEXTS = [
    "The coffee arrived fresh and it was really wonderful.",
    "Stale, bland and broken: I asked for a refund.",
]
"""Inputs a task folder is checked on when no rows are given (the second grows past any
truncation length in ``_probe_rows``)."""


def _probe_rows(task: Task, max_length: int) -> list[dict[str, Any]]:
    long = " ".join([PROBE_TEXTS[1]] * (max_length // 4 + 2))  # longer than the truncation length
    return [task.probe_row(text) for text in (PROBE_TEXTS[0], long)]


def _exporter(spec: StudentSpec, task: Task) -> type[Exporter]:
    name = task.exporter(spec)
    if name not in EXPORTERS:
        raise DistillError(f"export: task {task.name}: no exporter {name!r} (known: {', '.join(EXPORTERS)})")
    return EXPORTERS[name]


def _chosen(spec: StudentSpec, tasks: list[str] | None) -> dict[str, Task]:
    """The tasks to export, by name, after every refusal is known (nothing is written before)."""
    names = list(spec.tasks) if not tasks else list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in spec.tasks]
    if unknown:
        raise DistillError(
            f"export: unknown task {', '.join(map(repr, unknown))} "
            f"(this student has: {', '.join(spec.tasks)})"
        )
    chosen = {name: task_from_student(name, spec.tasks[name]) for name in names}
    refused = {}
    for name, task in chosen.items():
        if (reason := _exporter(spec, task).refusal(spec, task)) is not None:
            refused.setdefault(reason, []).append(name)
    if refused:
        raise DistillError(
            "export: " + "; ".join(f"task {', '.join(tasks)}: {reason}" for reason, tasks in refused.items())
        )
    return chosen


def _prepare(out: Path, names: list[str], student: str) -> dict[str, Any]:
    """``out`` empty, new, or a previous export of the same student: the task folders being
    rewritten go, and the entries of its other tasks are returned (export.json keeps them)."""
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return {}
    if not (out / EXPORT_FILE).is_file():
        raise DistillError(f"{out}: not empty and not a previous export; choose a new folder")
    previous = json.loads((out / EXPORT_FILE).read_text())
    if previous.get("student") != student:
        raise DistillError(
            f"{out}: holds an export of another student ({previous.get('student')}); choose a new folder"
        )
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)
    return {k: v for k, v in previous.get("tasks", {}).items() if k not in names}


def _exactness(info: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    reasons = list(info.pop("not_exact_because", []))
    if not check["same"] and not reasons:
        reasons.append("measured: the exported model's outputs differ from the student's (see check)")
    return {"exact": not reasons, "not_exact_because": reasons}


def export(
    path: Path,
    out: Path,
    tasks: list[str] | None = None,
    measure_rows: dict[str, list[dict[str, Any]]] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Export the student of ``path`` (a student folder or a run) into ``out/<task>/`` for each
    of ``tasks`` (all by default), checked against the student's eval path on ``measure_rows``
    (task → teach rows: "text" / "document") or on probe texts; writes and returns export.json.
    ``max_new_tokens``: summary length in the generation configs (default: the one eval scored,
    else the student's max_summary_length)."""
    import transformers

    from distill.core.layout import resolve_student_dir
    from distill.student.model import load_student

    folder = resolve_student_dir(path)
    student, tokenizer = load_student(folder)
    chosen = _chosen(student.spec, tasks)
    out = Path(out)
    kept = _prepare(out, list(chosen), str(folder.resolve()))
    record: dict[str, Any] = {
        "student": str(folder.resolve()),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]},
        "tasks": kept,
    }
    for name, task in chosen.items():
        rows = (measure_rows or {}).get(name)
        record["tasks"][name] = _export_task(student, tokenizer, task, out / name, rows, max_new_tokens)
        (out / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _export_task(
    student: Student,
    tokenizer: Any,
    task: Task,
    folder: Path,
    rows: list[dict[str, Any]] | None,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    exporter = _exporter(student.spec, task)
    check_rows = rows or _probe_rows(task, exporter.probe_length(student.spec))
    info = exporter.write(student, tokenizer, task, folder, max_new_tokens)
    check = exporter.check(student, tokenizer, task, folder, check_rows, max_new_tokens)
    check["on"] = "given rows" if rows else "probe texts"
    exactness = _exactness(info, check)
    return {"folder": task.name, "exporter": exporter.name, **info, **exactness, "check": check}


def teach_rows(path: Path, task: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``task``'s teach output in the run ``path`` (or the run holding the student
    folder ``path``): what ``measure_rows`` takes."""
    from distill.core.data import read_jsonl

    path = Path(path)
    for run in (path, path / "promoted", path / "latest", path.parent.parent):
        file = run / "teach" / task / f"{split}.jsonl"
        if file.is_file():
            return read_jsonl(file)[:limit]
    raise DistillError(f"{path}: no teach/{task}/{split}.jsonl here (a run folder has one per task)")
