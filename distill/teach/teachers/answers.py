"""How an OpenAI-compatible answer becomes a class distribution or a summary.

Pure functions over the JSON the endpoint returned; the rules are the same for online
requests and Batch API results.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

from distill.core.errors import DistillError
from distill.core.tokens import byte_level_alphabet


class ItemFailed(Exception):
    """This item cannot be answered; the run goes on with the others."""


class Malformed(ItemFailed):
    """An answer that cannot be used as given (retried a bounded number of times)."""


class NoLogprobs(Exception):
    """The endpoint ignored the logprobs request."""


def normalize_token(token: str) -> str:
    """' Great', 'great.', 'Ġgreat' → 'great'."""
    return token.replace("Ġ", " ").replace("▁", " ").strip().strip(string.punctuation).lower()


def match_label(token: str, verbalizers: Sequence[str]) -> int | None:
    """The one label whose verbalizer starts with this token, or None (no match, or several).

    This is the single definition of "the teacher answered label L" for every backend: a
    label's probability is the summed probability of every answer token that spells the
    start of its verbalizer, in any case, with or without a leading space or punctuation
    ('great', ' Great', 'Ġgreat', 'gr' all count for the label 'great'). The local teacher
    sums over its whole vocabulary (``label_token_groups``); an API teacher over the
    ``top_logprobs`` it was given (``distribution_from_logprobs``).
    """
    word = normalize_token(token)
    if not word:
        return None
    hits = [i for i, v in enumerate(verbalizers) if normalize_token(v).startswith(word)]
    return hits[0] if len(hits) == 1 else None


def label_token_groups(tokens: Sequence[str], verbalizers: Sequence[str]) -> list[list[int]]:
    """Per label, the indices of ``tokens`` (a vocabulary, id → token string) that count for it
    under ``match_label``. Raises ValueError naming a label no token can start."""
    groups: list[list[int]] = [[] for _ in verbalizers]
    for token_id, token in enumerate(tokens):
        label = match_label(token or "", verbalizers)
        if label is not None:
            groups[label].append(token_id)
    empty = [v for v, g in zip(verbalizers, groups) if not g]
    if empty:
        raise ValueError(f"no vocabulary token starts the verbalizer(s) {empty}")
    return groups


def distribution_from_logprobs(content: list[dict[str, Any]], verbalizers: Sequence[str]) -> dict[str, Any]:
    """``content``: the choice's ``logprobs.content`` (one entry per answer token).

    A label none of whose spellings is among the listed alternatives still had some
    probability, at most the smallest one listed (and at most the unlisted remainder); it
    gets that bound rather than a zero that would make it impossible (infinite KL, and a
    prior correction that divides by zero). Such labels are named in ``unlisted``.
    """
    for position in content:
        chosen = normalize_token(position.get("token") or "")
        if chosen in ("", "answer"):
            continue  # "Answer:" echoed, or a blank token, before the label word
        listed = [(alt["token"], math.exp(alt["logprob"])) for alt in position.get("top_logprobs") or []]
        mass = [0.0] * len(verbalizers)
        for token, p in listed:
            label = match_label(token, verbalizers)
            if label is not None:
                mass[label] += p
        total = sum(mass)
        if total <= 0.0:
            raise Malformed(f"answer {position.get('token')!r} is outside the label set")
        unlisted = [i for i, m in enumerate(mass) if m == 0.0]
        if unlisted:
            bound = min(min(p for _, p in listed), max(1.0 - sum(p for _, p in listed), 0.0))
            for i in unlisted:
                mass[i] = max(bound, 1e-9)
        answer = {
            "distribution": [m / sum(mass) for m in mass],
            "label_mass": min(total, 1.0),
            "method": "logprobs",
        }
        if unlisted:
            answer["unlisted"] = [verbalizers[i] for i in unlisted]
        return answer
    raise Malformed("the answer has no label word")


def distribution_from_samples(texts: Sequence[str], verbalizers: Sequence[str]) -> dict[str, Any]:
    counts = [0] * len(verbalizers)
    for text in texts:
        words = (text or "").replace(":", " ").split()
        words = [w for w in words if normalize_token(w) not in ("", "answer")]
        label = match_label(words[0], verbalizers) if words else None
        if label is not None:
            counts[label] += 1
    matched = sum(counts)
    if not matched:
        raise Malformed(f"none of {len(texts)} sampled answers is a label (first: {texts[0]!r:.60})")
    return {
        "distribution": [c / matched for c in counts],
        "label_mass": matched / len(texts),
        "method": f"samples:{len(texts)}",
    }


def distribution_from_scores(logprobs: Sequence[float]) -> dict[str, Any]:
    """Per label, log P(verbalizer | prompt) from scoring it → renormalised distribution."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return {
        "distribution": [w / sum(weights) for w in weights],
        "label_mass": min(1.0, sum(math.exp(lp) for lp in logprobs)),
        "method": "score_labels",
    }


def parse_label(response: dict[str, Any], verbalizers: Sequence[str]) -> dict[str, Any]:
    """A chat completion (as a dict) → label answer; raises NoLogprobs or Malformed."""
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise Malformed("the response has no choices") from None
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        raise NoLogprobs
    return distribution_from_logprobs(content, verbalizers)


def parse_summary(
    response: dict[str, Any], vocabulary: Mapping[bytes, int] | None = None, top_k: int = 0
) -> dict[str, Any]:
    """A chat completion (as a dict) → summary answer; raises ItemFailed or Malformed.

    With ``top_k`` (teacher.summary_top_k) the answer also carries ``tokens``, read from the
    choice's ``logprobs.content`` (``summary_tokens``); an answer without them fails the item.
    Unlike the local teacher's, these tokens never include the stop token: the endpoint lists
    only the text's tokens, so the end of a summary is taught by its hard target alone.
    """
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise Malformed("the response has no choices") from None
    text = ((choice.get("message") or {}).get("content") or "").strip()
    reason = choice.get("finish_reason")
    if reason not in ("stop", "length"):
        raise ItemFailed(f"finish_reason {reason!r}")
    if not text:
        raise Malformed("empty summary")
    answer: dict[str, Any] = {"text": text, "finish_reason": reason}
    if top_k:
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            raise ItemFailed(
                "the endpoint returned no logprobs for the summary (teacher.summary_top_k asks them)"
            )
        answer["tokens"] = summary_tokens(content, vocabulary or {}, top_k, text)
    return answer


def token_byte_ids(
    tokens: Sequence[str | None], added: Mapping[int, str], byte_level: bool
) -> dict[bytes, int]:
    """Each vocabulary entry's bytes → its id, the lowest id where several spell the same bytes.

    ``tokens``: the vocabulary, id → token string (``convert_ids_to_tokens``); ``added``: added
    and special tokens, id → their text. A byte-level BPE entry is read through
    ``byte_level_alphabet``; otherwise (SentencePiece) '▁' is a space and '<0xNN>' one byte.
    """
    decoder = {c: b for b, c in byte_level_alphabet().items()}
    table: dict[bytes, int] = {}
    for token_id, token in enumerate(tokens):
        if token_id in added:
            raw = added[token_id].encode()
        elif token is None:
            continue
        elif byte_level:
            if any(c not in decoder for c in token):
                continue  # no byte sequence spells it, so no endpoint can name it
            raw = bytes(decoder[c] for c in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            raw = bytes([int(token[3:5], 16)])
        else:
            raw = token.replace("▁", " ").encode()
        table.setdefault(raw, token_id)
    return table


def token_bytes(entry: dict[str, Any]) -> bytes:
    """An answer token's bytes: its ``bytes`` field (exact, also for a token that is part of one
    UTF-8 character), else its ``token`` string."""
    raw = entry.get("bytes")
    if raw is None:
        return (entry.get("token") or "").encode()
    try:
        return bytes(raw)
    except (TypeError, ValueError):
        raise ItemFailed(f"answer token {entry.get('token')!r} has unreadable bytes {raw!r:.60}") from None


def _token_id(entry: dict[str, Any], vocabulary: Mapping[bytes, int]) -> int:
    token_id = vocabulary.get(token_bytes(entry))
    if token_id is None:
        # llama.cpp sends no bytes, and '' for a token that is part of one UTF-8 character.
        hint = " (the endpoint sent no bytes for it)" if entry.get("bytes") is None else ""
        raise ItemFailed(
            f"answer token {entry.get('token')!r}{hint} is no token of teacher.tokenizer: "
            "is it the served model's vocabulary?"
        )
    return token_id


def summary_tokens(
    content: list[dict[str, Any]], vocabulary: Mapping[bytes, int], top_k: int, text: str
) -> dict[str, Any]:
    """``content``: the choice's ``logprobs.content`` (one entry per answer token) → ``{"ids": (n,),
    "top_ids": (n, top_k), "top_logprobs": (n, top_k)}``, ids from ``vocabulary``
    (``token_byte_ids``). Fails the item for a token the vocabulary lacks, fewer than ``top_k``
    alternatives, or tokens that do not spell ``text`` (the summary, stripped)."""
    ids, top_ids, top_logprobs = [], [], []
    try:
        for entry in content:
            ids.append(_token_id(entry, vocabulary))
            listed = (entry.get("top_logprobs") or [])[:top_k]
            if len(listed) < top_k:
                raise ItemFailed(
                    f"answer token {entry.get('token')!r} lists {len(listed)} alternatives, "
                    f"fewer than teacher.summary_top_k {top_k}"
                )
            top_ids.append([_token_id(alt, vocabulary) for alt in listed])
            # An endpoint's rounding can give a certain token +0.0000001; a log-probability is <= 0.
            top_logprobs.append([min(float(alt["logprob"]), 0.0) for alt in listed])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ItemFailed(f"unreadable summary logprobs {content!r:.120}") from None
    spelled = b"".join(token_bytes(entry) for entry in content).decode("utf-8", "replace")
    if spelled.strip() != text:
        raise ItemFailed(f"the logprobs spell {spelled.strip()!r:.80}, not the summary {text!r:.80}")
    return {"ids": ids, "top_ids": top_ids, "top_logprobs": top_logprobs}


def continuation_logprob(response: dict[str, Any], context_chars: int) -> float:
    """Sum of the echoed prompt's token logprobs from ``context_chars`` on (the verbalizer)."""
    try:
        lp = response["choices"][0]["logprobs"]
        pairs = zip(lp["text_offset"], lp["token_logprobs"])
        return sum(v for offset, v in pairs if offset >= context_chars and v is not None)
    except (KeyError, IndexError, TypeError):
        raise ItemFailed("/completions returned no echoed logprobs to score labels with") from None


def is_byte_level(tokenizer: Any) -> bool:
    """Whether a fast tokenizer's vocabulary is byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DistillError("teacher.tokenizer: needs a fast tokenizer (tokenizer.json)")
    return "ByteLevel" in json.dumps(json.loads(backend.to_str()).get("decoder"))
