"""The eval and ablate sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill.core.config.task import DecodingConfig
from distill.core.errors import ConfigError


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 32
    """Student batch for the quality metrics."""
    max_new_tokens: int = 64
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """The student's summary decoding (a task's own ``decoding`` overrides it)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where both models run (student and local teacher alike), so their speeds compare."""
    speed_batch_size: int = 8
    """Items per batched call when timing throughput, for both models."""
    speed_budget_s: float = 30.0
    """Wall-clock budget of the whole speed phase, split evenly over (model, task) pairs;
    each slice holds up to 2 warm-up batches (fewer once they use a quarter of it), then
    batched calls, then single-item calls. Each phase runs at least once, so a model whose
    one batch outlasts its slice (a 0.5B teacher generating summaries on CPU) overruns by
    those calls; report.json records what each pair measured."""
    bootstrap_resamples: int = 1000
    """Resamples of the eval rows behind every metric's 95% percentile interval."""
    bootstrap_seed: int = 0
    allow_stale_student: bool = False
    """Evaluate a student trained on other teach outputs than the run folder holds now."""
    gates: dict[str, float] = field(default_factory=dict)
    """report.json path (dots) → minimum value; a miss exits non-zero.

    Example: ``fine_foods.student.accuracy: 0.6``."""
    promote_margin: float = 0.0
    """`distill run` promotes a student whose gates pass unless, on some task, the 95% interval
    of (new − promoted) on the same eval rows lies wholly below ``-promote_margin`` (headline
    metric units: accuracy, ROUGE-L)."""

    def __post_init__(self) -> None:
        if self.promote_margin < 0:
            raise ConfigError("eval.promote_margin: must be >= 0")
        for key in ("batch_size", "max_new_tokens", "speed_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key}: must be >= 1")
        if self.speed_budget_s <= 0:
            raise ConfigError("eval.speed_budget_s: must be > 0")
        if self.bootstrap_resamples < 100:
            raise ConfigError("eval.bootstrap_resamples: a 95% percentile interval needs at least 100")


@dataclass
class AblateConfig:
    """`distill ablate`: the systems trained (on the same teach outputs and step budget) and
    evaluated (on the same test rows) for the MTL-vs-single-task table."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Each student system is trained once per seed; the table reports mean ± std."""
    single_task: bool = True
    """One single-task student per task, with the pipeline's train settings."""
    baselines: bool = True
    """The multi-task student trained on gold only (no teacher), KD only (no gold) and KD+gold."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Name → --set overrides on top of the pipeline, e.g.
    ``uncertainty: [train.weighting.method=uncertainty]``."""

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("ablate.seeds: at least one seed, no repeats")
        for name, overrides in self.variants.items():
            for item in overrides:
                if "=" not in item or item.startswith("tasks"):
                    raise ConfigError(
                        f"ablate.variants.{name}: {item!r} is not a KEY=VALUE override of train/eval"
                    )
