"""What an exporter is, and what the exporters share: one exporter per artifact format (a
sequence classifier, a seq2seq model, a causal LM); a task's kind and the student's summarizer
name the exporter that writes it (``Task.exporter``), so `distill export` never switches on
them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from distill.core.config import DecodingConfig
from distill.tasks.summarization import entry_decoding

if TYPE_CHECKING:
    from distill.student.model import Student, StudentSpec
    from distill.tasks import Task


class Exporter:
    """Writes one task of a student as a folder plain transformers loads, and checks it."""

    name: ClassVar[str]

    @classmethod
    def refusal(cls, spec: StudentSpec, task: Task) -> str | None:
        """Why ``task`` of this student cannot be exported this way (None: it can)."""
        return None

    @classmethod
    def probe_length(cls, spec: StudentSpec) -> int:
        """The input length the student truncates this task at (probe texts grow past it)."""
        raise NotImplementedError

    @classmethod
    def write(
        cls, student: Student, tokenizer: Any, task: Task, folder: Path, max_new_tokens: int | None
    ) -> dict[str, Any]:
        """Write ``folder``; what export.json records of it (``not_exact_because``: the reasons it
        cannot be exact, if any). ``max_new_tokens``: a summary length overriding the student's."""
        raise NotImplementedError

    @classmethod
    def check(
        cls,
        student: Student,
        tokenizer: Any,
        task: Task,
        folder: Path,
        rows: list[dict[str, Any]],
        max_new_tokens: int | None,
    ) -> dict[str, Any]:
        """The written folder, loaded back through transformers, against the student's eval path
        on ``rows``: ``same`` says whether they agree, the rest how much."""
        raise NotImplementedError


def save_tokenizer(tokenizer: Any, folder: Path, max_length: int) -> None:
    """The tokenizer, truncating at the student's length when called with truncation=True."""
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = max_length
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = saved


def update_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class SummaryDecoding:
    """How an exported summarizer decodes: as eval scored the student when its student.json
    records that (``StudentSpec.decoding``), else greedy up to max_summary_length (an older
    student)."""

    max_new_tokens: int
    options: DecodingConfig
    source: str

    def generation(self) -> dict[str, Any]:
        """Generation-config fields: every option set, so none is left to a model's defaults."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "num_beams": self.options.num_beams,
            "no_repeat_ngram_size": self.options.no_repeat_ngram_size,
            "length_penalty": self.options.length_penalty,
        }

    def record(self) -> dict[str, Any]:
        """What export.json records of it."""
        return {
            "max_new_tokens": self.max_new_tokens,
            **self.options.generate_kwargs(),
            "source": self.source,
        }


def summary_decoding(spec: StudentSpec, task: str, max_new_tokens: int | None) -> SummaryDecoding:
    entry = (spec.decoding or {}).get(task)
    if entry is None:
        max_new, options = spec.max_summary_length, DecodingConfig()
        source = "greedy up to max_summary_length: the student records no scored decoding"
    else:
        max_new, options = entry_decoding(entry)
        source = "student.json decoding: as eval scored the student"
    if max_new_tokens:
        max_new, source = max_new_tokens, f"{source}; max_new_tokens {max_new_tokens} given to export"
    return SummaryDecoding(max_new, options, source)


def compare_summaries(
    student: Student,
    tokenizer: Any,
    task: Task,
    rows: list[dict[str, Any]],
    decoding: SummaryDecoding,
    theirs: list[str],
) -> dict[str, Any]:
    """The exported model's summaries against the student's eval path on the same rows, both
    decoded as ``decoding`` says."""
    from distill.eval.metrics.summaries import rouge_per_row

    ours, _ = task.student_summaries(student, tokenizer, rows, 8, decoding.max_new_tokens, decoding.options)
    same = sum(a == b for a, b in zip(ours, theirs))
    rouge = rouge_per_row(theirs, [o or " " for o in ours])["rougeL"]
    return {
        "rows": len(rows),
        "identical": same,
        "rougeL_vs_student": round(float(np.mean(rouge)), 4),
        "same": same == len(rows),
    }
