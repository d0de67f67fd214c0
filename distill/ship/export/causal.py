"""Summarization with a teacher-layers summarizer → the cut decoder as its source architecture
(``AutoModelForCausalLM``, ``pipeline("text-generation")``) with the decoder's tokenizer and chat
template, decoding as eval scored it (student.json ``decoding``; greedy for an older student).

A corpus vocabulary is mapped back to the full one (rows outside it zero, and
``generation_config.suppress_tokens`` keeps outputs inside it). The bridge (an encoder-dependent
vector added to every prompt embedding) has no input in a plain causal LM: a nonzero bridge is
exported as if zero, recorded ``"exact": false``, and measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from distill.ship.export.base import Exporter, compare_summaries, summary_decoding
from distill.student.summarizers.teacher_layers.decoder import prompt_parts

if TYPE_CHECKING:
    from distill.student.model import Student, StudentSpec
    from distill.tasks import Task


def recipe_prompt_ids(tokenizer: Any, before: str, after: str, document: str, max_document: int) -> list[int]:
    """The prompt as a user of the exported folder builds it (export.json ``prompt.input_ids``):
    each piece tokenized on its own, the document cut to ``max_document`` tokens."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return ids(before) + ids(document)[:max_document] + ids(after)


def _full_vocabulary(summarizer: Any, codec: Any) -> tuple[Any, list[int]]:
    """The summarizer's LM over the teacher's whole vocabulary, and the ids it may write
    (all, or the corpus vocabulary's kept ids: their rows are copied, the others are zero and
    suppressed at generation)."""
    from transformers import AutoModelForCausalLM

    lm = summarizer.lm
    if codec.vocab is None:
        return lm, list(range(lm.config.vocab_size))
    kept = summarizer.kept_ids  # student id i is teacher id kept[i]
    tok = codec.tokenizer
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.vocab_size = max(len(tok), int(kept.max()) + 1)
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, codec.end_id
    config.pad_token_id = tok.pad_token_id
    full = AutoModelForCausalLM.from_config(config).eval()
    state = lm.state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
        if key in state:
            rows = state[key].new_zeros((config.vocab_size, *state[key].shape[1:]))
            rows[kept] = state[key]
            state[key] = rows
    full.load_state_dict(state)
    return full, kept.tolist()


def _bridge_norm(summarizer: Any) -> float:
    bridge = summarizer.bridge
    if bridge is None:
        return 0.0
    return float(torch.cat([bridge.weight.flatten(), bridge.bias]).detach().norm())


def exported_causal_summaries(folder: Path, prompts: list[list[int]], batch: int = 8) -> list[str]:
    """Summaries of an exported causal LM (its generation config) from prompt ids, left-padded
    in batches as the student's eval pads them (so any difference is the model's, not the
    batching's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return causal_summaries(model, tok, prompts, batch)


def causal_summaries(model: Any, tok: Any, prompts: list[list[int]], batch: int = 8) -> list[str]:
    """Summaries from prompt ids (export.json ``prompt.input_ids``), left-padded in batches."""
    from distill.core.tensors import left_pad

    texts = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        ids, mask = left_pad(chunk, 0), left_pad([[1] * len(p) for p in chunk], 0)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask)
        texts += [t.strip() for t in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
    return texts


def pipeline_messages(tokenizer: Any, instruction: str, document: str, max_document: int) -> list[dict]:
    """The chat a text-generation pipeline user sends: the document cut to the student's length."""
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(ids) > max_document:
        document = tokenizer.decode(ids[:max_document])
    return [{"role": "user", "content": f"{instruction}\n\n{document}"}]


def _not_exact_because(summarizer: Any, kept: list[int], vocab_size: int, decoding: Any) -> list[str]:
    reasons = []
    if decoding.options.no_repeat_ngram_size:
        reasons.append(
            f"no_repeat_ngram_size {decoding.options.no_repeat_ngram_size}: the student's decoder, fed "
            "prompt embeddings, bans n-grams repeated within the summary; the exported model, fed "
            "the prompt's ids, also bans the summary repeating an n-gram of the prompt"
        )
    if _bridge_norm(summarizer) > 0:
        reasons.append(
            f"bridge: the student adds bridge(mean-pooled encoder state) to every prompt embedding "
            f"(weights' norm {_bridge_norm(summarizer):.4g}); a plain causal LM has no input for it, so "
            "the export decodes as if the bridge were zero"
        )
    if len(kept) < vocab_size:
        reasons.append(
            f"vocabulary: the student keeps {len(kept)} of {vocab_size} tokens and read any "
            "other token of a prompt spelled by its bytes; the export reads the token itself (its "
            "outputs stay inside the kept ids through generation_config.suppress_tokens)"
        )
    return reasons


def _prompt_record(tokenizer: Any, instruction: str, max_document: int) -> dict[str, Any]:
    before, after = prompt_parts(tokenizer, instruction)
    return {
        "instruction": instruction,
        "messages": [{"role": "user", "content": instruction + "\n\n{document}"}],
        "text_before_document": before,
        "text_after_document": after,
        "document_max_tokens": max_document,
        "input_ids": (
            "tok(text_before_document, add_special_tokens=False).input_ids + "
            "tok(document, add_special_tokens=False).input_ids[:document_max_tokens] + "
            "tok(text_after_document, add_special_tokens=False).input_ids"
        ),
        "note": (
            "the student read exactly input_ids (each piece tokenized on its own); the "
            "text-generation pipeline with `messages` (document cut to document_max_tokens "
            "first) tokenizes the whole rendered chat at once, which can merge tokens across "
            "the instruction/document boundary differently: see check.pipeline_prompt_matches"
        ),
    }


class CausalExport(Exporter):
    name: ClassVar[str] = "causal_lm"

    @classmethod
    def probe_length(cls, spec: StudentSpec) -> int:
        return spec.max_document_length

    @classmethod
    def write(
        cls, student: Student, tokenizer: Any, task: Task, folder: Path, max_new_tokens: int | None
    ) -> dict[str, Any]:
        from transformers import GenerationConfig

        summarizer, codec, spec = student.summarizer, student.codec, student.spec
        decoding = summary_decoding(spec, task.name, max_new_tokens)
        instruction = spec.tasks[task.name]["instruction"]
        model, kept = _full_vocabulary(summarizer, codec)
        stops = codec.teacher(codec.stop_student_ids)
        outside = sorted(set(range(model.config.vocab_size)) - set(kept))
        model.save_pretrained(folder)
        GenerationConfig(
            **decoding.generation(), eos_token_id=stops, pad_token_id=stops[0],
            bos_token_id=codec.tokenizer.bos_token_id, suppress_tokens=outside or None,
        ).save_pretrained(folder)  # fmt: skip
        codec.tokenizer.save_pretrained(folder)
        return {
            "kind": task.kind,
            "summarizer": spec.summarizer,
            "architecture": type(model).__name__,
            "loads_with": "transformers.pipeline('text-generation', model=DIR) / AutoModelForCausalLM",
            "decoder_source": spec.decoder_source,
            "decoder_layers": spec.decoder_layers,
            "vocabulary": {"kept": len(kept), "of": model.config.vocab_size},
            "prompt": _prompt_record(codec.tokenizer, instruction, spec.max_document_length),
            "call": {"return_full_text": False},
            "decoding": decoding.record(),
            "generation": {**decoding.generation(), "eos_token_id": stops},
            "not_exact_because": _not_exact_because(summarizer, kept, model.config.vocab_size, decoding),
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
        codec, spec = student.codec, student.spec
        decoding = summary_decoding(spec, task.name, max_new_tokens)
        instruction = spec.tasks[task.name]["instruction"]
        before, after = prompt_parts(codec.tokenizer, instruction)
        n = spec.max_document_length
        prompts = [recipe_prompt_ids(codec.tokenizer, before, after, r["document"], n) for r in rows]
        read = [codec.teacher(codec.prompt_ids(instruction, r["document"], n)) for r in rows]
        chats = [
            codec.tokenizer.apply_chat_template(
                pipeline_messages(codec.tokenizer, instruction, r["document"], n),
                tokenize=True, add_generation_prompt=True, return_dict=True,
            )["input_ids"]
            for r in rows
        ]  # fmt: skip
        theirs = exported_causal_summaries(folder, prompts)
        return {
            "recipe_prompt_matches": sum(a == b for a, b in zip(prompts, read)),
            "pipeline_prompt_matches": sum(a == b for a, b in zip(chats, read)),
            **compare_summaries(student, tokenizer, task, rows, decoding, theirs),
        }
