"""Classification (and sentence-pair) tasks → a sequence classifier for
``pipeline("text-classification")``.

The student's head reads the encoder's states *mean-pooled over real tokens*; a stock
``BertForSequenceClassification`` reads the CLS pooler (dense + tanh on the first token), and no
transformers config option switches a BERT to mean pooling, so the folder ships its own modeling
file (modeling_distill.py beside this one, named in ``auto_map``; load with
``trust_remote_code=True``, offline). Its config has a model type of its own, so loading it
*without* trust_remote_code fails loudly instead of silently building a stock classifier from
the same weight names. Every sharing mode exports exactly: the folder carries the task's own
encoder (its copy or branch under soft or branch sharing) and, under shared-private or
adversarial sharing, its private encoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from distill.ship.export.base import Exporter, save_tokenizer

if TYPE_CHECKING:
    from distill.student.model import Student, StudentSpec
    from distill.tasks import Task

MODELING_FILE = "modeling_distill.py"
MODELING_SOURCE = Path(__file__).with_name(MODELING_FILE)
"""The modeling file every classifier folder gets a copy of."""
PROB_TOLERANCE = 1e-4
"""Largest |exported − student| class probability still called the same model (float noise is ~1e-7)."""


def classifier_config(
    student: Student, task: str, labels: list[str], parts: dict[str, Any]
) -> dict[str, Any]:
    """config.json: the encoder's own fields, flat, plus what modeling_distill.py reads
    (``parts``: the sharing mode's ``export_state``)."""
    spec, encoder = student.spec, parts["encoder"]
    config = encoder.config.to_dict()
    private = parts["private_config"] and {**parts["private_config"], "dropout": spec.dropout}
    config.update(
        model_type="distill_mean_pool",
        architectures=["MeanPoolForSequenceClassification"],
        auto_map={
            "AutoConfig": "modeling_distill.MeanPoolConfig",
            "AutoModelForSequenceClassification": "modeling_distill.MeanPoolForSequenceClassification",
        },
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
        distill_encoder_type=encoder.config.model_type,
        distill_private=private,
        distill_dropout=spec.dropout,
        distill_task=task,
    )
    return config


def exported_probs(
    folder: Path, rows: list[dict[str, Any]], labels: list[str], pairs: bool = False
) -> np.ndarray:
    """(n, labels) probabilities of an exported classifier through ``pipeline``, in ``labels`` order."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True, device="cpu")
    return pipeline_probs(classify, rows, labels, pairs=pairs)


def pipeline_probs(
    classify: Any, rows: list[dict[str, Any]], labels: list[str], batch: int = 1, pairs: bool = False
) -> np.ndarray:
    """(n, labels) probabilities from a text-classification pipeline, called as export.json says
    (``pairs``: a sentence-pair task, each row's "text" and "text_pair")."""
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} if pairs else r["text"] for r in rows]
    out = classify(inputs, top_k=None, truncation=True, batch_size=batch)
    return np.array([[{d["label"]: d["score"] for d in row}[label] for label in labels] for row in out])


class ClassifierExport(Exporter):
    name: ClassVar[str] = "classifier"

    @classmethod
    def probe_length(cls, spec: StudentSpec) -> int:
        return spec.max_length

    @classmethod
    def write(
        cls, student: Student, tokenizer: Any, task: Task, folder: Path, max_new_tokens: int | None
    ) -> dict[str, Any]:
        from safetensors.torch import save_file

        spec = student.spec
        labels = spec.tasks[task.name]["labels"]
        folder.mkdir(parents=True)
        shutil.copyfile(MODELING_SOURCE, folder / MODELING_FILE)
        parts = student.sharing.export_state(student.encoder, task.name)
        config = classifier_config(student, task.name, labels, parts)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {f"encoder.{k}": v for k, v in parts["encoder"].state_dict().items()}
        head = student.heads[task.name][1]  # Sequential(Dropout, Linear)
        state |= {"classifier.weight": head.weight, "classifier.bias": head.bias}
        if parts["private"] is not None:
            state |= {f"private.{k}": v for k, v in parts["private"].state_dict().items()}
        tensors = {
            k: v.detach().float().clone().contiguous() for k, v in state.items()
        }  # a copy each: shared embeddings are written twice
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        save_tokenizer(tokenizer, folder, spec.max_length)
        return {
            "kind": task.kind,
            "loads_with": "transformers.pipeline('text-classification', model=DIR, trust_remote_code=True)",
            "custom_code": MODELING_FILE,
            "why_custom_code": (
                "the student's head reads mean-pooled encoder states; stock *ForSequenceClassification "
                "models read the CLS pooler, and no config option selects mean pooling"
            ),
            "call": {"top_k": None, "truncation": True},
            "max_length": spec.max_length,
            "labels": labels,
            "sharing": spec.sharing,
        }

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
        ours = task.student_probs(student, tokenizer, rows, 8)
        theirs = exported_probs(folder, rows, student.spec.tasks[task.name]["labels"], task.pairs)
        diff = float(np.abs(ours - theirs).max())
        return {
            "rows": len(rows),
            "max_abs_prob_diff": diff,
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
            "same": diff <= PROB_TOLERANCE,
        }
