"""The eval and ablate sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distill.core.config.loader import build
from distill.core.config.task import DecodingConfig
from distill.core.errors import ConfigError

LOWER_IS_BETTER = frozenset(
    {
        "ece", "kl_teacher_student", "nll", "below_min",  # classification (below_min: label mass)
        "repeated_3gram_rate", "empty", "cut", "teacher_cut_by_length",  # summaries
        "latency_p50_ms", "latency_p95_ms", "parameters", "disk_mb", "cost_usd", "retries",  # models
    }
)  # fmt: skip
"""Leaf keys of report.json where a smaller value is the better model. A minimum on one of them
would pass exactly when the model got worse, so its gate must say ``{max: X}``."""


def lower_is_better(dotted: str) -> bool:
    """Whether the report.json figure at ``dotted`` (a gate's key) is better when smaller."""
    leaf = dotted.rsplit(".", 1)[-1]
    timed = leaf.startswith("latency_") and leaf.endswith("_ms")  # latency_samples is a count
    return leaf in LOWER_IS_BETTER or leaf.startswith("kl_") or timed


@dataclass
class Gate:
    """Bounds on one report.json figure; a value outside them (or no value) fails the gate, and a
    failed gate blocks promotion."""

    min: float | None = None
    max: float | None = None


def gate(key: str, value: Any) -> Gate:
    """One ``eval.gates`` entry as written: ``{min: X}``, ``{max: X}``, both, or a bare number,
    which means a minimum and is refused for a lower-is-better figure."""
    where = f"eval.gates.{key}"
    if isinstance(value, Gate):
        spec = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if lower_is_better(key):
            raise ConfigError(
                f"{where}: {key.rsplit('.', 1)[-1]} is better when lower, and a bare number is a "
                f"minimum; write {{max: {value}}}"
            )
        spec = Gate(min=float(value))
    else:
        spec = build(Gate, value, where)
    if spec.min is None and spec.max is None:
        raise ConfigError(f"{where}: set min, max or both")
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        raise ConfigError(f"{where}: min {spec.min} is above max {spec.max}")
    return spec


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
    gates: dict[str, Any] = field(default_factory=dict)
    """report.json path (dots) → a ``Gate``: ``{min: X}``, ``{max: X}`` or both; a miss exits 4
    and blocks promotion. A bare number means ``{min: X}`` and is refused for a figure that is
    better when lower (ECE, KL, repeated 3-grams, latency: ``LOWER_IS_BETTER``).

    Example: ``{fine_foods.student.accuracy: {min: 0.6}, fine_foods.student.ece: {max: 0.1}}``."""
    promote_margin: float = 0.0
    """`distill run` promotes a student whose gates pass unless, on some task, the 95% paired
    interval of (new − old) on this run's eval rows lies wholly below ``-promote_margin``
    (headline metric units: accuracy, ROUGE-L), where old is the promoted student and also the
    best student ever promoted (the highest headline mean among history.jsonl's promoted runs
    whose folder is still there), both rescored on those rows. So a nightly chain of runs, each
    within the noise of the last, is refused once it falls below the best beyond the noise.
    run.json, the history and the `distill run` line report each task's drift (best − new)."""
    promote_when_uncompared: Literal["refuse", "allow"] = "refuse"
    """A task that cannot be compared (the promoted student lacks it; no eval row has a headline
    score from both students) gives no evidence the new student is not worse there: refuse
    promotion, or allow it (the task is recorded as not compared, with why, either way)."""

    def __post_init__(self) -> None:
        if not isinstance(self.gates, dict):
            raise ConfigError(f"eval.gates: expected a mapping, got {type(self.gates).__name__}")
        self.gates = {str(key): gate(str(key), value) for key, value in self.gates.items()}
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
    train_rows: list[int] = field(default_factory=list)
    """Train sizes: the whole table once per N, every student learning from N rows of each
    task (``train.train_rows``: a seeded random subset per seed, nested, so the 50 rows of a
    seed lie inside its 200); empty: every row. Where sharing should pay is little data."""
    epochs: float | None = None
    """With ``train_rows``: each size's step budget is ceil(epochs · N / train.batch_size), the
    same for every system of that size (with sampling all, each classification task then sees
    its N rows ``epochs`` times); None: train.steps at every size."""

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("ablate.seeds: at least one seed, no repeats")
        if any(n < 1 for n in self.train_rows) or sorted(set(self.train_rows)) != self.train_rows:
            raise ConfigError(
                f"ablate.train_rows: positive sizes in increasing order, no repeats; got {self.train_rows}"
            )
        if self.epochs is not None and (self.epochs <= 0 or not self.train_rows):
            raise ConfigError("ablate.epochs: must be > 0, and needs ablate.train_rows (sizes to scale by)")
        for name, overrides in self.variants.items():
            for item in overrides:
                if "=" not in item or item.startswith("tasks"):
                    raise ConfigError(
                        f"ablate.variants.{name}: {item!r} is not a KEY=VALUE override of train/eval"
                    )
