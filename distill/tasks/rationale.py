"""A classification task's teacher rationales as a second task (distilling step-by-step, Hsieh
et al. 2023): the student's shared decoder learns to write the teacher's reason for a row's
label, reading the row behind the prefix "NAME rationale: ", while the task's label head learns
the label as before. It is a train-only task: its rows are the parent's teach output (the rows
with a ``teacher_rationale``), it has no eval split and is not scored, and serving the label
runs the head alone, so the serving cost is unchanged."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from tqdm import tqdm

from distill.core.config import TaskConfig
from distill.tasks.summarization import Summarization, SummarizationOptions
from distill.teach.prompts import rationale_prompt, rationale_version
from distill.teach.select import PSEUDO_LABEL

SUFFIX = "_rationale"


def ask_rationales(task: Any, cached: Any, split: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The teacher's reason for its label on each train row it labelled (of a classification
    task's teach output ``rows``; pseudo-labelled rows get none), set as ``teacher_rationale``;
    returns the cost (calls, cache hits, words, seconds), or None for another split. A failed
    ask leaves that row's rationale None (it is left out of the rationale task and asked again
    on the next run); the other rows keep theirs."""
    if split != "train":
        return None
    rows = [r for r in rows if r["teacher_method"] != PSEUDO_LABEL]
    labels = task.options.labels
    prompts = [rationale_prompt(task.cfg, task.body(r), labels[r["teacher_label"]]) for r in rows]
    calls, hits, started = cached.calls, cached.hits, time.perf_counter()
    with tqdm(total=len(prompts), desc=f"teach {task.name}/rationales", unit="item") as bar:
        answers = cached.summarize(prompts, rationale_version(task.cfg), bar.update)
    for row, answer in zip(rows, answers):
        text = "" if "error" in answer else answer["text"].strip()
        row["teacher_rationale"] = text or None
        row["teacher_rationale_finish_reason"] = answer.get("finish_reason") if text else None
    written = [r for r in rows if r["teacher_rationale"]]
    return {
        "rows": len(rows),
        "written": len(written),
        "failed": len(rows) - len(written),
        "cut_by_length": sum(r["teacher_rationale_finish_reason"] == "length" for r in written),
        "teacher_calls": cached.calls - calls,
        "cache_hits": cached.hits - hits,
        "words": sum(len(r["teacher_rationale"].split()) for r in written),
        "seconds": round(time.perf_counter() - started, 1),
    }


class Rationale(Summarization):
    def __init__(self, parent: Any):
        options = SummarizationOptions(document_field="document", reference_field=None)
        super().__init__(TaskConfig(name=parent.name + SUFFIX, kind=self.kind, data={}, options=options))
        self.parent = parent

    @property
    def prefix(self) -> str:
        return f"{self.parent.name} rationale: "

    @property
    def instruction(self) -> str:
        """What a teacher-layers student's decoder reads before the row (no label: it explains)."""
        choices = ", ".join(self.parent.options.labels.values())
        return f"Explain in one or two sentences which answer this text calls for ({choices}) and why."

    def check_pipeline(self, pipeline) -> None:
        """Its targets are the teacher's; there is no reference rationale."""

    def unlabeled_text(self) -> list[str]:
        return []

    def train_rows(self, pipeline) -> list[dict[str, Any]]:
        """The parent's train rows as summarization rows (the row's text as the label prompt
        shows it, its rationale as the teacher's summary), one per parent row, so train.train_rows
        draws the parent's very rows; those without a rationale are dropped with the targets."""
        return [
            {
                "id": row["id"],
                "document": self.parent.body(row),
                "reference": None,
                "teacher_summary": row.get("teacher_rationale"),
                "teacher_finish_reason": row.get("teacher_rationale_finish_reason"),
            }
            for row in self.parent.train_rows(pipeline)
        ]

    def tensors(self, rows, tokenizer, spec, train, codec=None):
        """As a summary's, without token-level KD (teach keeps no top-k for a rationale)."""
        return super().tensors(rows, tokenizer, spec, dataclasses.replace(train, token_kd_weight=0.0), codec)

    def _training_targets(self, rows, train):
        """The teacher's rationales whatever train.summary_targets says (none has a reference);
        a row the teacher gave none (a pseudo label, a failed ask) is excluded."""
        given = [r for r in rows if r["teacher_summary"]]
        cut = [r["teacher_finish_reason"] == "length" for r in given]
        kept = [r for r, c in zip(given, cut) if not (c and train.cut_summaries == "exclude")]
        finished = [r["teacher_finish_reason"] != "length" for r in kept]
        counts = {"cut": sum(cut), "excluded": len(rows) - len(kept)}
        return kept, [r["teacher_summary"] for r in kept], finished, counts
