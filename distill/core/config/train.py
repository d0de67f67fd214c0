"""The train section: the student, weighting, sampling and the optimisation settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from distill.core.config.loader import PluginSlot
from distill.core.errors import ConfigError


@dataclass
class WarmupConfig:
    """One-time pre-training of the summarization decoder on the bundled unlabeled text (every
    train-split document of the pipeline's summarization tasks, references unused), cached by
    content under distill's home, so every run with the same student starts from it
    (distill/student/warmup.py). bert2bert: denoising (the encoder reads a span with tokens masked, the
    decoder writes its start); teacher_layers: recovery of the cut (next-token loss plus
    DistilBERT's cosine loss to the teacher's last hidden states)."""

    steps: int = 0
    """0: no warm-up."""
    extra_text: dict[str, str] = field(default_factory=dict)
    """More unlabeled text: JSONL file → the field holding the text (e.g. another bundled set's
    train split). Never an eval split: the student must not have read the rows it is scored on."""
    batch_size: int = 8
    length: int = 128
    """Tokens per span."""
    target_length: int = 32
    """bert2bert: tokens of the span the decoder writes."""
    mask_rate: float = 0.15
    """bert2bert: share of the encoder's tokens masked."""
    hidden_weight: float = 1.0
    """teacher_layers: weight of 1 − cos(student, teacher) last hidden states."""
    lr: float = 2.0e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size - 1, self.length - 8, self.target_length - 1) < 0:
            raise ConfigError(
                "train.student.warmup: steps >= 0, batch_size >= 1, length >= 8, target_length >= 1"
            )
        if not 0.0 <= self.mask_rate < 1.0 or self.hidden_weight < 0 or self.lr <= 0:
            raise ConfigError("train.student.warmup: mask_rate in [0, 1), hidden_weight >= 0, lr > 0")


@dataclass
class SharingConfig:
    """How the tasks share the student's encoder (distill/student/sharing/, one file per mode).
    The chosen mode's own options sit beside ``method``; ``distill config P.yaml
    train.student.sharing`` lists them."""

    PLUGIN: ClassVar[PluginSlot] = PluginSlot(registry="sharing", discriminator="method")

    method: str = "hard"
    """hard: every task reads the shared encoder; shared_private: plus a one-layer private
    encoder per task; adversarial: shared_private plus a task discriminator behind gradient
    reversal and an orthogonality penalty (Liu, Qiu & Huang 2017); soft: an encoder copy per
    task tied by an L2 penalty; branch: the first layers shared, the rest per task."""
    options: Any = None
    """The mode's own options (its ``Options`` dataclass); None: its defaults."""


@dataclass
class StudentConfig:
    PLUGIN: ClassVar[PluginSlot] = PluginSlot(registry="summarizer", discriminator="summarizer")
    MOVED: ClassVar[dict[str, str]] = {
        "private_feedforward": "sharing.private_feedforward",
        "adversarial_weight": "sharing.adversarial_weight",
        "orthogonality_weight": "sharing.orthogonality_weight",
    }

    encoder: str = "all-minilm-l6-v2"
    """A bundled alias (all-minilm-l6-v2), a local BERT-style folder, or a hub name."""
    max_length: int = 128
    """Classification input tokens."""
    max_document_length: int = 256
    max_summary_length: int = 64
    dropout: float = 0.1
    sharing: SharingConfig = field(default_factory=SharingConfig)
    """How the tasks share the encoder (distill/student/sharing/, one file per mode); written
    as a mode's name alone (``sharing: adversarial``) or as a section with its options."""
    summarizer: str = "teacher_layers"
    """The summarization module (distill/student/summarizers/, one file or folder each).
    bert2bert: a decoder warm-started from the encoder's weights, cross-attending to the shared
    encoder. teacher_layers: a decoder-only student cut from the teacher's own layers, reading
    the teacher's prompt in the teacher's vocabulary and the shared encoder through ``bridge``.
    The chosen summarizer's own options sit beside this key (``distill config P.yaml
    train.student`` lists them)."""
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    options: Any = None
    """The summarizer's own options (its ``Options`` dataclass); None: its defaults."""


@dataclass
class WeightingConfig:
    """How the per-task losses become the one loss the engine backpropagates
    (distill/train/weighting/, one file per method). The chosen method's own options sit beside
    ``method`` (e.g. ``window`` for dwa); ``distill config P.yaml train.weighting`` lists them."""

    PLUGIN: ClassVar[PluginSlot] = PluginSlot(registry="weighting", discriminator="method")
    MOVED: ClassVar[dict[str, str]] = {
        "dwa_window": "window",
        "dwa_temperature": "temperature",
        "gradnorm_alpha": "alpha",
        "gradnorm_lr": "lr",
        "famo_lr": "lr",
        "famo_gamma": "gamma",
    }

    method: str = "static"
    """static, uncertainty, dwa, rlw, famo, gradnorm or pcgrad (distill/train/weighting/)."""
    options: Any = None
    """The method's own options (its ``Options`` dataclass); None: its defaults."""


@dataclass
class TeacherConfidenceConfig:
    """How much a classification row's teacher label is trusted, by the teacher's confidence
    (the top probability of its calibrated distribution): exactly one of ``min`` and ``weight``.
    Rows labelled by teach.select's learner (pseudo labels) carry that learner's confidence."""

    min: float | None = None
    """Drop the rows whose teacher confidence is below this."""
    weight: Literal["confidence"] | None = None
    """confidence: each row's KD and hard-label terms are weighted by its teacher confidence
    (a batch's term is Σ wᵢ·lossᵢ / Σ wᵢ, so equal weights give the unweighted loss)."""

    def __post_init__(self) -> None:
        if (self.min is None) == (self.weight is None):
            raise ConfigError(
                "train.teacher_confidence: set exactly one of min (drop) and weight (confidence)"
            )
        if self.min is not None and not 0.0 < self.min <= 1.0:
            raise ConfigError("train.teacher_confidence.min: must be within (0, 1]")


@dataclass
class TrainConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    deepspeed: str = "pipelines/deepspeed/zero0_fp32.json"
    """DeepSpeed JSON: ZeRO stage, precision, clipping. Batch size and optimizer come from here, not it."""
    epochs: int = 2
    """Passes over the data: with sampling all, enough steps for the largest task to see each of
    its rows once per epoch; otherwise epochs × the batches of all tasks together."""
    steps: int | None = None
    """A step budget (optimizer steps) instead of epochs."""
    train_rows: int | None = None
    """Learn from at most this many rows of each task's teach output: the rows whose
    sha256(seed, id) is smallest (bottom-k hashing, as tasks.NAME.max_rows with sample: random),
    so the subset of a smaller N lies inside a larger one's and rows appended to the file keep
    the old ones' chance; None: every row. ``distill ablate``'s ablate.train_rows sets it."""
    sampling: Literal["all", "proportional", "temperature", "annealed", "uniform"] = "all"
    """Which tasks a micro-step trains on: all (a batch of every task), or one task drawn with
    p ∝ n (proportional), n^(1/T) (temperature, T5), n^α with α 1 → 0.2 over training
    (annealed, Stickland & Murray 2019), or uniformly; n is the task's batches per epoch.
    Draws are a function of (seed, step)."""
    sampling_temperature: float = 2.0
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    batch_size: int = 16
    """Per-process micro-batch for classification tasks."""
    summary_batch_size: int = 4
    """Per-process micro-batch for summarization tasks."""
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    kd_temperature: float = 2.0
    """T: the KL term compares teacher and student label distributions both softened to T, scaled
    by T² (Hinton et al. 2015); tasks.NAME.kd_temperature overrides it for one task."""
    soft_weight: float = 0.5
    """Classification loss = soft_weight · T²·KL(teacher‖student) + (1 − soft_weight) · CE(hard label)."""
    hard_labels: Literal["gold", "teacher", "none"] = "teacher"
    """The CE target: the teacher's argmax (distil from the teacher), the gold label (rows without
    one get no CE), or none (pure KD; needs soft_weight 1.0)."""
    teacher_confidence: TeacherConfidenceConfig | None = None
    """Classification: drop or down-weight the rows the teacher was unsure of; None: every
    teacher label at full weight."""
    cut_summaries: Literal["no_eos", "exclude"] = "no_eos"
    """Teacher summaries cut by the length limit: taught without an end token, or dropped."""
    summary_targets: Literal["teacher", "reference"] = "teacher"
    """What the decoder learns to write: the teacher's summaries (sequence-level KD) or the gold
    references (the no-teacher baseline)."""
    rationales: bool = True
    """Learn the teacher's rationales of the classification tasks that ask for them
    (tasks.NAME.rationale) as the text tasks NAME_rationale of the shared decoder; false: the
    label heads alone (the rationales stay in the teach output, for an ablation)."""
    token_kd_weight: float = 0.0
    """Summaries, for a student with the teacher's vocabulary (summarizer: teacher_layers) and
    teach outputs with the teacher's top-k (teach.teacher.summary_top_k): loss = (1 − w) · CE on the
    teacher's tokens + w · KL(teacher top-k ‖ student) per token (token-level KD)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (DeepSpeed's train_batch_size = micro × this × world)."""
    group_by_length: bool = True
    """Batch rows of similar length together (within chunks of ~50 batches) to cut padding."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Task name → static loss weight (default 1.0)."""
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    validate_every: int = 0
    """Every N steps (and at the end), score the student on each task's validation data (gold
    labels, references: the headline metric, accuracy or ROUGE-L, row by row) and export the
    best step (mean over tasks) instead of the last only when its paired 95% bootstrap interval
    of (best − last) lies above 0 (distill/train/validation.py); 0: off, the last step is
    exported. The train manifest's ``selected`` records the steps scored, the choice and why."""
    validation_rows: int = 32
    """Rows of each task's validation split that ``validate_every`` scores: a random sample fixed
    by ``seed`` (bottom-k hashing of the row content, as ``max_rows`` with ``sample: random``),
    not the first N."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.validate_every < 0 or self.validation_rows < 1:
            raise ConfigError("train.validate_every: must be >= 0, and train.validation_rows >= 1")
        if self.kd_temperature <= 0:
            raise ConfigError("train.kd_temperature: must be > 0")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ConfigError("train.soft_weight: must be within [0, 1]")
        if self.hard_labels == "none" and self.soft_weight != 1.0:
            raise ConfigError(
                f"train.hard_labels: none (pure KD) needs train.soft_weight: 1.0, not {self.soft_weight}"
            )
        if self.steps is not None and self.steps < 1:
            raise ConfigError("train.steps: must be >= 1")
        if self.train_rows is not None and self.train_rows < 1:
            raise ConfigError("train.train_rows: must be >= 1")
        if not 0.0 <= self.token_kd_weight <= 1.0:
            raise ConfigError("train.token_kd_weight: must be within [0, 1]")
        if self.sampling_temperature <= 0:
            raise ConfigError("train.sampling_temperature: must be > 0")
        positive = ("epochs", "batch_size", "summary_batch_size", "checkpoint_every", "keep_checkpoints")
        for key in (*positive, "gradient_accumulation_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1")
