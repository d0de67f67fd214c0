"""Typed configuration for every stage; YAML is only its serialised form.

A pipeline file holds the shared parts (``run_dir``, ``tasks``) and one section per
stage. Loading is strict: an unknown key, a wrong type or a contradiction raises
``ConfigError`` naming the key, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.errors import ConfigError

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
    """One task; its kind (distill/tasks/) decides which fields it reads."""

    name: str
    """Identifier used in outputs, losses and the report."""
    kind: str
    """classification (text → label), sentence_pair (two texts → label) or summarization
    (document → summary)."""
    data: dict[str, str]
    """Split name → local .jsonl/.json/.csv/.parquet file, or ``hub:NAME[:CONFIG]``."""
    text_field: str = "text"
    """Classification: the input text column."""
    text_pair_field: str | None = None
    """Sentence pairs: the second text column."""
    label_field: str | None = "label"
    """Classification: gold label column; rows may lack it (then the teacher's argmax is the hard label)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Classification: label → verbalizer, the word the teacher answers with."""
    document_field: str = "document"
    """Summarization: the document column."""
    reference_field: str | None = "summary"
    """Summarization: optional reference summary column."""
    prefix: str | None = None
    """Summarization: what the student reads before each document, so the decoder the
    summarization tasks share knows which one it writes for (default "NAME: ")."""
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
    decoding: DecodingConfig | None = None
    """Summarization: how the student decodes this task's summaries (default: eval.decoding)."""

    def __post_init__(self) -> None:
        from distill.tasks import kind_class

        where = f"tasks.{self.name}"
        try:
            kind_class(self.kind).check_config(self)
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}" if str(e).startswith("kind ") else str(e)) from None
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
        for split, n in self.max_rows.items():
            if split not in self.data:
                raise ConfigError(f"{where}.max_rows.{split}: no such split in data")
            if n <= 0:
                raise ConfigError(f"{where}.max_rows.{split}: must be positive")
        if self.soft_weight is not None and not 0.0 <= self.soft_weight <= 1.0:
            raise ConfigError(f"{where}.soft_weight: must be within [0, 1]")
        if self.kd_temperature is not None and self.kd_temperature <= 0:
            raise ConfigError(f"{where}.kd_temperature: must be > 0")

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)


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
    """Divide out a per-label prior: the teacher's answer to content-free inputs ("N/A", "", "[MASK]"),
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


@dataclass
class WarmupConfig:
    """One-time pre-training of the summarization decoder on the bundled unlabeled text (every
    train-split document of the pipeline's summarization tasks, references unused), cached by
    content under distill's home, so every run with the same student starts from it
    (distill/warmup.py). bert2bert: denoising (the encoder reads a span with tokens masked, the
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
class StudentConfig:
    encoder: str = "all-minilm-l6-v2"
    """A bundled alias (all-minilm-l6-v2), a local BERT-style folder, or a hub name."""
    max_length: int = 128
    """Classification input tokens."""
    max_document_length: int = 256
    max_summary_length: int = 64
    dropout: float = 0.1
    sharing: Literal["hard", "shared_private", "adversarial"] = "hard"
    """hard: every task reads the shared encoder only; shared_private: plus a one-layer private
    encoder per task; adversarial: shared_private plus a task discriminator behind gradient
    reversal and an orthogonality penalty (Liu, Qiu & Huang 2017; distill/sharing.py)."""
    private_feedforward: int = 512
    adversarial_weight: float = 0.05
    """λ_adv: weight of the task discriminator's loss."""
    orthogonality_weight: float = 0.01
    """γ: weight of ‖SᵀH‖²_F between shared and private features."""
    summarizer: Literal["bert2bert", "teacher_layers"] = "bert2bert"
    """The summarization module (distill/decoders.py). bert2bert: a decoder warm-started from the
    encoder's weights, cross-attending to the shared encoder. teacher_layers: a decoder-only
    student cut from the teacher's own layers, reading the teacher's prompt in the teacher's
    vocabulary and the shared encoder through ``bridge``."""
    decoder_source: str | None = None
    """teacher_layers: the model whose layers seed the decoder (a bundled alias or folder);
    None: teach.teacher.model (needs a local teacher)."""
    decoder_layers: int = 4
    """teacher_layers: layers kept (the first and last always among them)."""
    layer_choice: Literal["block_influence", "uniform"] = "block_influence"
    """teacher_layers: how the middle layers are chosen: the largest block influence
    (1 − cos(input, output), measured on training prompts) or evenly spaced."""
    decoder_vocab: Literal["corpus", "full"] = "corpus"
    """teacher_layers: output vocabulary: the tokens of the training corpus (plus every byte), or
    the teacher's whole vocabulary."""
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    bridge: bool = True
    """teacher_layers: add the shared encoder's pooled state (through a zero-initialised linear map)
    to every prompt token's embedding, so the summarization loss trains the shared encoder too;
    false: the decoder does not read the shared encoder."""

    def __post_init__(self) -> None:
        if self.adversarial_weight < 0 or self.orthogonality_weight < 0:
            raise ConfigError("train.student.adversarial_weight and orthogonality_weight: must be >= 0")
        if self.decoder_layers < 2:
            raise ConfigError("train.student.decoder_layers: must be >= 2")
        if self.summarizer == "teacher_layers" and self.sharing != "hard":
            raise ConfigError(
                "train.student.summarizer: teacher_layers reads the shared encoder through its bridge "
                "only; it supports sharing: hard"
            )


WEIGHTING_METHODS = ("static", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad")
GRADIENT_METHODS = ("gradnorm", "pcgrad")
"""Methods that take per-task gradients of the whole shared encoder (ZeRO-3 partitions it)."""
ALL_TASK_METHODS = ("dwa", "famo", "gradnorm", "pcgrad")
"""Methods that need every task's loss at every step (sampling: all): histories of every task's
loss (dwa, famo, gradnorm), or gradients to project against each other (pcgrad)."""


@dataclass
class WeightingConfig:
    """How the per-task losses become the one loss the engine backpropagates (distill/weighting.py)."""

    method: Literal["static", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad"] = "static"
    """static: train.task_weights; uncertainty: learned log σ² (Kendall et al. 2018); dwa: loss
    descent rates (Liu et al. 2019); rlw: random weights (Lin et al. 2022); famo: Liu et al. 2023;
    gradnorm: equalised gradient norms (Chen et al. 2018); pcgrad: projected conflicting gradients
    (Yu et al. 2020)."""
    dwa_window: int = 20
    """dwa: micro-steps per averaging window (the paper's epoch)."""
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    famo_lr: float = 0.025
    famo_gamma: float = 0.01

    def options(self) -> dict[str, Any]:
        """Keyword options of the chosen method."""
        return {
            "dwa": {"window": self.dwa_window, "temperature": self.dwa_temperature},
            "gradnorm": {"alpha": self.gradnorm_alpha, "lr": self.gradnorm_lr},
            "famo": {"lr": self.famo_lr, "gamma": self.famo_gamma},
        }.get(self.method, {})

    def __post_init__(self) -> None:
        if self.dwa_window < 1 or self.dwa_temperature <= 0:
            raise ConfigError("train.weighting.dwa_window and dwa_temperature: must be positive")


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
    soft_weight: float = 0.5
    """Classification loss = soft_weight · T²·KL(teacher‖student) + (1 − soft_weight) · CE(hard label)."""
    hard_labels: Literal["gold", "teacher", "none"] = "teacher"
    """The CE target: the teacher's argmax (distil from the teacher), the gold label (rows without
    one get no CE), or none (pure KD; needs soft_weight 1.0)."""
    cut_summaries: Literal["no_eos", "exclude"] = "no_eos"
    """Teacher summaries cut by the length limit: taught without an end token, or dropped."""
    summary_targets: Literal["teacher", "reference"] = "teacher"
    """What the decoder learns to write: the teacher's summaries (sequence-level KD) or the gold
    references (the no-teacher baseline)."""
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
    labels, references: the headline metric, accuracy or ROUGE-L) and export the best step's
    weights instead of the last; 0: off, the last step is exported."""
    validation_rows: int = 32
    """The first N rows of each task's validation split that ``validate_every`` scores."""
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
        if not 0.0 <= self.token_kd_weight <= 1.0:
            raise ConfigError("train.token_kd_weight: must be within [0, 1]")
        if self.sampling_temperature <= 0:
            raise ConfigError("train.sampling_temperature: must be > 0")
        method = self.weighting.method
        if method in ALL_TASK_METHODS and self.sampling != "all":
            raise ConfigError(
                f"train.weighting.method: {method} needs every task's loss at every step; it needs "
                f"train.sampling: all, not {self.sampling}"
            )
        positive = ("epochs", "batch_size", "summary_batch_size", "checkpoint_every", "keep_checkpoints")
        for key in (*positive, "gradient_accumulation_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1")


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


@dataclass
class PipelineConfig:
    run_dir: str
    tasks: list[TaskConfig]
    teach: TeachConfig = field(default_factory=TeachConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)

    def __post_init__(self) -> None:
        from distill.tasks import task_for

        names = [t.name for t in self.tasks]
        if not names:
            raise ConfigError("tasks: at least one task is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: duplicate task names in {names}")
        method = self.train.weighting.method
        if method in GRADIENT_METHODS and deepspeed_zero_stage(self.train.deepspeed) == 3:
            raise ConfigError(
                f"train.weighting.method: {method} needs per-task gradients of the whole shared "
                f"encoder, which ZeRO-3 ({self.train.deepspeed}) partitions across processes; use "
                "ZeRO 0-2, or a loss-based method (static, uncertainty, dwa, rlw, famo)"
            )
        for name in self.train.task_weights:
            if name not in names:
                raise ConfigError(f"train.task_weights.{name}: no such task")
        for task in self.tasks:
            for split in self.teach.splits:
                if split not in task.data:
                    raise ConfigError(f"teach.splits: task {task.name} has no {split} split in data")
            if "train" not in task.data:
                raise ConfigError(f"tasks.{task.name}.data: a train split is required")
            task_for(task).check_pipeline(self)
            if self.eval.split not in task.data:
                raise ConfigError(f"eval.split: task {task.name} has no {self.eval.split} split in data")
        # Nothing may be fitted on, or shown from, the rows the report scores.
        if self.teach.calibration.temperature and self.teach.calibration.split == self.eval.split:
            raise ConfigError(
                f"teach.calibration.split: {self.eval.split!r} is also eval.split; fitting the "
                "temperature on the rows the report scores would leak them into the result"
            )
        if self.teach.few_shot and self.teach.few_shot_split == self.eval.split:
            raise ConfigError(
                f"teach.few_shot_split: {self.eval.split!r} is also eval.split; demonstrations "
                "must not come from the rows the report scores"
            )
        if self.teach.calibration.prior == "pool_mean" and "train" not in self.teach.splits:
            raise ConfigError("teach.calibration.prior: pool_mean needs train among teach.splits")
        if self.eval.split not in self.teach.splits:
            raise ConfigError(
                f"eval.split: {self.eval.split!r} must be among teach.splits to compare with the teacher"
            )
        self._check_summarizer()
        if self.train.validate_every and not any("validation" in t.data for t in self.tasks):
            raise ConfigError("train.validate_every: no task has a validation split in its data")

    def _check_summarizer(self) -> None:
        student, teacher = self.train.student, self.teach.teacher
        if student.summarizer == "teacher_layers" and student.decoder_source is None:
            if teacher.backend != "local":
                raise ConfigError(
                    "train.student.decoder_source: the teacher is an API; name a local model whose "
                    "layers seed the decoder (with the served model's vocabulary for token-level KD)"
                )
            student.decoder_source = teacher.model
        if self.train.token_kd_weight > 0:
            if student.summarizer != "teacher_layers":
                raise ConfigError(
                    "train.token_kd_weight: token-level KD needs the teacher's vocabulary "
                    "(train.student.summarizer: teacher_layers)"
                )
            if teacher.summary_top_k == 0:
                raise ConfigError(
                    "train.token_kd_weight: needs the teacher's per-token top-k "
                    "(teach.teacher.summary_top_k > 0)"
                )
        if self.train.token_kd_weight > 0 and not self.decoder_reads_teacher_tokens:
            vocabulary = teacher.model if teacher.backend == "local" else teacher.tokenizer
            raise ConfigError(
                f"train.token_kd_weight: the decoder ({student.decoder_source!r}) must have the teacher's "
                f"own vocabulary ({vocabulary!r}) to learn its per-token distributions"
            )

    @property
    def decoder_reads_teacher_tokens(self) -> bool:
        """Whether the summarizer's vocabulary is the teacher's (decoder_source is the teacher, or
        for an API teacher its teach.teacher.tokenizer): then it learns the teacher's own tokens;
        otherwise it re-tokenizes the teacher's text."""
        student, teacher = self.train.student, self.teach.teacher
        vocabulary = teacher.model if teacher.backend == "local" else teacher.tokenizer
        return student.summarizer == "teacher_layers" and student.decoder_source == vocabulary

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tasks"] = [dataclasses.asdict(t) for t in self.tasks]
        return data


def deepspeed_zero_stage(path: str) -> int | None:
    """The ZeRO stage a DeepSpeed JSON asks for (None when the file is missing or unreadable:
    train reports that with the file's name)."""
    import json

    try:
        ds = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return int(ds.get("zero_optimization", {}).get("stage", 0)) if isinstance(ds, dict) else None


def _build(cls: Any, value: Any, where: str) -> Any:
    """Turn plain YAML data into ``cls``, checking keys and types on the way down."""
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{_join(where, unknown[0])}: unknown key (known: {', '.join(fields)})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(where, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(where, name)}: required key is missing")
        return cls(**kwargs)
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if cls in (int, float, str, bool) and (type(value) is not cls):
        raise ConfigError(f"{where}: expected {cls.__name__}, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        if key == "tasks":
            raise ConfigError(f"--set {dotted}: use tasks.NAME.KEY")
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a mapping")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``key.path=value`` strings; values are parsed as YAML (``3`` is an int)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if key.startswith("tasks."):
            _, name, rest = (key.split(".", 2) + [""])[:3]
            matches = [t for t in data.get("tasks", []) if isinstance(t, dict) and t.get("name") == name]
            if not matches or not rest:
                raise ConfigError(f"--set {key}: no task named {name!r}")
            _set(matches[0], rest, value)
        else:
            _set(data, key, value)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML (plus ``--set`` overrides) into a validated config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(data, overrides or [])
    try:
        return _build(PipelineConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
