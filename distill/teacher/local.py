"""A local transformers causal LM as the teacher.

Class distributions are exact, not parsed from generated text: one forward pass per
batch reads the next-token distribution after the forced "Answer:" prefix, at each
label's verbalizer token, renormalised over the label set. Prompts are batched in
length order, so a batch carries little padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from distill.assets import resolve_teacher
from distill.config import TeacherConfig
from distill.errors import DistillError
from distill.prompts import Prompt


def _fingerprint(path: str) -> str:
    """Model id for the cache: the name plus a hash of a local folder's config and weights."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        digest.update(file.name.encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class LocalTeacher:
    def __init__(self, cfg: TeacherConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        path = resolve_teacher(cfg.model)
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if cfg.device == "auto" else cfg.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        except OSError as e:
            raise DistillError(f"teacher.model {cfg.model!r}: cannot load ({e})") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # the last position is the next token for every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.id = f"local:{cfg.model}:{_fingerprint(path)}"
        self._stop_ids = sorted({self.tokenizer.eos_token_id} | self._end_of_turn_ids())

    def _end_of_turn_ids(self) -> set[int]:
        ids = set()
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return ids

    def decoding_params(self) -> dict[str, Any]:
        return {
            "max_input_tokens": self.cfg.max_input_tokens,
            "max_new_tokens": self.cfg.max_new_tokens,
            "dtype": self.cfg.dtype,
            "greedy": True,
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def usage(self) -> dict[str, Any]:
        return {}

    def _batched(
        self, prompts: Sequence[Prompt], answer: Callable[[list[Prompt]], list[dict[str, Any]]]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].user))
        for start in range(0, len(order), self.cfg.batch_size):
            batch = order[start : start + self.cfg.batch_size]
            yield from zip(batch, answer([prompts[i] for i in batch]))

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        label_ids = self.verbalizer_ids(verbalizers)  # fail before any batch for clashing verbalizers
        return self._batched(prompts, lambda batch: self.label_batch(batch, label_ids))

    def summarize(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
        return self._batched(prompts, self.summary_batch)

    def _render(self, prompt: Prompt) -> str:
        """Chat template when the model has one, so instruct models see their format."""
        body = self._fit(prompt)
        user = prompt.head + body + prompt.tail
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = user + "\n\n"
        return text + prompt.assistant_prefix

    def _fit(self, prompt: Prompt) -> str:
        """Shorten the body (the input, never the instruction) to fit max_input_tokens."""
        fixed = len(self.tokenizer(prompt.head + prompt.tail + prompt.assistant_prefix)["input_ids"]) + 32
        budget = self.cfg.max_input_tokens - fixed
        if budget < 16:
            raise DistillError(
                f"teacher.max_input_tokens {self.cfg.max_input_tokens} leaves no room for the input "
                f"after the {fixed}-token instruction; raise it or use fewer shots"
            )
        ids = self.tokenizer(prompt.body, add_special_tokens=False)["input_ids"]
        return prompt.body if len(ids) <= budget else self.tokenizer.decode(ids[:budget])

    def _encode(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        texts = [self._render(p) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def verbalizer_ids(self, verbalizers: Sequence[str]) -> list[int]:
        """The first token of each verbalizer as it follows 'Answer:' (with its leading space)."""
        prefix = self.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
        ids = []
        for word in verbalizers:
            full = self.tokenizer("Answer: " + word, add_special_tokens=False)["input_ids"]
            if full[: len(prefix)] != prefix or len(full) == len(prefix):
                raise DistillError(f"verbalizer {word!r} does not tokenize after 'Answer:'")
            ids.append(full[len(prefix)])
        if len(set(ids)) != len(ids):
            clash = [w for w, i in zip(verbalizers, ids) if ids.count(i) > 1]
            raise DistillError(f"verbalizers {clash} share their first token; choose distinct words")
        return ids

    @torch.inference_mode()
    def label_batch(self, prompts: Sequence[Prompt], verbalizer_ids: list[int]) -> list[dict[str, Any]]:
        label_ids = torch.tensor(verbalizer_ids, device=self.device)
        enc = self._encode(prompts)
        # Left padding shifts positions; rebuild them from the mask so padded rows match unpadded ones.
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = self.model(**enc, position_ids=positions).logits[:, -1].float()  # (batch, vocab)
        probs = logits.softmax(-1)[:, label_ids]  # (batch, labels)
        mass = probs.sum(-1, keepdim=True)
        distribution = probs / mass
        return [
            {"distribution": d.tolist(), "label_mass": float(m), "method": "verbalizer_logits"}
            for d, m in zip(distribution.cpu(), mass.cpu())
        ]

    @torch.inference_mode()
    def summary_batch(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        enc = self._encode(prompts)
        out = self.model.generate(
            **enc,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False,
            eos_token_id=self._stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]  # (batch, generated)
        results = []
        for row in new.tolist():
            stopped = any(t in self._stop_ids for t in row)
            if stopped:
                row = row[: min(row.index(t) for t in self._stop_ids if t in row)]
            text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
            results.append({"text": text, "finish_reason": "stop" if stopped else "length"})
        return results
