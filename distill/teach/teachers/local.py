"""A local transformers causal LM as the teacher.

Class distributions are exact, not parsed from generated text: the next-token distribution
after the forced "Answer:" prefix gives each label the summed probability of every vocabulary
token that spells the start of its verbalizer (``answers.match_label``, the rule the API teacher
applies to its ``top_logprobs``), renormalised over the label set.

Scoring runs only what the answer needs:

- each prompt is tokenized once: the rendered chat text as one string, with the body's character
  span, so an over-long body is cut at a token boundary without tokenizing again;
- the tokens every prompt of one call shares (chat-template start + instruction + shots) run once,
  and that KV cache is reused by every batch (``teacher.prefix_cache``);
- the base model runs on right-padded suffixes and the LM head is applied only at each row's last
  real position: (batch, hidden) → (batch, vocab), never (batch, seq, vocab).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from distill.core.assets import resolve_teacher
from distill.core.config import TeacherConfig
from distill.core.errors import ConfigError, DistillError
from distill.teach.prompts import Prompt
from distill.teach.teachers.answers import label_token_groups

LABEL_RULE = 2
"""Version of how a label's probability is read; part of every cache key, so answers written under
an older rule are asked again. 1: one exact first token per verbalizer. 2: every token
``match_label`` counts for the label, from an input tokenized once (body cut at a token boundary)."""

MIN_BODY_TOKENS = 16
"""An input shortened below this many tokens is no longer the input; such a config is an error."""


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


def distribution_from_token_logprobs(
    logprobs: torch.Tensor, groups: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class distribution from a next-token distribution.

    ``logprobs``: (batch, vocab) log-probabilities of the token after "Answer:"; ``groups``: per
    label, the token ids that count for it (``label_token_groups``). Returns the distribution
    (batch, labels), each label's summed probability renormalised over the labels, and the label
    mass (batch,), the probability of any label token. Summed in log space, so a label whose
    tokens all underflow in fp32 keeps its tiny share instead of a zero.
    """
    per_label = torch.stack([logprobs[:, list(ids)].logsumexp(-1) for ids in groups], dim=-1)
    return per_label.softmax(-1), per_label.logsumexp(-1).exp()


def _shared_length(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens every row shares, leaving each row at least one token to run."""
    # commonprefix compares only the lexicographic min and max, so it works on lists of ids too.
    return min(len(os.path.commonprefix(list(rows))), min(len(r) for r in rows) - 1)


@dataclass(frozen=True)
class _Frame:
    """The rendered text around a prompt's body, and the tokens of the part after it."""

    before: str
    after: str
    after_ids: list[int]


@dataclass(frozen=True)
class _Prefix:
    """The shared leading tokens of one call, run once: per layer, keys and values
    (1, kv_heads, length, head_dim)."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LocalOptions:
    """The local backend's own options: keys of ``teach.teacher`` when ``backend: local``."""

    batch_size: int = 8
    """Prompts per forward pass."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """The teacher's weights and activations."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when there is one."""
    prefix_cache: bool = True
    """Run the prompt start every prompt of a call shares (template, instruction, shots) once
    and reuse its KV cache for every batch. Same answers; off only to measure it."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("teach.teacher.batch_size: must be >= 1")


def local_options(cfg: TeacherConfig) -> LocalOptions:
    """A ``TeacherConfig``'s local options (their defaults where it was built without them)."""
    return cfg.options if cfg.options is not None else LocalOptions()


class LocalTeacher:
    name = "local"
    timed_locally = True
    Options = LocalOptions

    @classmethod
    def from_config(cls, cfg: TeacherConfig, state_dir: Path | None = None) -> LocalTeacher:
        return cls(cfg)

    @classmethod
    def check_config(cls, cfg: TeacherConfig) -> None:
        pass  # its options check themselves

    @classmethod
    def for_timing(cls, cfg: TeacherConfig, batch_size: int, device: str) -> LocalTeacher:
        """The teacher on eval's device in eval's batches, for the speed comparison."""
        timed = dataclasses.replace(local_options(cfg), batch_size=batch_size, device=device)
        return cls(dataclasses.replace(cfg, options=timed))

    @classmethod
    def vocabulary(cls, cfg: TeacherConfig) -> str | None:
        return cfg.model

    def __init__(self, cfg: TeacherConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.opts = opts = local_options(cfg)
        path = resolve_teacher(cfg.model)
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if opts.device == "auto" else opts.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, opts.dtype))
        except OSError as e:
            raise DistillError(f"teacher.model {cfg.model!r}: cannot load ({e})") from None
        if not self.tokenizer.is_fast:
            raise DistillError(f"teacher.model {cfg.model!r}: needs a fast tokenizer (tokenizer.json)")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.id = f"local:{cfg.model}:{_fingerprint(path)}"
        self._stop_ids = sorted({self.tokenizer.eos_token_id} | self._end_of_turn_ids())
        self._frames: dict[tuple[str, str, str], _Frame] = {}
        self._groups: dict[tuple[str, ...], list[list[int]]] = {}

    def _end_of_turn_ids(self) -> set[int]:
        ids = set()
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return ids

    def decoding_params(self) -> dict[str, Any]:
        params = {
            "max_input_tokens": self.cfg.max_input_tokens,
            "max_new_tokens": self.cfg.max_new_tokens,
            "dtype": self.opts.dtype,
            "greedy": True,
            "label_rule": LABEL_RULE,
        }
        # Only when asked, so text-only answers cached before the option existed stay valid.
        return params | ({"summary_top_k": self.cfg.summary_top_k} if self.cfg.summary_top_k else {})

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def usage(self) -> dict[str, Any]:
        return {}

    # Prompts → token ids

    def _frame(self, prompt: Prompt) -> _Frame:
        """The chat template (when the model has one) rendered around a marker in place of the body,
        once per (head, tail, assistant prefix)."""
        key = (prompt.head, prompt.tail, prompt.assistant_prefix)
        if key in self._frames:
            return self._frames[key]
        marker = "\x00body\x00"
        user = prompt.head + marker + prompt.tail
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = user + "\n\n"
        before, found, after = text.partition(marker)
        if not found:
            raise DistillError(f"teacher.model {self.cfg.model!r}: its chat template drops the user's text")
        frame = _Frame(before, after + prompt.assistant_prefix, self._ids(after + prompt.assistant_prefix))
        fixed = len(self._ids(before)) + len(frame.after_ids)
        if self.cfg.max_input_tokens - fixed < MIN_BODY_TOKENS:
            raise DistillError(
                f"teacher.max_input_tokens {self.cfg.max_input_tokens} leaves no room for the input "
                f"after the {fixed}-token instruction; raise it or use fewer shots"
            )
        self._frames[key] = frame
        return frame

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Per prompt, its token ids, at most max_input_tokens: the rendered text tokenized once; an
        over-long body loses its end (never the instruction or the text after the body)."""
        frames = [self._frame(p) for p in prompts]
        texts = [f.before + p.body + f.after for p, f in zip(prompts, frames)]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        limit = self.cfg.max_input_tokens
        rows = []
        for prompt, frame, ids, offsets in zip(prompts, frames, enc["input_ids"], enc["offset_mapping"]):
            if len(ids) > limit:
                body_end = len(frame.before) + len(prompt.body)
                # Tokens that end inside the body or before it; a token reaching into the text after
                # the body is dropped, which that text's own tokens (after_ids) then replace.
                within = sum(1 for _, end in offsets if end <= body_end)
                ids = ids[: min(limit - len(frame.after_ids), within)] + frame.after_ids
            rows.append(ids)
        return rows

    # Classification

    def label_groups(self, verbalizers: Sequence[str]) -> list[list[int]]:
        """Per label, the vocabulary ids that count for it (once per verbalizer set)."""
        key = tuple(verbalizers)
        if key not in self._groups:
            width = self.model.get_output_embeddings().weight.shape[0]  # logits per position
            vocab = self.tokenizer.convert_ids_to_tokens(list(range(min(len(self.tokenizer), width))))
            try:
                self._groups[key] = label_token_groups(vocab, verbalizers)
            except ValueError as e:
                raise DistillError(f"teacher.model {self.cfg.model!r}: {e}") from None
        return self._groups[key]

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        groups = self.label_groups(verbalizers)  # fail before any batch for impossible verbalizers
        batches = self.next_token_logprobs(prompts)

        def answers() -> Iterator[tuple[int, dict[str, Any]]]:
            for batch, logprobs in batches:
                distribution, mass = distribution_from_token_logprobs(logprobs, groups)
                for i, d, m in zip(batch, distribution.tolist(), mass.tolist()):
                    yield i, {"distribution": d, "label_mass": m, "method": "verbalizer_logits"}

        return answers()

    def next_token_logprobs(self, prompts: Sequence[Prompt]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Batch by batch: (indices into prompts, (batch, vocab) log-probabilities of the next token).

        Prompts are encoded (and bad configs fail) now; batches run as the iterator is consumed,
        in length order so a batch carries little padding.
        """
        rows = self.encode(prompts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))

        def batches() -> Iterator[tuple[list[int], torch.Tensor]]:
            if not rows:
                return
            prefix = self._prefix(rows[0][: _shared_length(rows)]) if self.opts.prefix_cache else None
            skip = prefix.length if prefix else 0
            for start in range(0, len(order), self.opts.batch_size):
                batch = order[start : start + self.opts.batch_size]
                yield batch, self._last_logprobs([rows[i][skip:] for i in batch], prefix)

        return batches()

    @torch.inference_mode()
    def _prefix(self, ids: list[int]) -> _Prefix | None:
        """Run the shared tokens once; None when there are none or the model's cache cannot be
        extended exactly (sliding-window layers drop old tokens)."""
        if not ids:
            return None
        out = self.model.base_model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        layers = out.past_key_values.layers
        if any(layer.is_sliding for layer in layers):
            return None
        return _Prefix(len(ids), [(layer.keys, layer.values) for layer in layers])

    def _expanded(self, prefix: _Prefix, batch: int) -> Any:
        from transformers import DynamicCache

        # A fresh cache per batch. Its first update concatenates the prefix with the batch's own
        # keys into new tensors, so the prefix tensors never change between batches.
        kv = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.kv]
        return DynamicCache(kv, config=self.model.config)

    @torch.inference_mode()
    def _last_logprobs(self, suffixes: list[list[int]], prefix: _Prefix | None) -> torch.Tensor:
        """Per row, the log-probabilities (batch, vocab) of the token after its last one.

        ``suffixes``: each row's ids after the shared prefix. Rows are right-padded, so every
        real token sits at its true position and attends to no padding (causal attention).
        """
        lengths = torch.tensor([len(s) for s in suffixes], device=self.device)  # (batch,)
        ids = torch.full((len(suffixes), int(lengths.max())), self.tokenizer.pad_token_id, device=self.device)
        for row, suffix in enumerate(suffixes):
            ids[row, : len(suffix)] = torch.tensor(suffix, device=self.device)
        mask = (torch.arange(ids.shape[1], device=self.device) < lengths[:, None]).long()  # (batch, width)
        cache = None
        if prefix:
            cache = self._expanded(prefix, len(suffixes))
            mask = torch.cat([mask.new_ones(len(suffixes), prefix.length), mask], dim=1)
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=cache is not None
        ).last_hidden_state  # (batch, width, hidden)
        last = hidden[torch.arange(len(suffixes), device=self.device), lengths - 1]  # (batch, hidden)
        logits = self.model.get_output_embeddings()(last).float()  # (batch, vocab)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.log_softmax(-1).cpu()

    # Summaries

    def summarize(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
        rows = self.encode(prompts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))

        def answers() -> Iterator[tuple[int, dict[str, Any]]]:
            for start in range(0, len(order), self.opts.batch_size):
                batch = order[start : start + self.opts.batch_size]
                yield from zip(batch, self._generate([rows[i] for i in batch]))

        return answers()

    @torch.inference_mode()
    def _generate(self, rows: list[list[int]]) -> list[dict[str, Any]]:
        # Left padding: generation appends at the right end of every row at once.
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, device=self.device)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, device=self.device)
            mask[i, width - len(row) :] = 1
        top_k = self.cfg.summary_top_k
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False,
            eos_token_id=self._stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=bool(top_k),
        )
        if top_k:
            # Raw logits of every step: (batch, generated, vocab) → top-k log-probabilities.
            logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
            top_lp, top_ids = logprobs.topk(top_k, dim=-1)
        results = []
        for b, row in enumerate(out.sequences[:, width:].tolist()):  # (batch, generated)
            stopped = any(t in self._stop_ids for t in row)
            end = min(row.index(t) for t in self._stop_ids if t in row) if stopped else len(row)
            text = self.tokenizer.decode(row[:end], skip_special_tokens=True).strip()
            answer: dict[str, Any] = {"text": text, "finish_reason": "stop" if stopped else "length"}
            if top_k:
                kept = end + 1 if stopped else end  # the stop token's distribution is taught too
                answer["tokens"] = {
                    "ids": row[:kept],
                    "top_ids": top_ids[b, :kept].tolist(),
                    "top_logprobs": [[round(v, 4) for v in lp] for lp in top_lp[b, :kept].tolist()],
                }
            results.append(answer)
        return results
