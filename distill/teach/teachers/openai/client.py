"""Any OpenAI-compatible endpoint as the teacher (OpenAI, vLLM, llama.cpp, Ollama): the sending.

Soft labels come from the answer token's ``top_logprobs``: every listed token that spells
the start of a label's verbalizer (any case, with or without a leading space) adds its
probability to that label; the sum is renormalised over the labels and the mass that
fell elsewhere is recorded. Endpoints that return no logprobs get the configured
fallback. Requests run on an asyncio loop in a helper thread (bounded concurrency,
client-side rate limits, retries with backoff), and each answer is handed back the
moment it exists so the cache can keep it. What is asked and how a reply becomes an answer
lives in labels.py.

A dead endpoint fails fast: one probe before the first item (GET /models, or a one-token
request where that is not served), and once ``max_consecutive_failures`` requests in a row got
no answer at all the teacher sends nothing more; every item not yet asked comes back as
``{"error": "not asked: the endpoint at … stopped answering (…)"}``.

With ``summary_top_k`` a summary also carries the teacher's tokens and its top-k
log-probabilities at each, from the answer's ``logprobs.content``: each token's bytes are mapped
to an id of ``teacher.tokenizer`` (the served model's vocabulary). The endpoint lists only the
text's tokens, so unlike the local teacher's these never end with the stop token; the student
learns to end a summary from the hard target alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from distill.core.config import TeacherConfig
from distill.core.errors import ConfigError, DistillError
from distill.core.manifest import latency_percentiles
from distill.teach.prompts import Prompt
from distill.teach.teachers.answers import ItemFailed, Malformed, parse_summary
from distill.teach.teachers.openai.labels import (
    CHARS_PER_TOKEN,
    LABEL_MAX_TOKENS,
    LABEL_PARSER_VERSION,
    ask_label,
    ask_summary,
    load_token_vocabulary,
)
from distill.teach.teachers.openai.options import OpenAIOptions, openai_options
from distill.teach.teachers.openai.pacing import RateLimiter
from distill.teach.teachers.openai.pacing import retry_after as retry_after_s

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
_DONE = object()
MODELS_NOT_SERVED = (404, 405, 501)
"""Answers to GET /models that mean "no such route": the probe asks for one token instead."""


class EndpointDown(ItemFailed):
    """The endpoint stopped answering: this item fails, and no further request is sent."""


class APITeacher:
    name = "openai"
    timed_locally = False

    @classmethod
    def from_config(cls, cfg: TeacherConfig, state_dir: Path | None = None) -> APITeacher:
        return cls(cfg, state_dir=state_dir)

    Options = OpenAIOptions

    @classmethod
    def check_config(cls, cfg: TeacherConfig) -> None:
        if cfg.summary_top_k > 20:
            raise ConfigError("teach.teacher.summary_top_k: an OpenAI-compatible endpoint lists at most 20")
        if cfg.summary_top_k and not openai_options(cfg).tokenizer:
            raise ConfigError(
                "teach.teacher.summary_top_k with backend: openai needs teach.teacher.tokenizer "
                "(the served model's vocabulary) to turn token strings into ids"
            )

    @classmethod
    def vocabulary(cls, cfg: TeacherConfig) -> str | None:
        return openai_options(cfg).tokenizer

    def __init__(self, cfg: TeacherConfig, state_dir: Path | None = None):
        self.cfg = cfg
        self.opts = opts = openai_options(cfg)
        self.state_dir = state_dir
        self._key = os.environ.get(opts.api_key_env, "")
        if not self._key and opts.base_url is None:
            raise DistillError(f"teach.teacher.api_key_env: ${opts.api_key_env} is not set")
        self.endpoint = (opts.base_url or "https://api.openai.com/v1").rstrip("/")
        self.id = f"openai:{self.endpoint}:{cfg.model}"
        self.counts = {"requests": 0, "retries": 0, "input_tokens": 0, "output_tokens": 0, "probes": 0}
        self.latencies_ms: list[float] = []
        self.down: str | None = None
        """Why the endpoint is taken for dead (nothing more is sent), or None."""
        self._probed = False
        self._silent = 0  # requests in a row that got no answer at all
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
            "top_logprobs": self.opts.top_logprobs,
            "no_logprobs": self.opts.no_logprobs,
            "samples": self.opts.samples,
            "min_label_mass": self.cfg.min_label_mass,
        }
        if not self.cfg.summary_top_k:  # so text-only answers cached before the option stay valid
            return params
        # The tokenizer decides the ids, so it is part of the answer too.
        return params | {"summary_top_k": self.cfg.summary_top_k, "tokenizer": self.opts.tokenizer}

    def num_parameters(self) -> None:
        return None

    def usage(self) -> dict[str, Any]:
        return {
            **self.counts,
            "cost_usd": None if self.opts.price_input_per_mtok is None else round(self.cost(), 6),
            **latency_percentiles(self.latencies_ms, digits=1),
        }

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.check_endpoint():
            return self._not_asked(prompts)
        if self.opts.mode == "batch":
            from distill.teach.teachers.openai.batch import run_batch

            return run_batch(self, "label", prompts, verbalizers)
        return self._stream(prompts, lambda client, p: ask_label(self, client, p, verbalizers))

    def summarize(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
        self.token_vocabulary()  # a tokenizer that cannot load fails the run before any request
        if self.check_endpoint():
            return self._not_asked(prompts)
        if self.opts.mode == "batch":
            from distill.teach.teachers.openai.batch import run_batch

            return run_batch(self, "summary", prompts, [])
        return self._stream(prompts, lambda client, p: ask_summary(self, client, p))

    # -- answers -------------------------------------------------------------------------
    def token_vocabulary(self) -> dict[bytes, int] | None:
        """teacher.tokenizer's id for each token's bytes, built once; None without summary_top_k."""
        if not self.cfg.summary_top_k:
            return None
        if self._vocabulary is None:
            self._vocabulary = load_token_vocabulary(self.cfg)
        return self._vocabulary

    def parse_summary(self, response: dict[str, Any]) -> dict[str, Any]:
        """The summary answer, with its tokens when summary_top_k asks them (online and batch alike)."""
        return parse_summary(response, self.token_vocabulary(), self.cfg.summary_top_k)

    # -- accounting ----------------------------------------------------------------------
    def cost(self) -> float:
        if self.opts.price_input_per_mtok is None or self.opts.price_output_per_mtok is None:
            return 0.0
        return (
            self.counts["input_tokens"] * self.opts.price_input_per_mtok
            + self.counts["output_tokens"] * self.opts.price_output_per_mtok
        ) / 1e6

    def budget_left(self, requests: int = 1) -> str | None:
        """Why no more requests may be sent, or None."""
        if self.opts.max_requests is not None and self.counts["requests"] + requests > self.opts.max_requests:
            return f"budget: max_requests {self.opts.max_requests} reached"
        if self.opts.max_cost is not None and self.cost() >= self.opts.max_cost:
            return f"budget: max_cost {self.opts.max_cost} reached (estimated {self.cost():.4f})"
        return None

    def account(self, usage: Any, requests: int = 1) -> None:
        self.counts["requests"] += requests
        if usage:
            get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
            self.counts["input_tokens"] += get("prompt_tokens") or 0
            self.counts["output_tokens"] += get("completion_tokens") or 0

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if len(self._key) >= 4 else text

    # -- is anyone there -----------------------------------------------------------------
    def check_endpoint(self) -> str | None:
        """Why nothing may be sent (the endpoint is down), or None. The first call probes it:
        without a probe a dead endpoint costs every item all its retries and backoff."""
        if not self._probed and self.down is None:
            self._probed = True
            reason = self.probe()
            if reason:
                self._give_up(f"the endpoint at {self.endpoint} does not answer ({reason})")
        return self.down

    def probe(self) -> str | None:
        """Why the endpoint gives no answer at all, or None: GET {base_url}/models, or where
        that route is not served, a one-token chat request; one try each, no retries."""
        import openai

        client = openai.OpenAI(
            api_key=self._key or "unused",
            base_url=self.opts.base_url,
            timeout=self.opts.timeout_s,
            max_retries=0,
        )
        hello = [{"role": "user", "content": "Hi"}]
        asks = (
            ("models", client.models.with_raw_response.list),
            (
                "chat",
                lambda: client.chat.completions.with_raw_response.create(
                    model=self.cfg.model, messages=hello, max_tokens=1
                ),
            ),
        )
        with client:
            for route, ask in asks:
                self.counts["probes"] += 1
                try:
                    response = ask()
                except openai.APIStatusError as e:
                    if route == "models" and e.status_code in MODELS_NOT_SERVED:
                        continue
                    self._refuse(e.status_code)
                    return None  # it answers; the items' own retries deal with the rest
                except openai.APIConnectionError as e:
                    return self._no_answer(e)
                with contextlib.suppress(ValueError, AttributeError):  # any reply at all is an answer
                    self.account(json.loads(response.content).get("usage"), requests=0)
                return None
        return None

    def _refuse(self, status: int) -> None:
        """Statuses that no retry can change end the whole run."""
        if status in (401, 403):
            raise DistillError(f"teacher endpoint {self.id}: HTTP {status}: check ${self.opts.api_key_env}")
        if status == 404:
            raise DistillError(f"teacher endpoint {self.id}: HTTP 404 (no such model)")

    def _no_answer(self, e: Exception) -> str:
        """A connection that failed or a request that timed out, said with its cause."""
        import openai

        if isinstance(e, openai.APITimeoutError):
            return f"timed out after {self.opts.timeout_s} s"
        return self.redact(f"connection failed: {e.__cause__ or e}")

    def _silence(self, error: str) -> None:
        """One more request in a row without an answer; at max_consecutive_failures the endpoint
        is taken for dead and this item, like every one after it, fails at once."""
        self._silent += 1
        if self.down is None and self._silent >= self.opts.max_consecutive_failures:
            self._give_up(
                f"the endpoint at {self.endpoint} stopped answering ({error}; "
                f"{self._silent} requests in a row got no answer)"
            )
        if self.down is not None:
            raise EndpointDown(self.down)

    def _give_up(self, reason: str) -> None:
        from tqdm import tqdm

        self.down = self.redact(reason)
        # tqdm.write: a line of its own, not glued to a progress bar
        tqdm.write(f"teach: error: {self.down}; nothing more is sent to it", file=sys.stderr)

    def _not_asked(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
        return iter([(i, {"error": f"not asked: {self.down}"}) for i in range(len(prompts))])

    # -- one request ---------------------------------------------------------------------
    async def _call(self, send: Callable[[], Awaitable[Any]], tokens: float) -> dict[str, Any]:
        """One request (``send`` returns the raw response) with retries for 429, 5xx, timeouts and
        dropped connections; returns the JSON body."""
        import openai

        for attempt in range(self.opts.max_retries + 1):
            if self.down is not None:
                raise EndpointDown(self.down)
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
                self._silent = 0
                self.account(None)
                status = e.status_code
                self._refuse(status)
                if status != 429 and status < 500 and status != 408:
                    raise ItemFailed(self.redact(f"HTTP {status}: {e.message}")) from None
                error = f"HTTP {status}"
                retry_after = retry_after_s(e.response.headers)
                if status == 429 and retry_after:
                    self._pause_until = max(self._pause_until, time.monotonic() + retry_after)
            except openai.APIConnectionError as e:  # timeouts too
                self.account(None)
                error = self._no_answer(e)
                self._silence(error)
            else:
                self._silent = 0
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
            if attempt == self.opts.max_retries:
                raise ItemFailed(f"{error}, still after {self.opts.max_retries} retries")
            self.counts["retries"] += 1
            backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            await asyncio.sleep(retry_after if retry_after is not None else backoff)
        raise AssertionError("unreachable")

    # -- the loop in its thread ----------------------------------------------------------
    def client(self, asynchronous: bool = True) -> Any:
        """The async client for requests: retries are ours (bounded, jittered, counted). The sync
        one serves batch mode's few file and job calls, with the openai client's own retries."""
        import openai

        return (openai.AsyncOpenAI if asynchronous else openai.OpenAI)(
            api_key=self._key or "unused",
            base_url=self.opts.base_url,
            timeout=self.opts.timeout_s,
            max_retries=0 if asynchronous else self.opts.max_retries,
        )

    def _stream(
        self, prompts: Sequence[Prompt], answer_one: Callable[[Any, Prompt], Awaitable[dict[str, Any]]]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        async def answer_all() -> None:
            self._limiter = RateLimiter(self.opts.requests_per_minute, self.opts.tokens_per_minute)
            todo = iter(range(len(prompts)))
            async with self.client() as client:

                async def worker() -> None:
                    for i in todo:  # one iterator shared by all workers: each item is taken once
                        if stop.is_set():
                            return
                        if self.down is not None:  # the rest are listed, never sent
                            results.put((i, {"error": f"not asked: {self.down}"}))
                            continue
                        try:
                            answer = await answer_one(client, prompts[i])
                        except ItemFailed as e:
                            answer = {"error": self.redact(str(e))}
                        results.put((i, answer))

                await asyncio.gather(*(worker() for _ in range(min(self.opts.concurrency, len(prompts)))))

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
