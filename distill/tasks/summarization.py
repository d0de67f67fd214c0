"""Summarization: the teacher writes a summary of every document, and the student's shared
decoder learns to write it (sequence-level KD, Kim & Rush 2016). Several summarization tasks
share one decoder, so the student reads each document behind its task's prefix ("news: …")
and knows which kind of summary to write."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.batches import TaskTensors, encode_targets, length_mask, pad
from distill.data import Example
from distill.errors import ConfigError, DistillError
from distill.losses import sequence_kd_loss
from distill.prompts import summary_prompt, template_version
from distill.stats import rouge_per_row, summary_metrics
from distill.tasks import Task, TimedCalls


class Summarization(Task):
    kind = "summarization"
    generates_text = True
    headline = "rougeL"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.labels:
            raise ConfigError(f"tasks.{cfg.name}.labels: only classification tasks take labels")

    def check_pipeline(self, pipeline) -> None:
        if pipeline.train.summary_targets == "reference" and not self.cfg.reference_field:
            raise ConfigError(
                f"train.summary_targets: reference, but task {self.name} has no reference_field"
            )

    @property
    def prefix(self) -> str:
        """What the student reads before the document: names the task for the shared decoder."""
        return self.cfg.prefix if self.cfg.prefix is not None else f"{self.name}: "

    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        field = self.cfg.reference_field
        reference = row.get(field) if field else None
        return {
            "id": str(row.get("id", index)),
            "document": self._text(row, self.cfg.document_field, where, index),
            "reference": reference if isinstance(reference, str) and reference.strip() else None,
        }

    def prompt(self, example: Example, shots: list[Example]):
        return summary_prompt(self.cfg, example)

    def teach(self, cached, pipeline, examples, shots):
        answers = self._ask_splits(
            pipeline,
            examples,
            lambda exs, progress: cached.summarize(
                [self.prompt(ex, []) for ex in exs], template_version(self.cfg), progress
            ),
        )
        return answers, None

    def output_rows(self, examples, answers, fitted):
        return [
            {**ex, "teacher_summary": a["text"], "teacher_finish_reason": a["finish_reason"]}
            for ex, a in zip(examples, answers)
        ]

    def split_counts(self, rows):
        return {
            "rows": len(rows),
            "with_reference": sum(r["reference"] is not None for r in rows),
            "cut_by_length": sum(r["teacher_finish_reason"] == "length" for r in rows),
            "empty_summaries": sum(not r["teacher_summary"] for r in rows),
        }

    # --- student ----------------------------------------------------------------------------
    def student_entry(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": None, "prefix": self.prefix}

    def encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int, prefix: str | None = None
    ) -> list[list[int]]:
        """Document token ids behind the task prefix (``prefix``: a trained student's own), unpadded."""
        prefix = self.prefix if prefix is None else prefix
        texts = [prefix + r["document"] for r in rows]
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def tensors(self, rows, tokenizer, spec, train) -> TaskTensors:
        """Targets: the teacher's summaries (a summary the teacher cut gets no end token, or is
        dropped with train.cut_summaries: exclude), or with train.summary_targets: reference the
        gold references (the no-teacher baseline)."""
        if train.summary_targets == "reference":
            kept = [r for r in rows if r["reference"]]
            texts, finished = [r["reference"] for r in kept], [True] * len(kept)
            counts = {"cut": 0, "excluded": len(rows) - len(kept)}
        else:
            cut = [r["teacher_finish_reason"] == "length" for r in rows]
            kept = [r for r, c in zip(rows, cut) if not (c and train.cut_summaries == "exclude")]
            texts = [r["teacher_summary"] for r in kept]
            finished = [r["teacher_finish_reason"] != "length" for r in kept]
            counts = {"cut": sum(cut), "excluded": len(rows) - len(kept)}
        if not kept:
            raise DistillError(
                f"task {self.name}: no training summary is left (every teacher summary cut with "
                "train.cut_summaries: exclude, or no reference with train.summary_targets: reference)"
            )
        return TaskTensors(
            self.name,
            self.encode(kept, tokenizer, spec.max_document_length),
            target_ids=encode_targets(
                texts, tokenizer, spec.max_summary_length, finished, spec.encoder_source
            ),
            batch_size=train.summary_batch_size,
            counts=counts,
        )

    def loss(self, model, inputs, train):
        out = model(self.name, **{k: inputs[k] for k in ("input_ids", "attention_mask", "target_ids")})
        logits = out.pop("logits")  # (batch, target_len, vocab)
        return {"loss": sequence_kd_loss(logits, inputs["target_ids"]), **out}  # plus sharing losses

    # --- eval -------------------------------------------------------------------------------
    def student_summaries(self, student, tokenizer, rows, batch: int, max_new: int) -> list[str]:
        # The prefix the student was trained with, from its own folder.
        prefix = student.spec.tasks[self.name]["prefix"]
        ids = self.encode(rows, tokenizer, student.spec.max_document_length, prefix)
        device = next(student.parameters()).device
        texts: list[str] = []
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            x = pad(chunk, tokenizer.pad_token_id).to(device)
            out = student.summarize(self.name, x, length_mask(chunk).to(device), max_new)
            texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        return texts

    def evaluate(self, pipeline, rows, student, tokenizer, resamples):
        ec = pipeline.eval
        predicted = self.student_summaries(student, tokenizer, rows, ec.batch_size, ec.max_new_tokens)
        return summary_metrics(rows, predicted, resamples)

    def _scores(self, predicted: list[str], rows) -> dict[str, np.ndarray]:
        """ROUGE F of each summary against its reference (NaN without one)."""
        per_row = rouge_per_row(predicted, [r["reference"] or "" for r in rows])
        return {key: per_row[key] for key in ("rouge1", "rouge2", "rougeL")}

    def row_scores(self, pipeline, rows, student, tokenizer):
        ec = pipeline.eval
        return self._scores(
            self.student_summaries(student, tokenizer, rows, ec.batch_size, ec.max_new_tokens), rows
        )

    def teacher_row_scores(self, rows):
        return self._scores([r["teacher_summary"] for r in rows], rows)

    def aggregate(self, scores):
        return {key: float(np.nanmean(values)) for key, values in scores.items()}

    def timed_calls(self, pipeline, rows, student, tokenizer, teacher) -> TimedCalls:
        max_new = pipeline.eval.max_new_tokens
        calls: TimedCalls = {
            "student": (lambda b: self.student_summaries(student, tokenizer, list(b), len(b), max_new), rows)
        }
        if teacher is not None:
            calls["teacher"] = (lambda b: list(teacher.summarize(b)), [self.prompt(r, []) for r in rows])
        return calls
