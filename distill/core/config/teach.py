"""The teach section: the teacher, its calibration, the splits it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill.core.config.task import SPLITS
from distill.core.errors import ConfigError


@dataclass
class TeacherConfig:
    """The model that labels and summarises."""

    backend: Literal["local", "openai"] = "local"
    """local: a transformers model in this process; openai: any OpenAI-compatible endpoint."""
    model: str = "smollm2-135m-instruct"
    """local: a bundled alias (smollm2-135m-instruct), a transformers folder or a hub name.
    openai: the model name the endpoint serves."""
    batch_size: int = 8
    """local: prompts per forward pass."""
    max_input_tokens: int = 384
    """Prompts are shortened (from the input's end) to this many tokens; the API backend,
    which has no tokenizer, counts 4 characters per token."""
    max_new_tokens: int = 64
    """Summary length limit."""
    summary_top_k: int = 0
    """Keep, with every summary, the teacher's own tokens and its top-k log-probabilities at each
    of them (token-level KD for a student that shares the teacher's vocabulary). local: exact,
    from the logits; openai: from ``top_logprobs`` (k <= 20), mapped to ids by ``tokenizer``.
    0: text only."""
    tokenizer: str | None = None
    """openai with summary_top_k: a local tokenizer (bundled alias or folder) with the served
    model's vocabulary, to turn the endpoint's token strings into ids."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """local only."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """local only."""
    prefix_cache: bool = True
    """local only: run the prompt start every prompt of a call shares (template, instruction,
    shots) once and reuse its KV cache for every batch. Same answers; off only to measure it."""

    base_url: str | None = None
    """openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI's)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable holding the key. The key itself is never written anywhere."""
    mode: Literal["online", "batch"] = "online"
    """openai: online requests, or one Batch API job per split (cheaper, slower)."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    """openai: client-side rate limits (tokens are estimated before sending)."""
    timeout_s: float = 60.0
    """openai: one request's time limit; a timeout is retried."""
    max_retries: int = 6
    """openai: retries for 429, 5xx, timeouts and connection errors (exponential backoff, jitter,
    Retry-After honoured)."""
    max_consecutive_failures: int = 8
    """openai: requests in a row (across all items in flight) that get no answer at all (the
    connection refused or dropped, or timed out) before the endpoint is taken for dead: the run
    sends nothing more, lists every item not yet asked as failed ("not asked: the endpoint at …
    stopped answering"), keeps every answer already cached, and exits 3 like any failed item.
    Any HTTP reply, an error status included, starts the count again. Before the first item one
    probe (GET {base_url}/models, or a one-token request where that is not served) checks that
    the endpoint answers at all; batch mode gets the probe only."""
    malformed_retries: int = 2
    """openai: retries for an unparseable answer or one outside the label set, before the item fails."""
    top_logprobs: int = 20
    """openai: alternatives asked per answer token; soft labels come from these."""
    no_logprobs: Literal["samples", "score_labels", "fail"] = "samples"
    """openai, when the endpoint returns no logprobs: sample `samples` answers and count them, score
    each label's verbalizer through /completions with echo, or fail the item."""
    samples: int = 10
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    """openai: prices per million tokens, for the cost estimate and max_cost."""
    max_cost: float | None = None
    """openai: stop asking once the estimated cost reaches this (needs prices)."""
    max_requests: int | None = None
    """openai: stop asking after this many requests in this run."""
    batch_poll_s: float = 30.0
    """openai batch mode: seconds between status checks."""
    min_label_mass: float = 0.05
    """A label answer whose labels hold less than this share of the answer's probability (the
    rest fell on other words) is not a label: the API teacher goes to its ``no_logprobs``
    fallback (samples, score_labels) or fails the item; the local teacher fails it. Either way
    it is never stored as a confident distribution. 0 turns the check off."""

    def __post_init__(self) -> None:
        positive = (
            "batch_size",
            "max_input_tokens",
            "max_new_tokens",
            "concurrency",
            "top_logprobs",
            "samples",
            "max_consecutive_failures",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"teach.teacher.{key}: must be >= 1")
        for key in ("max_retries", "malformed_retries"):
            if getattr(self, key) < 0:
                raise ConfigError(f"teach.teacher.{key}: must be >= 0")
        if not 0.0 <= self.min_label_mass < 1.0:
            raise ConfigError("teach.teacher.min_label_mass: must be within [0, 1)")
        if self.timeout_s <= 0 or self.batch_poll_s <= 0:
            raise ConfigError("teach.teacher.timeout_s and batch_poll_s: must be > 0")
        if self.backend == "local" and self.mode == "batch":
            raise ConfigError("teach.teacher.mode: batch needs backend: openai")
        if self.top_logprobs > 20:
            raise ConfigError("teach.teacher.top_logprobs: OpenAI-compatible endpoints accept at most 20")
        if self.summary_top_k < 0 or (self.backend == "openai" and self.summary_top_k > 20):
            raise ConfigError(
                "teach.teacher.summary_top_k: must be >= 0 (and <= 20 for an OpenAI-compatible endpoint)"
            )
        if self.backend == "openai" and self.summary_top_k and not self.tokenizer:
            raise ConfigError(
                "teach.teacher.summary_top_k with backend: openai needs teach.teacher.tokenizer "
                "(the served model's vocabulary) to turn token strings into ids"
            )
        if self.max_cost is not None and None in (self.price_input_per_mtok, self.price_output_per_mtok):
            raise ConfigError(
                "teach.teacher.max_cost: needs price_input_per_mtok and price_output_per_mtok "
                "to estimate the cost"
            )


@dataclass
class CalibrationConfig:
    """Post-hoc correction of the teacher's class distributions (applied to every split alike)."""

    prior: Literal["none", "content_free", "pool_mean"] = "none"
    """Divide out a per-label prior: the teacher's answer to content-free inputs ("N/A", "[MASK]", "None"),
    or its mean distribution over the train pool; then renormalise."""
    temperature: bool = False
    """Fit one temperature on `split`'s gold labels (minimum NLL) after the prior correction."""
    split: str = "validation"
    """Labeled dev split the temperature is fitted on; it is taught too."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"teach.calibration.split: unknown split {self.split!r}")


@dataclass
class TeachConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    """Splits the teacher answers: train for distillation, test so eval can compare."""
    few_shot: int = 0
    """Gold-labeled examples shown in each classification prompt (cycling through the labels)."""
    few_shot_split: str = "validation"
    """Split the demonstrations are drawn from. It may not be eval.split; the rows shown are left
    out of that split's teach output, so no student trains, and no temperature is fitted, on a row
    whose gold label the teacher was shown."""
    cache: str | None = None
    """SQLite answer cache; default $DISTILL_CACHE or ~/.cache/distill/teacher.sqlite."""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        for split in self.splits:
            if split not in SPLITS:
                raise ConfigError(f"teach.splits: unknown split {split!r}")
        if self.few_shot < 0:
            raise ConfigError("teach.few_shot: must be >= 0")
        if self.few_shot_split not in SPLITS:
            raise ConfigError(f"teach.few_shot_split: unknown split {self.few_shot_split!r}")
