"""What the API teacher asks and how each reply becomes an answer: the request bodies, a label
from ``top_logprobs`` (or, without logprobs, from samples or per-label scores), a summary with
its optional token-level answer. The sending itself (retries, rate limits, the endpoint's
health) is ``APITeacher._call``'s (client.py); batch mode reuses the bodies and parsers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from distill.core.config import TeacherConfig
from distill.core.errors import DistillError
from distill.teach.prompts import Prompt
from distill.teach.teachers.answers import (
    ItemFailed,
    Malformed,
    NoLogprobs,
    continuation_logprob,
    distribution_from_samples,
    distribution_from_scores,
    is_byte_level,
    parse_label,
    token_byte_ids,
)
from distill.teach.teachers.openai.options import openai_options

if TYPE_CHECKING:
    from distill.teach.teachers.openai.client import APITeacher

LABEL_MAX_TOKENS = 3
"""Answer tokens asked for a label: the first one that is not blank or 'Answer' is read."""
LABEL_PARSER_VERSION = 2
"""Part of every cache key: a change to how answers become distributions re-asks."""
CHARS_PER_TOKEN = 4


# -- request bodies (online and batch alike) ---------------------------------------------------
def messages(cfg: TeacherConfig, prompt: Prompt) -> list[dict[str, str]]:
    """The user turn, its input shortened to fit max_input_tokens (at 4 characters a token)."""
    budget = cfg.max_input_tokens * CHARS_PER_TOKEN - len(prompt.head) - len(prompt.tail)
    if budget < 64:
        raise DistillError(
            f"teacher.max_input_tokens {cfg.max_input_tokens} leaves no room for the input "
            "after the instruction; raise it or use fewer shots"
        )
    return [{"role": "user", "content": prompt.head + prompt.body[:budget] + prompt.tail}]


def label_body(cfg: TeacherConfig, prompt: Prompt) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "messages": messages(cfg, prompt),
        "max_tokens": LABEL_MAX_TOKENS,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": openai_options(cfg).top_logprobs,
    }


def summary_body(cfg: TeacherConfig, prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": messages(cfg, prompt),
        "max_tokens": cfg.max_new_tokens,
        "temperature": 0.0,
    }
    if cfg.summary_top_k:
        body |= {"logprobs": True, "top_logprobs": cfg.summary_top_k}
    return body


def estimated_tokens(body: dict[str, Any]) -> float:
    """Prompt at 4 characters a token plus the answer's limit: what the tokens/min bucket charges."""
    return len(body["messages"][0]["content"]) / CHARS_PER_TOKEN + body["max_tokens"]


def load_token_vocabulary(cfg: TeacherConfig) -> dict[bytes, int]:
    """teacher.tokenizer's id for each token's bytes (``token_byte_ids``): how the endpoint's
    token strings become ids of the served model's vocabulary."""
    from transformers import AutoTokenizer

    from distill.core.assets import resolve_teacher

    name = openai_options(cfg).tokenizer or ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_teacher(name))
    except (OSError, ValueError) as e:
        raise DistillError(f"teacher.tokenizer {name!r}: cannot load ({e})") from None
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    return token_byte_ids(tokens, added, is_byte_level(tokenizer))


# -- asking, online ----------------------------------------------------------------------------
async def retry_malformed(
    teacher: APITeacher, ask: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``ask`` again after an unparseable answer, up to teacher.malformed_retries times."""
    for attempt in range(teacher.opts.malformed_retries + 1):
        try:
            return await ask()
        except Malformed as e:
            if attempt == teacher.opts.malformed_retries:
                raise Malformed(f"{e} (after {attempt + 1} attempts)") from None
            teacher.counts["retries"] += 1
    raise AssertionError("unreachable")


async def ask_label(
    teacher: APITeacher, client: Any, prompt: Prompt, verbalizers: Sequence[str]
) -> dict[str, Any]:
    """The label distribution from the answer token's logprobs, else the configured fallback."""
    cfg = teacher.cfg
    body = label_body(cfg, prompt)
    tokens = estimated_tokens(body)
    chat = client.chat.completions.with_raw_response  # JSON parsed by _call, not into pydantic models

    async def ask() -> dict[str, Any]:
        response = await teacher._call(lambda: chat.create(**body), tokens)
        try:
            answer = parse_label(response, verbalizers)
        except NoLogprobs:
            why = "the endpoint returned no logprobs"
        else:
            if answer["label_mass"] >= cfg.min_label_mass:
                return answer
            # A greedy re-ask would repeat the same off-label answer; only the fallback can help.
            why = f"label mass {answer['label_mass']:.3f} < min_label_mass {cfg.min_label_mass}"
        if teacher.opts.no_logprobs == "samples":
            # The samples' own label mass is checked with every answer (check_answer).
            try:
                return await _label_by_samples(teacher, client, body, verbalizers, tokens)
            except Malformed as e:
                raise Malformed(f"{why}; then {e}") from None
        if teacher.opts.no_logprobs == "score_labels":
            return await _label_by_scores(teacher, client, prompt, verbalizers, tokens)
        raise ItemFailed(f"{why} (teacher.no_logprobs: fail)")

    return await retry_malformed(teacher, ask)


async def _label_by_samples(
    teacher: APITeacher, client: Any, body: dict[str, Any], verbalizers: Sequence[str], tokens: float
) -> dict[str, Any]:
    """Sample answers at temperature 1; endpoints that ignore ``n`` are asked again."""
    samples = teacher.opts.samples
    sample = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs", "temperature")}
    chat = client.chat.completions.with_raw_response
    texts: list[str] = []
    for _ in range(samples):
        want = samples - len(texts)
        response = await teacher._call(lambda w=want: chat.create(**sample, temperature=1.0, n=w), tokens)
        texts += [c["message"]["content"] or "" for c in response["choices"]][:want]
        if len(texts) >= samples:
            break
    return distribution_from_samples(texts, verbalizers)


async def _label_by_scores(
    teacher: APITeacher, client: Any, prompt: Prompt, verbalizers: Sequence[str], tokens: float
) -> dict[str, Any]:
    """One /completions request per label: log P(verbalizer | prompt) from the echoed prompt."""
    context = messages(teacher.cfg, prompt)[0]["content"] + "\n\n" + (prompt.assistant_prefix or "Answer:")
    scores = []
    for word in verbalizers:
        text = f"{context} {word}"
        response = await teacher._call(
            lambda t=text: client.completions.with_raw_response.create(
                model=teacher.cfg.model, prompt=t, echo=True, max_tokens=1, logprobs=1, temperature=0.0
            ),
            tokens,
        )
        scores.append(continuation_logprob(response, len(context)))
    return distribution_from_scores(scores)


async def ask_summary(teacher: APITeacher, client: Any, prompt: Prompt) -> dict[str, Any]:
    """The summary, with its tokens when teacher.summary_top_k asks them."""
    body = summary_body(teacher.cfg, prompt)
    tokens = estimated_tokens(body)
    chat = client.chat.completions.with_raw_response

    async def ask() -> dict[str, Any]:
        response = await teacher._call(lambda: chat.create(**body), tokens)
        return teacher.parse_summary(response)

    return await retry_malformed(teacher, ask)
