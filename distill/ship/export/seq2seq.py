"""Summarization with a BERT2BERT summarizer → the student's ``EncoderDecoderModel``
(``AutoModelForSeq2SeqLM``) with its generation config: the decoding eval scored (student.json
``decoding``), or greedy for an older student. transformers 5 removed the ``summarization``
pipeline, so the folder is used through ``generate``; the task prefix is in ``config.prefix``
and export.json. A private-sharing student's decoder reads shared + private states, which the
stock model cannot: refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from distill.ship.export.base import (
    Exporter,
    compare_summaries,
    save_tokenizer,
    summary_decoding,
    update_json,
)

if TYPE_CHECKING:
    from distill.student.model import Student, StudentSpec
    from distill.tasks import Task


def exported_seq2seq_summaries(folder: Path, documents: list[str], batch: int = 8) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return seq2seq_summaries(AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), tok, documents, batch)


def seq2seq_summaries(model: Any, tok: Any, documents: list[str], batch: int = 8) -> list[str]:
    """Summaries of an exported EncoderDecoderModel (its generation config), called as
    export.json says."""
    texts = []
    for start in range(0, len(documents), batch):
        chunk = [model.config.prefix + d for d in documents[start : start + batch]]
        inputs = tok(chunk, truncation=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs)
        texts += [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    return texts


class Seq2SeqExport(Exporter):
    name: ClassVar[str] = "seq2seq"

    @classmethod
    def refusal(cls, spec: StudentSpec, task: Task) -> str | None:
        if spec.sharing_class.reads_shared_encoder:
            return None
        return (
            f"a BERT2BERT summarizer under sharing {spec.sharing!r} reads its task's own encoder "
            "states (private, copied or branched), which the stock EncoderDecoderModel of the shared "
            "encoder cannot compute; export the classification tasks alone (--task)"
        )

    @classmethod
    def probe_length(cls, spec: StudentSpec) -> int:
        return spec.max_document_length

    @classmethod
    def write(
        cls, student: Student, tokenizer: Any, task: Task, folder: Path, max_new_tokens: int | None
    ) -> dict[str, Any]:
        spec = student.spec
        assert (
            spec.sharing_class.reads_shared_encoder
        )  # refused: the decoder reads the task's own encoder states
        decoding = summary_decoding(spec, task.name, max_new_tokens)
        model = student.backbone
        prefix = spec.tasks[task.name]["prefix"]
        model.save_pretrained(folder)
        # The prefix as metadata (transformers 5 has no summarization pipeline to apply it), and
        # the decoding eval scored; written into the files, the student stays untouched.
        update_json(folder / "config.json", prefix=prefix)
        generation = copy.deepcopy(model.generation_config)
        generation.update(**decoding.generation())
        generation.save_pretrained(folder)
        save_tokenizer(tokenizer, folder, spec.max_document_length)
        return {
            "kind": task.kind,
            "summarizer": spec.summarizer,
            "loads_with": "transformers.AutoModelForSeq2SeqLM.from_pretrained(DIR) (EncoderDecoderModel)",
            "why_not_pipeline": "transformers 5 removed the summarization pipeline; call generate",
            "prefix": prefix,
            "max_document_length": spec.max_document_length,
            "usage": (
                "tok = AutoTokenizer.from_pretrained(DIR); "
                "model = AutoModelForSeq2SeqLM.from_pretrained(DIR); "
                "ids = model.generate(**tok([model.config.prefix + document], truncation=True, "
                "return_tensors='pt')); tok.decode(ids[0], skip_special_tokens=True).strip()"
            ),
            "decoding": decoding.record(),
            "generation": {
                **decoding.generation(),
                "eos_token_id": generation.eos_token_id,
                "pad_token_id": generation.pad_token_id,
            },
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
        decoding = summary_decoding(student.spec, task.name, max_new_tokens)
        theirs = exported_seq2seq_summaries(folder, [r["document"] for r in rows])
        return compare_summaries(student, tokenizer, task, rows, decoding, theirs)
