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
