"""The teacher protocol every backend implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from distill.teach.prompts import Prompt

Answer = dict[str, Any]
"""A label answer ``{"distribution": [p per verbalizer], "label_mass": float, "method": str}``,
a summary ``{"text": str, "finish_reason": "stop" | "length"}`` (with teacher.summary_top_k also
``"tokens": {"ids": [n], "top_ids": [n][k], "top_logprobs": [n][k]}``: the teacher's own tokens,
its stop token included by the local backend (an API answer has no token for it), and its top-k
log-probabilities at each), or, for an item the backend could not answer, ``{"error": reason}``."""


class Teacher(Protocol):
    """A backend: label prompts → class distributions; summarise prompts → texts.

    Both yield ``(index into prompts, answer)`` as answers complete, in any order, so that
    the cache can keep each one the moment it exists.
    """

    id: str
    """Names the model and its weights (or endpoint); part of every cache key."""

    def label_distribution(
        self, prompts: Sequence[Prompt], verbalizers: Sequence[str]
    ) -> Iterator[tuple[int, Answer]]: ...

    def summarize(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, Answer]]: ...

    def decoding_params(self) -> dict[str, Any]:
        """Every setting that changes an answer; part of every cache key."""
        ...

    def num_parameters(self) -> int | None: ...

    def usage(self) -> dict[str, Any]:
        """Requests, tokens, retries and estimated cost so far (empty for a local model)."""
        ...


class Backend(Protocol):
    """What a backend class declares beside the ``Teacher`` methods: its ``teach.teacher.backend``
    name, what eval may do with it, and its own config checks."""

    name: str
    timed_locally: bool
    """eval times it on its own device (a local model: then the class also has
    ``for_timing(cfg, batch_size, device)``, the teacher as eval times it); False: it is paid per
    call, so eval reports the teach run's request latency and usage instead."""
    Options: type
    """Its own options dataclass: the keys of ``teach.teacher`` beside the shared ones, read by
    the config loader when this backend is chosen."""

    @classmethod
    def from_config(cls, cfg: Any, state_dir: Any = None) -> Teacher: ...

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise ConfigError for teach.teacher settings this backend cannot run."""

    @classmethod
    def vocabulary(cls, cfg: Any) -> str | None:
        """A local tokenizer with the teacher's own vocabulary (the model, or for an API the
        configured ``tokenizer``), or None."""
