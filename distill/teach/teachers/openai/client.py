"""Any OpenAI-compatible endpoint as the teacher (OpenAI, vLLM, llama.cpp, Ollama).

Soft labels come from the answer token's ``top_logprobs``: every listed token that spells
the start of a label's verbalizer (any case, with or without a leading space) adds its
probability to that label; the sum is renormalised over the labels and the mass that
fell elsewhere is recorded. Endpoints that return no logprobs get the configured
fallback. Requests run on an asyncio loop in a helper thread (bounded concurrency,
client-side rate limits, retries with backoff), and each answer is handed back the
moment it exists so the cache can keep it.

With ``summary_top_k`` a summary also carries the teacher's tokens and its top-k
log-probabilities at each, from the answer's ``logprobs.content``: each token's bytes are mapped
to an id of ``teacher.tokenizer`` (the served model's vocabulary). The endpoint lists only the
text's tokens, so unlike the local teacher's these never end with the stop token; the student
learns to end a summary from the hard target alone.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from distill.core.config import TeacherConfig
from distill.core.errors import DistillError
from distill.core.manifest import latency_percentiles
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
    parse_summary,
    token_byte_ids,
)

LABEL_MAX_TOKENS = 3
"""Answer tokens asked for a label: the first one that is not blank or 'Answer' is read."""
LABEL_PARSER_VERSION = 2
"""Part of every cache key: a change to how answers become distributions re-asks."""
CHARS_PER_TOKEN = 4
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
_DONE = object()


class RateLimiter:
    """Token buckets for requests/min and tokens/min, refilled continuously; a bucket holds
    at most 5 seconds' worth, so the limit is never exceeded in bursts."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.limits = [
            (r / 60.0, max(1.0, r / 12.0)) if r else None for r in (requests_per_minute, tokens_per_minute)
        ]
        self.level = [lim[1] if lim else 0.0 for lim in self.limits]
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: float) -> None:
        async with self.lock:  # first come, first served
            for i, need in enumerate((1.0, tokens)):
                if self.limits[i] is None:
                    continue
                rate, capacity = self.limits[i]
                need = min(need, capacity)
                while True:
                    now = time.monotonic()
                    self._refill(now)
                    if self.level[i] >= need:
                        self.level[i] -= need
                        break
                    await asyncio.sleep((need - self.level[i]) / rate)

    def _refill(self, now: float) -> None:
        for i, lim in enumerate(self.limits):
            if lim:
                self.level[i] = min(lim[1], self.level[i] + (now - self.stamp) * lim[0])
        self.stamp = now


class APITeacher:
    name = "openai"
    timed_locally = False

    @classmethod
    def from_config(cls, cfg: TeacherConfig, state_dir: Path | None = None) -> APITeacher:
        return cls(cfg, state_dir=state_dir)

    @classmethod
    def check_config(cls, cfg: TeacherConfig) -> None:
        pass

    @classmethod
    def vocabulary(cls, cfg: TeacherConfig) -> str | None:
        return cfg.tokenizer

    def __init__(self, cfg: TeacherConfig, state_dir: Path | None = None):
        self.cfg = cfg
        self.state_dir = state_dir
        self._key = os.environ.get(cfg.api_key_env, "")
        if not self._key and cfg.base_url is None:
            raise DistillError(f"teach.teacher.api_key_env: ${cfg.api_key_env} is not set")
        endpoint = (cfg.base_url or "https://api.openai.com/v1").rstrip("/")
        self.id = f"openai:{endpoint}:{cfg.model}"
        self.counts = {"requests": 0, "retries": 0, "input_tokens": 0, "output_tokens": 0}
        self.latencies_ms: list[float] = []
        self._pause_until = 0.0
        self._limiter: RateLimiter | None = None
        self._vocabulary: dict[bytes, int] | None = None

    # -- the Teacher protocol ------------------------------------------------------------
    def decoding_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": 0.0,
            "max_input_chars": self.cfg.max_input_tokens * CHARS_PER_TOKEN,
            "max_new_tokens": self.cfg.max_new_tokens,
            "label_max_tokens": LABEL_MAX_TOKENS,
            "label_parser": LABEL_PARSER_VERSION,
            "top_logprobs": self.cfg.top_logprobs,
            "no_logprobs": self.cfg.no_logprobs,
            "samples": self.cfg.samples,
            "min_label_mass": self.cfg.min_label_mass,
        }
        if not self.cfg.summary_top_k:  # so text-only answers cached before the option stay valid
            return params
        # The tokenizer decides the ids, so it is part of the answer too.
        return params | {"summary_top_k": self.cfg.summary_top_k, "tokenizer": self.cfg.tokenizer}

    def num_parameters(self) -> None:
        return None

    def usage(self) -> dict[str, Any]:
        return {
            **self.counts,
            "cost_usd": None if self.cfg.price_input_per_mtok is None else round(self.cost(), 6),
            **latency_percentiles(self.latencies_ms, digits=1),
        }

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.cfg.mode == "batch":
            from distill.teach.teachers.openai.batch import run_batch

            return run_batch(self, "label", prompts, verbalizers)
        return self._stream(prompts, lambda client, p: self._label(client, p, verbalizers))

    def summarize(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
        self.token_vocabulary()  # a tokenizer that cannot load fails the run before any request
        if self.cfg.mode == "batch":
            from distill.teach.teachers.openai.batch import run_batch

            return run_batch(self, "summary", prompts, [])
        return self._stream(prompts, self._summary)

    # -- requests ------------------------------------------------------------------------
    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        """The user turn, its input shortened to fit max_input_tokens (at 4 characters a token)."""
        budget = self.cfg.max_input_tokens * CHARS_PER_TOKEN - len(prompt.head) - len(prompt.tail)
        if budget < 64:
            raise DistillError(
                f"teacher.max_input_tokens {self.cfg.max_input_tokens} leaves no room for the input "
                "after the instruction; raise it or use fewer shots"
            )
        return [{"role": "user", "content": prompt.head + prompt.body[:budget] + prompt.tail}]

    def label_body(self, prompt: Prompt) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "messages": self.messages(prompt),
            "max_tokens": LABEL_MAX_TOKENS,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.cfg.top_logprobs,
        }

    def summary_body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": self.messages(prompt),
            "max_tokens": self.cfg.max_new_tokens,
            "temperature": 0.0,
        }
        if self.cfg.summary_top_k:
            body |= {"logprobs": True, "top_logprobs": self.cfg.summary_top_k}
        return body

    def token_vocabulary(self) -> dict[bytes, int] | None:
        """teacher.tokenizer's id for each token's bytes (``token_byte_ids``), built once; None
        without summary_top_k."""
        if not self.cfg.summary_top_k:
            return None
        if self._vocabulary is None:
            from transformers import AutoTokenizer

            from distill.core.assets import resolve_teacher

            name = self.cfg.tokenizer or ""
            try:
                tokenizer = AutoTokenizer.from_pretrained(resolve_teacher(name))
            except (OSError, ValueError) as e:
                raise DistillError(f"teacher.tokenizer {name!r}: cannot load ({e})") from None
            tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
            self._vocabulary = token_byte_ids(tokens, added, is_byte_level(tokenizer))
        return self._vocabulary

    def parse_summary(self, response: dict[str, Any]) -> dict[str, Any]:
        """The summary answer, with its tokens when summary_top_k asks them (online and batch alike)."""
        return parse_summary(response, self.token_vocabulary(), self.cfg.summary_top_k)

    @staticmethod
    def estimated_tokens(body: dict[str, Any]) -> float:
        """Prompt at 4 characters a token plus the answer's limit: what the tokens/min bucket charges."""
        return len(body["messages"][0]["content"]) / CHARS_PER_TOKEN + body["max_tokens"]

    def cost(self) -> float:
        if self.cfg.price_input_per_mtok is None or self.cfg.price_output_per_mtok is None:
            return 0.0
        return (
            self.counts["input_tokens"] * self.cfg.price_input_per_mtok
            + self.counts["output_tokens"] * self.cfg.price_output_per_mtok
        ) / 1e6

    def budget_left(self, requests: int = 1) -> str | None:
        """Why no more requests may be sent, or None."""
        if self.cfg.max_requests is not None and self.counts["requests"] + requests > self.cfg.max_requests:
            return f"budget: max_requests {self.cfg.max_requests} reached"
        if self.cfg.max_cost is not None and self.cost() >= self.cfg.max_cost:
            return f"budget: max_cost {self.cfg.max_cost} reached (estimated {self.cost():.4f})"
        return None

    def account(self, usage: Any, requests: int = 1) -> None:
        self.counts["requests"] += requests
        if usage:
            get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
            self.counts["input_tokens"] += get("prompt_tokens") or 0
            self.counts["output_tokens"] += get("completion_tokens") or 0

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if len(self._key) >= 4 else text

    async def _call(self, send: Callable[[], Awaitable[Any]], tokens: float) -> dict[str, Any]:
        """One request (``send`` returns the raw response) with retries for 429, 5xx, timeouts and
        dropped connections; returns the JSON body."""
        import openai

        for attempt in range(self.cfg.max_retries + 1):
            reason = self.budget_left()
            if reason:
                raise ItemFailed(reason)
            await asyncio.sleep(max(0.0, self._pause_until - time.monotonic()))
            if self._limiter:
                await self._limiter.acquire(tokens)
            start = time.perf_counter()
            retry_after = None
            try:
                response = await send()
            except openai.APIStatusError as e:
                self.account(None)
                status = e.status_code
                if status in (401, 403):
                    raise DistillError(
                        f"teacher endpoint {self.id}: HTTP {status}: check ${self.cfg.api_key_env}"
                    ) from None
                if status == 404:
                    raise DistillError(f"teacher endpoint {self.id}: HTTP 404 (no such model)") from None
                if status != 429 and status < 500 and status != 408:
                    raise ItemFailed(self.redact(f"HTTP {status}: {e.message}")) from None
                error = f"HTTP {status}"
                retry_after = _retry_after(e.response.headers)
                if status == 429 and retry_after:
                    self._pause_until = max(self._pause_until, time.monotonic() + retry_after)
            except openai.APITimeoutError:
                self.account(None)
                error = f"timed out after {self.cfg.timeout_s} s"
            except openai.APIConnectionError as e:
                self.account(None)
                error = self.redact(f"connection failed: {e}")
            else:
                self.latencies_ms.append((time.perf_counter() - start) * 1000)
                try:  # our own parse: no pydantic model per answer, and any non-JSON body is one error
                    body = json.loads(response.content)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    self.account(None)
                    raise Malformed(f"unparseable response {response.content[:60]!r}")
                self.account(body.get("usage"))
                return body
            if attempt == self.cfg.max_retries:
                raise ItemFailed(f"{error}, still after {self.cfg.max_retries} retries")
            self.counts["retries"] += 1
            backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            await asyncio.sleep(retry_after if retry_after is not None else backoff)
        raise AssertionError("unreachable")

    async def _retry_malformed(self, ask: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        for attempt in range(self.cfg.malformed_retries + 1):
            try:
                return await ask()
            except Malformed as e:
                if attempt == self.cfg.malformed_retries:
                    raise Malformed(f"{e} (after {attempt + 1} attempts)") from None
                self.counts["retries"] += 1
        raise AssertionError("unreachable")

    async def _label(self, client: Any, prompt: Prompt, verbalizers: Sequence[str]) -> dict[str, Any]:
        body = self.label_body(prompt)
        tokens = self.estimated_tokens(body)
        chat = client.chat.completions.with_raw_response  # JSON parsed by _call, not into pydantic models

        async def ask() -> dict[str, Any]:
            response = await self._call(lambda: chat.create(**body), tokens)
            try:
                answer = parse_label(response, verbalizers)
            except NoLogprobs:
                why = "the endpoint returned no logprobs"
            else:
                if answer["label_mass"] >= self.cfg.min_label_mass:
                    return answer
                # A greedy re-ask would repeat the same off-label answer; only the fallback can help.
                why = f"label mass {answer['label_mass']:.3f} < min_label_mass {self.cfg.min_label_mass}"
            if self.cfg.no_logprobs == "samples":
                # The samples' own label mass is checked with every answer (check_answer).
                try:
                    return await self._label_by_samples(client, body, verbalizers, tokens)
                except Malformed as e:
                    raise Malformed(f"{why}; then {e}") from None
            if self.cfg.no_logprobs == "score_labels":
                return await self._label_by_scores(client, prompt, verbalizers, tokens)
            raise ItemFailed(f"{why} (teacher.no_logprobs: fail)")

        return await self._retry_malformed(ask)

    async def _label_by_samples(
        self, client: Any, body: dict[str, Any], verbalizers: Sequence[str], tokens: float
    ) -> dict[str, Any]:
        """Sample answers at temperature 1; endpoints that ignore ``n`` are asked again."""
        sample = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs", "temperature")}
        chat = client.chat.completions.with_raw_response
        texts: list[str] = []
        for _ in range(self.cfg.samples):
            want = self.cfg.samples - len(texts)
            response = await self._call(lambda w=want: chat.create(**sample, temperature=1.0, n=w), tokens)
            texts += [c["message"]["content"] or "" for c in response["choices"]][:want]
            if len(texts) >= self.cfg.samples:
                break
        return distribution_from_samples(texts, verbalizers)

    async def _label_by_scores(
        self, client: Any, prompt: Prompt, verbalizers: Sequence[str], tokens: float
    ) -> dict[str, Any]:
        """One /completions request per label: log P(verbalizer | prompt) from the echoed prompt."""
        context = self.messages(prompt)[0]["content"] + "\n\n" + (prompt.assistant_prefix or "Answer:")
        scores = []
        for word in verbalizers:
            text = f"{context} {word}"
            response = await self._call(
                lambda t=text: client.completions.with_raw_response.create(
                    model=self.cfg.model, prompt=t, echo=True, max_tokens=1, logprobs=1, temperature=0.0
                ),
                tokens,
            )
            scores.append(continuation_logprob(response, len(context)))
        return distribution_from_scores(scores)

    async def _summary(self, client: Any, prompt: Prompt) -> dict[str, Any]:
        body = self.summary_body(prompt)
        tokens = self.estimated_tokens(body)
        chat = client.chat.completions.with_raw_response

        async def ask() -> dict[str, Any]:
            response = await self._call(lambda: chat.create(**body), tokens)
            return self.parse_summary(response)

        return await self._retry_malformed(ask)

    # -- the loop in its thread ----------------------------------------------------------
    def client(self, asynchronous: bool = True) -> Any:
        """The async client for requests: retries are ours (bounded, jittered, counted). The sync
        one serves batch mode's few file and job calls, with the openai client's own retries."""
        import openai

        return (openai.AsyncOpenAI if asynchronous else openai.OpenAI)(
            api_key=self._key or "unused",
            base_url=self.cfg.base_url,
            timeout=self.cfg.timeout_s,
            max_retries=0 if asynchronous else self.cfg.max_retries,
        )

    def _stream(
        self, prompts: Sequence[Prompt], answer_one: Callable[[Any, Prompt], Awaitable[dict[str, Any]]]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        async def answer_all() -> None:
            self._limiter = RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute)
            todo = iter(range(len(prompts)))
            async with self.client() as client:

                async def worker() -> None:
                    for i in todo:  # one iterator shared by all workers: each item is taken once
                        if stop.is_set():
                            return
                        try:
                            answer = await answer_one(client, prompts[i])
                        except ItemFailed as e:
                            answer = {"error": self.redact(str(e))}
                        results.put((i, answer))

                await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(prompts)))))

        def main() -> None:
            try:
                asyncio.run(answer_all())
            except BaseException as e:  # handed to the caller's thread
                results.put(e)
            finally:
                results.put(_DONE)

        threading.Thread(target=main, name="distill-api", daemon=True).start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # a caller that stops early (Ctrl-C, fatal error) sends nothing new


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(max(float(value) / scale, 0.0), 600.0)
        except ValueError:
            try:
                return min(
                    max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0), 600.0
                )
            except (TypeError, ValueError):
                return None
    return None
