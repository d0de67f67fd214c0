"""The teach section: the teacher, its calibration, the splits it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distill.core.config.loader import PluginSlot
from distill.core.config.task import SPLITS
from distill.core.errors import ConfigError


@dataclass
class TeacherConfig:
    """The model that labels and summarises. The chosen backend's own options (its ``Options``
    dataclass in distill/teach/teachers/) sit beside these keys: ``distill config P.yaml
    teach.teacher`` lists them."""

    PLUGIN: ClassVar[PluginSlot] = PluginSlot(registry="teacher", discriminator="backend")

    backend: str = "local"
    """local: a transformers model in this process; openai: any OpenAI-compatible endpoint
    (distill/teach/teachers/, one file or folder per backend)."""
    model: str = "smollm2-135m-instruct"
    """local: a bundled alias (smollm2-135m-instruct), a transformers folder or a hub name.
    openai: the model name the endpoint serves."""
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
    min_label_mass: float = 0.05
    """A label answer whose labels hold less than this share of the answer's probability (the
    rest fell on other words) is not a label: the API teacher goes to its ``no_logprobs``
    fallback (samples, score_labels) or fails the item; the local teacher fails it. Either way
    it is never stored as a confident distribution. 0 turns the check off."""
    options: Any = None
    """The backend's own options (its ``Options`` dataclass); None: its defaults."""

    def __post_init__(self) -> None:
        for key in ("max_input_tokens", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"teach.teacher.{key}: must be >= 1")
        if not 0.0 <= self.min_label_mass < 1.0:
            raise ConfigError("teach.teacher.min_label_mass: must be within [0, 1)")
        if self.summary_top_k < 0:
            raise ConfigError("teach.teacher.summary_top_k: must be >= 0")


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
class PseudoLabelConfig:
    min_confidence: float = 0.9
    """A pool row the teacher never saw is trained on with the selection learner's own
    distribution when that learner's top probability is at least this."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_confidence <= 1.0:
            raise ConfigError("teach.select.pseudo_label.min_confidence: must be within (0, 1]")


@dataclass
class SelectConfig:
    """Active teaching: which rows of a classification task's train pool the teacher is asked
    about (distill/teach/select.py). The other splits are always taught whole."""

    strategy: Literal["all", "random", "margin", "entropy", "committee"] = "all"
    """all: every row (no selection). random: seeded random rows. margin / entropy: the rows
    where the learner's top-two margin is smallest / its entropy largest. committee: where
    ``committee`` learners fitted on bootstrap resamples disagree most (mean KL to their mean)."""
    seed_rows: int = 50
    """Round 0: this many seeded random rows, before any learner exists."""
    per_round: int = 50
    """Rows sent to the teacher in each later round."""
    budget: int | None = None
    """Most pool rows of one task the teacher is asked about (seed rows included); None: the
    whole pool. Rows the cache already holds count too, so the selection does not depend on
    what an earlier run paid for. With learner student: the most *new* rows (those the
    student's run was not taught) asked per run: the night's budget."""
    max_cost: float | None = None
    """API teachers: stop a task's rounds before its estimated cost (``cost_usd``, needs the
    backend's prices) would pass this."""
    learner: Literal["proxy", "student"] = "proxy"
    """proxy: softmax regression on the frozen student encoder's mean-pooled embeddings, fitted
    on the teacher's (calibrated) distributions each round in about a second (selection via
    proxy, Coleman et al. 2020). student: the nightly loop: a trained student (``student``; in
    ``distill run``, the promoted one) scores the pool rows its own run was not taught, in one
    round, and the teacher is asked about the ``budget`` least sure of them; the rows that run was
    taught are asked again through the cache (free). Without a student yet: proxy."""
    student: str | None = None
    """learner student: a student folder or a run folder (``distill run`` sets it to the
    pipeline's run_dir, whose promoted student, else latest, is used)."""
    committee: int = 5
    """Members of the committee (strategy committee)."""
    l2: float = 0.3
    """The proxy's L2 penalty on standardized embeddings. 0.3 scored best of 0.001–0.3 on the
    rotten_tomatoes pool of pipelines/active.yaml at 100, 300 and 1,000 rows (0.001 overfits:
    0.593 at 300 rows against 0.703)."""
    seed: int = 0
    pseudo_label: PseudoLabelConfig | None = None
    """None: rows the teacher never saw are not trained on."""

    def __post_init__(self) -> None:
        for key in ("seed_rows", "per_round", "committee"):
            if getattr(self, key) < 1:
                raise ConfigError(f"teach.select.{key}: must be >= 1")
        if self.committee < 2 and self.strategy == "committee":
            raise ConfigError("teach.select.committee: a committee needs at least 2 members")
        if self.budget is not None and self.budget < 1:
            raise ConfigError("teach.select.budget: must be >= 1 (or null: the whole pool)")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError("teach.select.max_cost: must be > 0")
        if self.l2 < 0:
            raise ConfigError("teach.select.l2: must be >= 0")
        if self.learner == "student" and self.strategy == "committee":
            raise ConfigError(
                "teach.select.strategy: committee needs learner proxy (one student is no committee)"
            )

    @property
    def active(self) -> bool:
        return self.strategy != "all"


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
    audit_rows: int = 50
    """Classification: the rows the calibrated teacher was least sure of, per task, written to
    ``teach/<task>/audit.jsonl`` for a person to look at (0: none)."""
    select: SelectConfig = field(default_factory=SelectConfig)

    def __post_init__(self) -> None:
        if self.audit_rows < 0:
            raise ConfigError("teach.audit_rows: must be >= 0")
        for split in self.splits:
            if split not in SPLITS:
                raise ConfigError(f"teach.splits: unknown split {split!r}")
        if self.few_shot < 0:
            raise ConfigError("teach.few_shot: must be >= 0")
        if self.few_shot_split not in SPLITS:
            raise ConfigError(f"teach.few_shot_split: unknown split {self.few_shot_split!r}")
