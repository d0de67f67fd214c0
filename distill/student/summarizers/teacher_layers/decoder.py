"""The teacher-layers summarizer: a decoder-only student cut from the teacher's own layers.

A pretrained decoder already writes English and copies from its context, which a decoder
warm-started from an encoder (BERT2BERT) must learn from a few hundred summaries. The cut:

- **Layers.** The first and last teacher layers are always kept (the embedding's interface and
  the LM head's); the middle ones are chosen by a measured criterion, block influence (Men et al.
  2024, ShortGPT): 1 − mean cos(input, output) of each layer over training prompts. The layers
  that change the residual stream most are kept. ``uniform`` spaces them evenly instead.
- **Vocabulary.** The teacher's output layer over 151k tokens would cost the student more than
  its layers; the student's vocabulary is the teacher tokens its training corpus uses (prompts,
  summaries, the teacher's top-k alternatives) plus the 256 single-byte tokens. A token outside
  it is spelled by its bytes, so any text still encodes (``VocabMap``); student ids map back to
  teacher ids to decode, and to compare with the teacher's token distributions.
- **Sharing.** The summarizer is the summarization module over the shared encoder: the mean-pooled
  shared state, through a zero-initialised linear ``bridge``, is added to every prompt token's
  embedding (at step 0 the student is exactly the cut teacher), so the summarization
  loss reaches the shared encoder like every task's loss. The document itself the decoder reads in
  its own tokens, through the teacher's prompt, which is what lets it copy from step 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from distill.core.errors import DistillError
from distill.core.losses import IGNORE_INDEX
from distill.core.tokens import byte_level_alphabet
from distill.student.summarizers.teacher_layers.options import teacher_layers_options

MARKER = "\u0000DOCUMENT\u0000"


def _byte_tokens() -> list[str]:
    """Byte-level BPE's printable stand-in for each byte 0..255, in byte order."""
    table = byte_level_alphabet()
    return [table[b] for b in range(256)]


class VocabMap:
    """Student vocabulary: ``kept`` teacher ids, in order (student id i is teacher id kept[i])."""

    def __init__(self, kept: Sequence[int], tokenizer: Any):
        self.kept = list(kept)
        self.index = {t: s for s, t in enumerate(self.kept)}
        symbols = _byte_tokens()
        # Bytes no token uses (invalid UTF-8 leads, some controls) may be missing from the vocabulary.
        byte_ids = [
            None if i == tokenizer.unk_token_id else i for i in tokenizer.convert_tokens_to_ids(symbols)
        ]
        if sum(i is None for i in byte_ids) > 64:
            raise DistillError(
                "train.student.decoder_vocab: corpus needs a byte-level BPE tokenizer (GPT-2 style); "
                "use decoder_vocab: full for this teacher"
            )
        self.byte_student = [None if i is None else self.index.get(i) for i in byte_ids]
        self._byte_of = {c: b for b, c in enumerate(symbols)}
        self._tokenizer = tokenizer

    @classmethod
    def from_corpus(cls, tokenizer: Any, ids: Iterable[int]) -> VocabMap:
        """The corpus ids, every byte token and the tokenizer's special tokens, sorted."""
        byte_ids = tokenizer.convert_tokens_to_ids(_byte_tokens())
        kept = set(ids) | {i for i in byte_ids if i not in (None, tokenizer.unk_token_id)}
        kept |= set(tokenizer.all_special_ids)
        return cls(sorted(kept), tokenizer)

    def to_student(self, teacher_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for t in teacher_ids:
            s = self.index.get(t)
            if s is not None:
                out.append(s)
                continue
            symbol = self._tokenizer.convert_ids_to_tokens(t)
            out += [self.byte_student[self._byte_of[c]] for c in symbol]  # spelled by its bytes
        return out

    def to_teacher(self, student_ids: Sequence[int]) -> list[int]:
        return [self.kept[s] for s in student_ids]


def prompt_parts(tokenizer: Any, instruction: str) -> tuple[str, str]:
    """The text before and after the document in a summarization prompt: the tokenizer's chat
    template around the instruction (or a plain "Summary:" frame without one)."""
    content = f"{instruction}\n\n{MARKER}"
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = content + "\n\nSummary:"
    before, after = text.split(MARKER)
    return before, after


class DecoderCodec:
    """Text ↔ student ids for the teacher-layers summarizer: the teacher's prompt rendering
    (its chat template around the task's instruction), targets, and the teacher's own tokens."""

    def __init__(self, tokenizer: Any, vocab: VocabMap | None):
        self.tokenizer = tokenizer
        self.vocab = vocab
        candidates = {tokenizer.eos_token_id} | {
            tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")
        }
        self.stop_ids = sorted(candidates - {None, tokenizer.unk_token_id})

    @property
    def stop_student_ids(self) -> list[int]:
        """The stop tokens as student ids (those the student's vocabulary has)."""
        if self.vocab is None:
            return list(self.stop_ids)
        return [self.vocab.index[t] for t in self.stop_ids if t in self.vocab.index]

    def student(self, teacher_ids: Sequence[int]) -> list[int]:
        return list(teacher_ids) if self.vocab is None else self.vocab.to_student(teacher_ids)

    def teacher(self, student_ids: Sequence[int]) -> list[int]:
        return list(student_ids) if self.vocab is None else self.vocab.to_teacher(student_ids)

    @property
    def end_id(self) -> int:
        """The token a finished summary ends with (the teacher's end of turn)."""
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        return (
            end
            if isinstance(end, int) and end != self.tokenizer.unk_token_id
            else self.tokenizer.eos_token_id
        )

    def prompt_teacher_ids(self, instruction: str, document: str, max_document_tokens: int) -> list[int]:
        """The teacher's own prompt (chat template, instruction, document cut to
        ``max_document_tokens``) as teacher ids."""
        tok = self.tokenizer
        before, after = prompt_parts(tok, instruction)
        body = tok(document, add_special_tokens=False)["input_ids"][:max_document_tokens]
        return (
            tok(before, add_special_tokens=False)["input_ids"]
            + body
            + tok(after, add_special_tokens=False)["input_ids"]
        )

    def prompt_ids(self, instruction: str, document: str, max_document_tokens: int) -> list[int]:
        return self.student(self.prompt_teacher_ids(instruction, document, max_document_tokens))

    def target_teacher_ids(self, text: str, finished: bool, max_length: int) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (
            ids[: max_length - 1] + [self.end_id] if finished and len(ids) < max_length else ids[:max_length]
        )

    def decode(self, student_ids: Sequence[int]) -> str:
        ids = self.teacher(student_ids)
        stops = [i for i, t in enumerate(ids) if t in self.stop_ids]
        return self.tokenizer.decode(ids[: stops[0]] if stops else ids, skip_special_tokens=True).strip()


def block_influence(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Per layer, 1 − mean cosine(input, output) over real tokens (ShortGPT's block influence).

    ``batches``: (input_ids, attention_mask), each (batch, seq). The last layer's output in
    ``hidden_states`` is after the final norm; it is always kept, so its score only ranks last.
    """
    totals: torch.Tensor | None = None
    count = 0.0
    with torch.inference_mode():
        for ids, mask in batches:
            states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            real = mask.bool()
            cos = torch.stack(
                [
                    nn.functional.cosine_similarity(a[real], b[real], dim=-1).sum()
                    for a, b in zip(states, states[1:])
                ]
            )
            totals = cos if totals is None else totals + cos
            count += real.sum().item()
    assert totals is not None
    return (1.0 - totals / count).tolist()


def choose_layers(
    total: int, keep: int, criterion: str, influence: Sequence[float] | None = None
) -> list[int]:
    """``keep`` of ``total`` layer indices: the first and the last, and between them the ones with
    the highest block influence, or evenly spaced ones (``uniform``)."""
    if not 2 <= keep <= total:
        raise DistillError(
            f"train.student.decoder_layers: {keep} must be within [2, {total}] (the teacher's layers)"
        )
    if keep == total:
        return list(range(total))
    if criterion == "uniform":
        middle = [round(i * (total - 1) / (keep - 1)) for i in range(1, keep - 1)]
    else:
        assert influence is not None and len(influence) == total
        middle = sorted(sorted(range(1, total - 1), key=lambda i: -influence[i])[: keep - 2])
    return [0, *middle, total - 1]


def cut_config(teacher_config: Any, layers: Sequence[int], vocab_size: int) -> Any:
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [teacher_config.layer_types[i] for i in layers]
    if vocab_size != teacher_config.vocab_size:
        # Teacher ids mean nothing in the cut vocabulary; generation is given the student's own.
        config.pad_token_id = config.bos_token_id = config.eos_token_id = None
    config.vocab_size = vocab_size
    config.tie_word_embeddings = False
    config.use_cache = True
    return config


class CausalSummarizer(nn.Module):
    """lm: a causal LM over the student vocabulary; bridge: shared features → soft tokens."""

    def __init__(self, config: Any, encoder_hidden: int, bridge: bool):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.lm = AutoModelForCausalLM.from_config(config)
        self.bridge = nn.Linear(encoder_hidden, config.hidden_size) if bridge else None
        if self.bridge is not None:
            nn.init.zeros_(self.bridge.weight)
            nn.init.zeros_(self.bridge.bias)
        # Student id i is teacher id kept_ids[i]; saved with the weights.
        self.register_buffer("kept_ids", torch.arange(config.vocab_size), persistent=True)

    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        layers: Sequence[int],
        kept: Sequence[int] | None,
        encoder_hidden: int,
        bridge: bool,
    ) -> CausalSummarizer:
        """Copy the teacher's embeddings and output rows of ``kept`` (all when None), its ``layers``
        in order, and its final norm."""
        vocab = torch.tensor(kept) if kept is not None else torch.arange(teacher.config.vocab_size)
        model = cls(cut_config(teacher.config, layers, len(vocab)), encoder_hidden, bridge)
        source = teacher.state_dict()
        state = {}
        for name in model.lm.state_dict():
            if name.startswith("model.layers."):
                j, rest = name[len("model.layers.") :].split(".", 1)
                state[name] = source[f"model.layers.{layers[int(j)]}.{rest}"]
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                full = source.get(name, source["model.embed_tokens.weight"])  # tied teachers
                state[name] = full[vocab]
            else:
                state[name] = source[name]
        model.lm.load_state_dict(state)
        model.kept_ids.copy_(vocab)
        return model

    def _sequence(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pooled: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (batch, P, hidden) of the left-padded prompt, each plus bridge(pooled): the
        shared encoder's view of the document, added where the decoder reads the document."""
        embeds = self.lm.get_input_embeddings()(prompt_ids)
        if self.bridge is None or pooled is None:
            return embeds, prompt_mask
        return embeds + self.bridge(pooled).unsqueeze(1).to(embeds.dtype), prompt_mask

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        pooled: torch.Tensor | None,
        target_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced logits (batch, target_len, vocab) of each target token.

        prompt_ids/mask: (batch, P), left-padded; pooled: (batch, encoder_hidden); target_ids:
        (batch, T) with IGNORE_INDEX at padding. Position ids count real tokens only, so a
        left-padded row sees the positions it would alone.
        """
        prefix, mask = self._sequence(prompt_ids, prompt_mask, pooled)
        real = target_ids != IGNORE_INDEX
        targets = self.lm.get_input_embeddings()(torch.where(real, target_ids, 0))
        embeds = torch.cat([prefix, targets[:, :-1]], 1)
        full_mask = torch.cat([mask, real[:, :-1].long()], 1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last T positions predict a target: the LM head runs on those alone.
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions,
            logits_to_keep=target_ids.shape[1],
        )
        return out.logits  # (batch, T, vocab)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        pooled: torch.Tensor | None,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        **decoding: Any,
    ) -> torch.Tensor:
        """(batch, new) student ids; ``decoding``: num_beams, no_repeat_ngram_size, length_penalty."""
        embeds, mask = self._sequence(prompt_ids, prompt_mask, pooled)
        return self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=list(stop_ids)[0],
            **decoding,
        )


def codec_for(tokenizer: Any, summarizer: CausalSummarizer) -> DecoderCodec:
    """The codec of a saved summarizer: its vocabulary is the ``kept_ids`` saved with it."""
    kept = summarizer.kept_ids.tolist()
    full = kept == list(range(len(kept)))
    return DecoderCodec(tokenizer, None if full else VocabMap(kept, tokenizer))


INFLUENCE_ROWS = 16
"""Training prompts block influence is measured on."""


def teacher_targets(codec: DecoderCodec, row: dict[str, Any], max_length: int) -> list[int]:
    """The teacher's summary as teacher ids: its own tokens when teach kept them, else the text
    re-tokenized (ending in the end token only if the teacher finished it)."""
    tokens = row.get("teacher_tokens")
    if tokens:
        ids = list(tokens["ids"])
        # An API answer has no token for its stop: a finished summary still ends in one.
        if row["teacher_finish_reason"] == "stop" and (not ids or ids[-1] not in codec.stop_ids):
            ids.append(codec.end_id)
        return ids if len(ids) <= max_length else ids[:max_length]
    return codec.target_teacher_ids(
        row["teacher_summary"], row["teacher_finish_reason"] != "length", max_length
    )


def cut_teacher(
    cfg: Any, rows: Sequence[tuple[str, dict[str, Any]]], encoder_hidden: int, extra_text: Sequence[str] = ()
) -> tuple[CausalSummarizer, DecoderCodec, list[int]]:
    """Cut the summarizer from the teacher-layers options' ``decoder_source``; ``rows``:
    (instruction, teach train row) pairs, the corpus its vocabulary and layer choice are measured
    on; ``extra_text``: more text whose tokens the vocabulary must hold (the warm-up's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.core.assets import resolve_teacher
    from distill.core.tensors import length_mask, pad

    options = teacher_layers_options(cfg)
    assert options.decoder_source is not None
    path = resolve_teacher(options.decoder_source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except OSError as e:
        raise DistillError(
            f"train.student.decoder_source {options.decoder_source!r}: cannot load ({e})"
        ) from None
    plain = DecoderCodec(tokenizer, None)
    prompts = [plain.prompt_teacher_ids(i, r["document"], cfg.max_document_length) for i, r in rows]
    if not prompts and (options.decoder_vocab == "corpus" or options.layer_choice == "block_influence"):
        raise DistillError(
            "train.student.summarizer: teacher_layers measures its cut on training rows; none given"
        )
    vocab = None
    if options.decoder_vocab == "corpus":
        ids = {t for p in prompts for t in p}
        if extra_text:
            ids.update(
                t for text in tokenizer(list(extra_text), add_special_tokens=False)["input_ids"] for t in text
            )
        for _, r in rows:
            ids.update(teacher_targets(plain, r, cfg.max_summary_length))
            if r.get("reference"):  # a reference-trained student (the gold-only baseline) writes these
                ids.update(plain.target_teacher_ids(r["reference"], True, cfg.max_summary_length))
            ids.update(t for top in (r.get("teacher_tokens") or {}).get("top_ids", []) for t in top)
        vocab = VocabMap.from_corpus(tokenizer, ids)
    influence = None
    total = teacher.config.num_hidden_layers
    if options.layer_choice == "block_influence" and options.decoder_layers < total:
        sample = prompts[:INFLUENCE_ROWS]
        ids, mask = pad(sample, 0), length_mask(sample)
        influence = block_influence(
            teacher.model, [(ids[i : i + 4], mask[i : i + 4]) for i in range(0, len(sample), 4)]
        )
    layers = choose_layers(total, options.decoder_layers, options.layer_choice, influence)
    summarizer = CausalSummarizer.from_teacher(
        teacher, layers, vocab.kept if vocab else None, encoder_hidden, options.bridge
    )
    return summarizer, DecoderCodec(tokenizer, vocab), layers
