"""Classification of a pair of texts (paraphrase, entailment): the teacher reads both as
"Text A / Text B", the student reads them as one sequence with the tokenizer's separator
between them and segment ids (token_type_ids) telling them apart.

This file is the whole kind: everything else is inherited from single-text classification.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from distill.core.data import Example
from distill.core.errors import ConfigError
from distill.tasks.classification import Classification, ClassificationOptions


@dataclass
class SentencePairOptions(ClassificationOptions):
    text_pair_field: str | None = None
    """The second text column (required)."""


class SentencePair(Classification):
    kind = "sentence_pair"
    pairs = True
    Options = SentencePairOptions

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if not cfg.options.text_pair_field:
            raise ConfigError(
                f"tasks.{cfg.name}.text_pair_field: a sentence_pair task needs the second text's field"
            )

    @classmethod
    def spec_options(cls, entry):
        return replace(super().spec_options(entry), text_pair_field="text_pair")

    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        return {
            **super().example(row, index, where),
            "text_pair": self._text(row, self.options.text_pair_field, where, index),
        }

    def data_row(self, example: dict[str, Any]) -> dict[str, Any]:
        return {**super().data_row(example), self.options.text_pair_field: example["text_pair"]}

    def body(self, example: Example) -> str:
        return f"Text A: {example['text']}\nText B: {example['text_pair']}"

    def probe_row(self, text: str) -> dict[str, Any]:
        return {"text": text, "text_pair": text[::-1]}

    def content_free_example(self, text: str, index: int) -> Example:
        return {**super().content_free_example(text, index), "text_pair": text}

    def encode(self, rows, tokenizer, max_length):
        encoded = tokenizer(
            [r["text"] for r in rows], [r["text_pair"] for r in rows], truncation=True, max_length=max_length
        )
        out = {"input_ids": encoded["input_ids"]}
        if "token_type_ids" in encoded:
            out["token_type_ids"] = encoded["token_type_ids"]
        return out
