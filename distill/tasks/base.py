"""The task-kind interface. Each kind is one class that owns its prompt, teacher call, row checks,
tensors, loss and metrics; the stages iterate over tasks and call these methods, never switching
on the kind's name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm import tqdm

from distill.core.data import Example, read_jsonl, read_split, text_field
from distill.core.errors import ConfigError
from distill.core.layout import output_path

if TYPE_CHECKING:
    import numpy as np
    import torch

    from distill.core.config import PipelineConfig, TaskConfig, TrainConfig
    from distill.student.model import Student, StudentSpec
    from distill.teach.prompts import Prompt
    from distill.teach.teachers.base import Answer
    from distill.teach.teachers.cached import CachedTeacher
    from distill.train.batches import TaskTensors

TimedCalls = dict[str, tuple[Callable[[Any], Any], list[Any]]]
"""Model ("student", "teacher") → (a call on a list of items, the items it is timed on)."""


@dataclass
class NoOptions:
    """A kind with no keys of its own."""


class Task:
    """One configured task of some kind. Subclasses fill in every method."""

    kind: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    """The kind's own keys: a dataclass the loader reads from the task's entry, beside the keys
    every task has (distill/core/config/task.py); ``task.options`` holds them."""
    generates_text: ClassVar[bool] = False
    """Writes text through the student's shared decoder (and so has no label head)."""
    selectable: ClassVar[bool] = False
    """teach.select may choose which train rows the teacher labels: the kind has ``encode``,
    ``ask_rows`` and ``pseudo_rows``, and its teach rows hold a ``teacher_distribution``."""

    def __init__(self, cfg: TaskConfig):
        if cfg.options is None:
            cfg = dataclasses.replace(cfg, options=self.Options())
        elif not isinstance(cfg.options, self.Options):
            raise ConfigError(
                f"tasks.{cfg.name}: options are {type(cfg.options).__name__}, not kind {self.kind}'s "
                f"{self.Options.__name__}"
            )
        self.check_config(cfg)
        self.cfg = cfg

    @property
    def options(self) -> Any:
        """The kind's own keys (``Options``)."""
        return self.cfg.options

    @classmethod
    def spec_options(cls, entry: dict[str, Any]) -> Any:
        """The kind's options as far as a saved student's spec entry tells them (a student folder
        has no pipeline file): what the student side reads (``task_from_student``)."""
        return cls.Options()

    @property
    def name(self) -> str:
        return self.cfg.name

    @classmethod
    def check_config(cls, cfg: TaskConfig) -> None:
        """Raise ConfigError for a task config this kind cannot run (``cfg.options`` is set)."""

    def check_pipeline(self, pipeline: PipelineConfig) -> None:
        """Raise ConfigError for pipeline settings this task cannot run under."""

    # --- data and teacher -------------------------------------------------------------------
    def load_split(self, split: str) -> list[Example]:
        """Rows of one split (``max_rows`` and ``sample`` applied) as validated examples."""
        where = f"task {self.name}, {self.cfg.data.get(split)}"
        return [self.example(row, i, where) for i, row in enumerate(read_split(self.cfg, split))]

    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        """A data row → a validated example (ConfigError-like DistillError naming the row)."""
        raise NotImplementedError

    def prompt(self, example: Example, shots: list[Example]) -> Prompt:
        raise NotImplementedError

    def taught_splits(self, pipeline: PipelineConfig) -> list[str]:
        """Splits the teacher answers for this task."""
        return list(pipeline.teach.splits)

    def shots(self, pipeline: PipelineConfig, pool: list[Example] | None) -> list[Example]:
        """Demonstrations shown in every prompt (none unless the kind takes them)."""
        return []

    def teach(
        self,
        cached: CachedTeacher,
        pipeline: PipelineConfig,
        examples: dict[str, list[Example]],
        shots: list[Example],
    ) -> tuple[dict[str, list[Answer]], dict[str, Any] | None]:
        """Split → the teacher's answers, and what was fitted on them (calibration) or None."""
        raise NotImplementedError

    def ask_rows(
        self, cached: CachedTeacher, rows: list[Example], shots: list[Example], progress: Any = None
    ) -> list[Answer]:
        """The teacher's raw answers for ``rows`` (a selectable kind; ``teach`` asks through it)."""
        raise NotImplementedError

    def encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> dict[str, list[list[int]]]:
        """``input_ids`` (and ``token_type_ids`` for kinds with segments) per row, unpadded: what
        the student's encoder reads."""
        raise NotImplementedError

    def data_row(self, example: dict[str, Any]) -> dict[str, Any]:
        """An example (or a served request) in the task's data format, without gold: how
        ``distill serve --defer`` logs traffic the task later reads back (classification kinds)."""
        raise NotImplementedError

    def pseudo_rows(self, examples: list[Example], probs: np.ndarray) -> list[dict[str, Any]]:
        """Teach rows for ``examples`` labelled by a learner's ``probs`` (n, labels), marked so."""
        raise NotImplementedError

    def output_rows(
        self, examples: list[Example], answers: list[Answer], fitted: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The rows teach writes: each example with its teacher answer."""
        raise NotImplementedError

    def split_counts(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def rationales(
        self, cached: CachedTeacher, pipeline: PipelineConfig, split: str, rows: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Ask the teacher why it answered each of ``rows`` (the split's output rows), setting
        ``teacher_rationale`` on each; returns what it cost, or None for a kind or task that
        takes no rationales (the default)."""
        return None

    def rationale_task(self) -> Task | None:
        """The text task that learns this task's teacher rationales through the shared decoder
        (distill/tasks/rationale.py), or None."""
        return None

    def train_rows(self, pipeline: PipelineConfig) -> list[dict[str, Any]]:
        """The rows the student learns this task from: its teach output's train split."""
        return read_jsonl(output_path(pipeline, self.name, "train"))

    # --- student ----------------------------------------------------------------------------
    def student_entry(self) -> dict[str, Any]:
        """What the student's spec records for this task: kind, label names, input prefix."""
        raise NotImplementedError

    def unlabeled_text(self) -> list[str]:
        """Text of this task's train split usable without labels (a summarizer's warm-up)."""
        return []

    def tensors(
        self,
        rows: list[dict[str, Any]],
        tokenizer: Any,
        spec: StudentSpec,
        train: TrainConfig,
        codec: Any = None,
    ) -> TaskTensors:
        """``codec``: a teacher-layers summarizer's text ↔ ids (``Student.codec``), else None."""
        raise NotImplementedError

    def loss(
        self, model: Any, inputs: dict[str, torch.Tensor], train: TrainConfig
    ) -> dict[str, torch.Tensor]:
        """Named losses of one batch: ``"loss"`` (the task's total) and its parts."""
        raise NotImplementedError

    # --- eval -------------------------------------------------------------------------------
    def evaluate(
        self,
        pipeline: PipelineConfig,
        rows: list[dict[str, Any]],
        student: Student,
        tokenizer: Any,
        resamples: np.ndarray,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """This task's report section, every figure with its bootstrap interval, and the
        student's per-row scores behind it (what ``row_scores`` returns)."""
        raise NotImplementedError

    pairs: ClassVar[bool] = False
    """Whether a row is two texts (``text``, ``text_pair``) rather than one."""

    headline: ClassVar[str]
    """The per-row metric ``row_scores`` returns and `distill ablate` compares systems on."""

    def row_scores(
        self, pipeline: PipelineConfig, rows: list[dict[str, Any]], student: Student, tokenizer: Any
    ) -> dict[str, np.ndarray]:
        """The student's per-row scores on the eval rows, (n,) each (NaN where undefined), the
        headline metric among them."""
        raise NotImplementedError

    def teacher_row_scores(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The same per-row scores for the teacher's answers in ``rows``."""
        raise NotImplementedError

    def aggregate(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        """Per-row scores → the task's figures (means, or e.g. macro-F1 from predictions)."""
        raise NotImplementedError

    def timed_calls(
        self,
        pipeline: PipelineConfig,
        rows: list[dict[str, Any]],
        student: Student,
        tokenizer: Any,
        teacher: Any,
    ) -> TimedCalls:
        raise NotImplementedError

    # --- export -----------------------------------------------------------------------------
    def exporter(self, spec: StudentSpec) -> str:
        """The `distill export` format that writes this task of a student with ``spec`` (a key of
        distill/ship/export/run.py's EXPORTERS)."""
        raise NotImplementedError

    def probe_row(self, text: str) -> dict[str, Any]:
        """A row of this task's inputs made from one text: what export checks a folder on when
        it is given no rows."""
        raise NotImplementedError

    # --- shared helpers ---------------------------------------------------------------------
    def _ask_splits(
        self,
        pipeline: PipelineConfig,
        examples: dict[str, list[Example]],
        ask: Callable[[list[Example], Callable[[int], None]], list[Answer]],
    ) -> dict[str, list[Answer]]:
        """Split → the teacher's answers for its examples, with a progress bar per split."""
        answers = {}
        for split in self.taught_splits(pipeline):
            with tqdm(total=len(examples[split]), desc=f"teach {self.name}/{split}", unit="item") as bar:
                answers[split] = ask(examples[split], bar.update)
        return answers

    def _text(self, row: dict[str, Any], key: str, where: str, index: int) -> str:
        return text_field(row, key, where, index, self.cfg.max_chars)
