"""Summarization: the teacher writes a summary of every document, and the student's shared
decoder learns to write it (sequence-level KD, Kim & Rush 2016). Several summarization tasks
share one decoder, so the student reads each document behind its task's prefix ("news: …")
and knows which kind of summary to write."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distill.core.config import DecodingConfig
from distill.core.data import Example
from distill.core.errors import ConfigError, DistillError
from distill.core.losses import IGNORE_INDEX, sequence_kd_loss, token_kd_loss
from distill.core.tensors import left_pad, length_mask, pad
from distill.eval.metrics.summaries import rouge_per_row, summary_metrics
from distill.student.summarizers.teacher_layers.decoder import teacher_targets
from distill.student.tokens import encode_targets
from distill.tasks.base import Task, TimedCalls
from distill.teach.prompts import summary_prompt, template_version
from distill.train.batches import TaskTensors


def decoding_entry(max_new: int, decoding: DecodingConfig) -> dict[str, Any]:
    """One task's entry in a student's stored ``decoding`` (student.json): what eval scored, so
    serve and export write what was scored."""
    return {"max_new_tokens": max_new, **decoding.generate_kwargs()}


def entry_decoding(entry: dict[str, Any]) -> tuple[int, DecodingConfig]:
    """A stored ``decoding`` entry back as (max_new_tokens, DecodingConfig): the inverse of
    ``decoding_entry``, which eval and serve both decode through."""
    options = {k: v for k, v in entry.items() if k != "max_new_tokens"}
    return entry["max_new_tokens"], DecodingConfig(**options)


def shipped_decodings(pipeline, tasks: Iterable[Task]) -> dict[str, dict[str, Any]] | None:
    """Every summarization task's ``decoding_entry`` under ``pipeline`` (None without one): what
    train stores in student.json and eval rewrites it to when it scores something else."""
    entries = {t.name: t.shipped_decoding(pipeline) for t in tasks if isinstance(t, Summarization)}
    return entries or None


@dataclass
class SummarizationOptions:
    document_field: str = "document"
    """The document column."""
    reference_field: str | None = "summary"
    """Optional reference summary column."""
    prefix: str | None = None
    """What the student reads before each document, so the decoder the summarization tasks
    share knows which one it writes for (default "NAME: ")."""
    decoding: DecodingConfig | None = None
    """How the student decodes this task's summaries (default: eval.decoding)."""


class Summarization(Task):
    kind = "summarization"
    generates_text = True
    headline = "rougeL"
    Options = SummarizationOptions

    @classmethod
    def spec_options(cls, entry):
        return cls.Options(prefix=entry.get("prefix"))

    def check_pipeline(self, pipeline) -> None:
        if pipeline.train.summary_targets == "reference" and not self.options.reference_field:
            raise ConfigError(
                f"train.summary_targets: reference, but task {self.name} has no reference_field"
            )

    @property
    def prefix(self) -> str:
        """What the student reads before the document: names the task for the shared decoder."""
        return self.options.prefix if self.options.prefix is not None else f"{self.name}: "

    @property
    def instruction(self) -> str:
        """What the teacher is asked; a teacher-layers student reads the same prompt."""
        return summary_prompt(self.cfg, {"document": ""}).head.rstrip("\n")

    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        field = self.options.reference_field
        reference = row.get(field) if field else None
        return {
            "id": str(row.get("id", index)),
            "document": self._text(row, self.options.document_field, where, index),
            "reference": reference if isinstance(reference, str) and reference.strip() else None,
        }

    def unlabeled_text(self) -> list[str]:
        """Every train document (all rows, not only max_rows; references unused)."""
        from distill.core.data import read_rows

        field = self.options.document_field
        rows = read_rows(self.cfg.data["train"], "train", self.name)
        return [r[field] for r in rows if isinstance(r.get(field), str) and r[field].strip()]

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
        # teacher_tokens (with teacher.summary_top_k): the teacher's own token ids and top-k
        # log-probabilities, for token-level KD into a student with the teacher's vocabulary.
        return [
            {
                **ex,
                "teacher_summary": a["text"],
                "teacher_finish_reason": a["finish_reason"],
                **({"teacher_tokens": a["tokens"]} if "tokens" in a else {}),
            }
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
        return {"kind": self.kind, "labels": None, "prefix": self.prefix, "instruction": self.instruction}

    def exporter(self, spec) -> str:
        """The student's summarizer decides the artifact (a seq2seq model, a causal LM)."""
        return spec.summarizer_class.exporter

    def probe_row(self, text: str) -> dict[str, Any]:
        return {"document": text}

    def encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int, prefix: str | None = None
    ) -> list[list[int]]:
        """Document token ids behind the task prefix (``prefix``: a trained student's own), unpadded."""
        prefix = self.prefix if prefix is None else prefix
        texts = [prefix + r["document"] for r in rows]
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def _training_targets(
        self, rows, train
    ) -> tuple[list[dict[str, Any]], list[str], list[bool], dict[str, int]]:
        """The rows trained on, their target texts, whether each is finished, and the counts."""
        if train.summary_targets == "reference":
            kept = [r for r in rows if r["reference"]]
            texts, finished = [r["reference"] for r in kept], [True] * len(kept)
            return kept, texts, finished, {"cut": 0, "excluded": len(rows) - len(kept)}
        cut = [r["teacher_finish_reason"] == "length" for r in rows]
        kept = [r for r, c in zip(rows, cut) if not (c and train.cut_summaries == "exclude")]
        texts = [r["teacher_summary"] for r in kept]
        finished = [r["teacher_finish_reason"] != "length" for r in kept]
        return kept, texts, finished, {"cut": sum(cut), "excluded": len(rows) - len(kept)}

    def tensors(self, rows, tokenizer, spec, train, codec=None) -> TaskTensors:
        """Targets: the teacher's summaries (a summary the teacher cut gets no end token, or is
        dropped with train.cut_summaries: exclude), or with train.summary_targets: reference the
        gold references (the no-teacher baseline). A teacher-layers student (``codec``) learns
        the teacher's own tokens and, with train.token_kd_weight, its top-k at each."""
        kept, texts, finished, counts = self._training_targets(rows, train)
        if not kept:
            raise DistillError(
                f"task {self.name}: no training summary is left (every teacher summary cut with "
                "train.cut_summaries: exclude, or no reference with train.summary_targets: reference)"
            )
        tensors = TaskTensors(
            self.name,
            self.encode(kept, tokenizer, spec.max_document_length),
            batch_size=train.summary_batch_size,
            counts=counts,
        )
        if codec is None:
            tensors.target_ids = encode_targets(
                texts, tokenizer, spec.max_summary_length, finished, spec.encoder_source
            )
            return tensors
        instruction = spec.tasks[self.name]["instruction"]
        tensors.decoder_prompt_ids = [
            codec.prompt_ids(instruction, r["document"], spec.max_document_length) for r in kept
        ]
        if train.summary_targets == "reference":
            teacher_ids = [codec.target_teacher_ids(t, True, spec.max_summary_length) for t in texts]
        else:
            teacher_ids = [teacher_targets(codec, r, spec.max_summary_length) for r in kept]
        tensors.target_ids = [codec.student(t) for t in teacher_ids]
        if train.token_kd_weight > 0 and train.summary_targets == "teacher":
            tensors.target_top = [self._top(codec, r, len(t)) for r, t in zip(kept, teacher_ids)]
        return tensors

    def _top(self, codec, row, length: int) -> tuple[list[list[int]], list[list[float]]]:
        """The teacher's top-k at each of its first ``length`` tokens, as student ids."""
        tokens = row.get("teacher_tokens")
        if not tokens:
            raise DistillError(
                f"task {self.name}: train.token_kd_weight needs the teacher's top-k with every "
                f"summary, and row {row['id']} has none; rerun teach with teach.teacher.summary_top_k"
            )
        top_ids = [codec.student(ids) for ids in tokens["top_ids"][:length]]
        if any(len(a) != len(b) for a, b in zip(top_ids, tokens["top_ids"])):
            raise DistillError(f"task {self.name}: a teacher top-k token is outside the student's vocabulary")
        top_lp = [list(lp) for lp in tokens["top_logprobs"][:length]]
        if len(top_ids) < length:  # the end token an API answer has no top-k for: taught as certain
            k = len(top_lp[0]) if top_lp else 1
            end = codec.student([codec.end_id])[0]
            top_ids.append([end] * k)
            top_lp.append([0.0] + [-1e4] * (k - 1))
        return top_ids, top_lp

    def loss(self, model, inputs, train):
        keys = ("input_ids", "attention_mask", "target_ids", "decoder_prompt_ids", "decoder_prompt_mask")
        out = model(self.name, **{k: inputs[k] for k in keys if k in inputs})
        logits = out.pop("logits")  # (batch, target_len, vocab)
        ce = sequence_kd_loss(logits, inputs["target_ids"])
        weight = train.token_kd_weight
        if weight and "top_ids" in inputs:
            mask = inputs["target_ids"] != IGNORE_INDEX
            token = token_kd_loss(logits, inputs["top_ids"], inputs["top_logprobs"], mask)
            return {"loss": (1 - weight) * ce + weight * token, "ce": ce, "token_kd": token, **out}
        return {"loss": ce, **out}  # plus sharing losses

    # --- eval -------------------------------------------------------------------------------
    def decoding(self, pipeline) -> DecodingConfig:
        return self.options.decoding or pipeline.eval.decoding

    def shipped_decoding(self, pipeline) -> dict[str, Any]:
        """This task's decoding under ``pipeline`` as student.json stores it."""
        return decoding_entry(pipeline.eval.max_new_tokens, self.decoding(pipeline))

    def scored_summaries(self, pipeline, rows, student, tokenizer) -> tuple[list[str], list[bool]]:
        """The summaries eval scores: decoded through the very entry student.json stores (and
        serve decodes with), in eval.batch_size batches."""
        max_new, decoding = entry_decoding(self.shipped_decoding(pipeline))
        return self.student_summaries(student, tokenizer, rows, pipeline.eval.batch_size, max_new, decoding)

    def student_summaries(
        self, student, tokenizer, rows, batch: int, max_new: int, decoding: DecodingConfig | None = None
    ) -> tuple[list[str], list[bool]]:
        """The student's summaries, and for each whether it hit ``max_new`` without ending."""
        decoding = decoding or DecodingConfig()
        # The prefix (and, for a teacher-layers student, the prompt) it was trained with.
        entry, spec, codec = student.spec.tasks[self.name], student.spec, student.codec
        ids = self.encode(rows, tokenizer, spec.max_document_length, entry["prefix"])
        device = next(student.parameters()).device
        texts: list[str] = []
        cut: list[bool] = []
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            x = pad(chunk, tokenizer.pad_token_id).to(device)
            prompt = None
            if codec is not None:
                prompts = [
                    codec.prompt_ids(entry["instruction"], r["document"], spec.max_document_length)
                    for r in rows[start : start + batch]
                ]
                prompt = {
                    "decoder_prompt_ids": left_pad(prompts, 0).to(device),
                    "decoder_prompt_mask": left_pad([[1] * len(p) for p in prompts], 0).to(device),
                }
            out = student.summarize(
                self.name, x, length_mask(chunk).to(device), max_new, decoding.generate_kwargs(), prompt
            ).tolist()
            if codec is not None:
                stops = set(codec.stop_student_ids)
                texts += [codec.decode(row) for row in out]
                cut += [not stops.intersection(row) for row in out]
            else:
                end = student.backbone.generation_config.eos_token_id
                texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
                cut += [end not in row for row in out]
        return texts, cut

    def evaluate(self, pipeline, rows, student, tokenizer, resamples):
        ec = pipeline.eval
        decoding = self.decoding(pipeline)
        greedy, cut = self.student_summaries(student, tokenizer, rows, ec.batch_size, ec.max_new_tokens)
        if decoding.greedy:
            section = summary_metrics(rows, greedy, resamples, student_cut=cut, decoding=asdict(decoding))
            return section, self._scores(greedy, rows)
        predicted, _ = self.scored_summaries(pipeline, rows, student, tokenizer)
        section = summary_metrics(
            rows, predicted, resamples, student_cut=cut, greedy=greedy, decoding=asdict(decoding)
        )
        return section, self._scores(predicted, rows)

    def _scores(self, predicted: list[str], rows) -> dict[str, np.ndarray]:
        """ROUGE F of each summary against its reference (NaN without one)."""
        per_row = rouge_per_row(predicted, [r["reference"] or "" for r in rows])
        return {key: per_row[key] for key in ("rouge1", "rouge2", "rougeL")}

    def row_scores(self, pipeline, rows, student, tokenizer):
        texts, _ = self.scored_summaries(pipeline, rows, student, tokenizer)
        return self._scores(texts, rows)

    def teacher_row_scores(self, rows):
        return self._scores([r["teacher_summary"] for r in rows], rows)

    def aggregate(self, scores):
        return {key: float(np.nanmean(values)) for key, values in scores.items()}

    def timed_calls(self, pipeline, rows, student, tokenizer, teacher) -> TimedCalls:
        max_new, decoding = entry_decoding(self.shipped_decoding(pipeline))
        calls: TimedCalls = {
            "student": (
                lambda b: self.student_summaries(student, tokenizer, list(b), len(b), max_new, decoding)[0],
                rows,
            )
        }
        if teacher is not None:
            calls["teacher"] = (lambda b: list(teacher.summarize(b)), [self.prompt(r, []) for r in rows])
        return calls
