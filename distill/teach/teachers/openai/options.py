"""The openai backend's own options: keys of ``teach.teacher`` when ``backend: openai``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distill.core.errors import ConfigError


@dataclass
class OpenAIOptions:
    base_url: str | None = None
    """The endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI's)."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the key. The key itself is never written anywhere."""
    mode: Literal["online", "batch"] = "online"
    """Online requests, or one Batch API job per split (cheaper, slower)."""
    tokenizer: str | None = None
    """With summary_top_k: a local tokenizer (bundled alias or folder) with the served model's
    vocabulary, to turn the endpoint's token strings into ids."""
    concurrency: int = 8
    """Requests in flight at once."""
    requests_per_minute: float | None = None
    """Client-side request rate limit."""
    tokens_per_minute: float | None = None
    """Client-side token rate limit (tokens are estimated before sending)."""
    timeout_s: float = 60.0
    """One request's time limit; a timeout is retried."""
    max_retries: int = 6
    """Retries for 429, 5xx, timeouts and connection errors (exponential backoff, jitter,
    Retry-After honoured)."""
    max_consecutive_failures: int = 8
    """Requests in a row (across all items in flight) that get no answer at all (the connection
    refused or dropped, or timed out) before the endpoint is taken for dead: the run sends
    nothing more, lists every item not yet asked as failed ("not asked: the endpoint at …
    stopped answering"), keeps every answer already cached, and exits 3 like any failed item.
    Any HTTP reply, an error status included, starts the count again. Before the first item one
    probe (GET {base_url}/models, or a one-token request where that is not served) checks that
    the endpoint answers at all; batch mode gets the probe only."""
    malformed_retries: int = 2
    """Retries for an unparseable answer or one outside the label set, before the item fails."""
    top_logprobs: int = 20
    """Alternatives asked per answer token (at most 20); soft labels come from these."""
    no_logprobs: Literal["samples", "score_labels", "fail"] = "samples"
    """When the endpoint returns no logprobs: sample `samples` answers and count them, score each
    label's verbalizer through /completions with echo, or fail the item."""
    samples: int = 10
    """Answers sampled at temperature 1 for no_logprobs: samples."""
    price_input_per_mtok: float | None = None
    """Price per million input tokens, for the cost estimate and max_cost."""
    price_output_per_mtok: float | None = None
    """Price per million output tokens, for the cost estimate and max_cost."""
    max_cost: float | None = None
    """Stop asking once the estimated cost reaches this (needs prices)."""
    max_requests: int | None = None
    """Stop asking after this many requests in this run."""
    batch_poll_s: float = 30.0
    """Batch mode: seconds between status checks."""

    def __post_init__(self) -> None:
        for key in ("concurrency", "top_logprobs", "samples", "max_consecutive_failures"):
            if getattr(self, key) < 1:
                raise ConfigError(f"teach.teacher.{key}: must be >= 1")
        for key in ("max_retries", "malformed_retries"):
            if getattr(self, key) < 0:
                raise ConfigError(f"teach.teacher.{key}: must be >= 0")
        if self.timeout_s <= 0 or self.batch_poll_s <= 0:
            raise ConfigError("teach.teacher.timeout_s and batch_poll_s: must be > 0")
        if self.top_logprobs > 20:
            raise ConfigError("teach.teacher.top_logprobs: OpenAI-compatible endpoints accept at most 20")
        if self.max_cost is not None and None in (self.price_input_per_mtok, self.price_output_per_mtok):
            raise ConfigError(
                "teach.teacher.max_cost: needs price_input_per_mtok and price_output_per_mtok "
                "to estimate the cost"
            )


def openai_options(cfg: Any) -> OpenAIOptions:
    """A ``TeacherConfig``'s openai options (their defaults where it was built without them)."""
    return cfg.options if cfg.options is not None else OpenAIOptions()
