"""A task's configuration: its kind, data and per-task overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distill.core.config.loader import PluginSlot
from distill.core.errors import ConfigError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


SPLITS = ("train", "validation", "test")


@dataclass
class DecodingConfig:
    """How the student writes a summary at eval. Degeneration is always also measured on plain
    greedy output, so a setting that hides a loop (no_repeat_ngram_size) cannot hide it there."""

    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    """Beam search only: > 1 favours longer summaries, < 1 shorter."""

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.no_repeat_ngram_size < 0:
            raise ConfigError("decoding.num_beams: must be >= 1; no_repeat_ngram_size: must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.num_beams == 1 and self.no_repeat_ngram_size == 0

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_beams": self.num_beams}
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        return kwargs


@dataclass
class TaskConfig:
    """One task: the keys every kind has; its kind (distill/tasks/) declares the rest."""

    PLUGIN: ClassVar[PluginSlot] = PluginSlot(registry="kind", discriminator="kind")

    name: str
    """Identifier used in outputs, losses and the report."""
    kind: str
    """classification (text → label), sentence_pair (two texts → label) or summarization
    (document → summary)."""
    data: dict[str, str]
    """Split name → local .jsonl/.json/.csv/.parquet file, or ``hub:NAME[:CONFIG]``."""
    traffic: str | None = None
    """A traffic log of ``distill serve --defer`` (``run_dir/traffic/<task>.jsonl``): the requests
    the student deferred to its teacher join the train split (their answers are in the cache
    already), so the next run learns what the student could not do. Not counted by max_rows."""
    instruction: str | None = None
    """Overrides the default prompt instruction for this task."""
    max_rows: dict[str, int] = field(default_factory=dict)
    """Split → number of rows to use; absent means all. Which ones: ``sample``."""
    sample: Literal["first", "random"] = "first"
    """max_rows takes the first N rows, or a deterministic random N: the rows whose seeded
    content hash is smallest, kept in file order. Rows appended to a file then enter the sample
    with the same chance as the old ones, and an old row leaves it only for a new one."""
    sample_seed: int = 0
    max_chars: int = 20000
    """Inputs longer than this are an error rather than a silent truncation."""
    soft_weight: float | None = None
    kd_temperature: float | None = None
    """Per-task overrides of train.soft_weight and train.kd_temperature."""
    options: Any = None
    """The kind's own keys (its ``Options`` in distill/tasks/KIND.py: text and label fields,
    labels, …), written flat beside these ones in the task's entry."""

    def __post_init__(self) -> None:
        where = f"tasks.{self.name}"
        for split, source in self.data.items():
            if split not in SPLITS:
                raise ConfigError(
                    f"{where}.data.{split}: unknown split (expected one of {', '.join(SPLITS)})"
                )
            if not source.startswith("hub:") and not source.endswith(DATA_SUFFIXES):
                raise ConfigError(
                    f"{where}.data.{split}: {source!r} is neither a "
                    f"{'/'.join(DATA_SUFFIXES)} file nor hub:NAME"
                )
        if self.traffic is not None and not self.traffic.endswith(".jsonl"):
            raise ConfigError(f"{where}.traffic: {self.traffic!r} is not a .jsonl traffic log")
        for split, n in self.max_rows.items():
            if split not in self.data:
                raise ConfigError(f"{where}.max_rows.{split}: no such split in data")
            if n <= 0:
                raise ConfigError(f"{where}.max_rows.{split}: must be positive")
        if self.soft_weight is not None and not 0.0 <= self.soft_weight <= 1.0:
            raise ConfigError(f"{where}.soft_weight: must be within [0, 1]")
        if self.kd_temperature is not None and self.kd_temperature <= 0:
            raise ConfigError(f"{where}.kd_temperature: must be > 0")
