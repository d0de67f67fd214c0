"""Task kinds: the registry. Each kind is one file holding a ``Task`` subclass (distill/tasks/base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distill.core.config import TaskConfig
from distill.core.config.loader import build
from distill.core.errors import ConfigError
from distill.tasks.base import Task, TimedCalls
from distill.tasks.classification import Classification
from distill.tasks.sentence_pair import SentencePair
from distill.tasks.summarization import Summarization

if TYPE_CHECKING:
    from distill.core.config import PipelineConfig

__all__ = [
    "KINDS",
    "Task",
    "TimedCalls",
    "kind_class",
    "load_split",
    "task_for",
    "task_config",
    "task_from_student",
    "tasks_for",
    "train_tasks",
]


KINDS: dict[str, type[Task]] = {k.kind: k for k in (Classification, SentencePair, Summarization)}
"""The registered task kinds: a new kind is one file (a ``Task`` subclass) plus its entry here."""


def kind_class(kind: str) -> type[Task]:
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not a task kind (known: {', '.join(KINDS)})")
    return KINDS[kind]


def task_for(cfg: TaskConfig) -> Task:
    return kind_class(cfg.kind)(cfg)


def tasks_for(pipeline: PipelineConfig) -> list[Task]:
    return [task_for(t) for t in pipeline.tasks]


def train_tasks(pipeline: PipelineConfig) -> list[Task]:
    """The tasks the student learns: the pipeline's, then (with train.rationales) the rationale
    task of each that asks its teacher for rationales."""
    tasks = tasks_for(pipeline)
    if not pipeline.train.rationales:
        return tasks
    return [*tasks, *(r for t in tasks if (r := t.rationale_task()) is not None)]


def task_config(**keys: Any) -> TaskConfig:
    """A TaskConfig from the keys of a pipeline file's task entry (``name``, ``kind``, ``data``,
    the kind's own options flat beside them), checked as the pipeline loader checks them: for
    code and tests that need a task without a pipeline file."""
    keys.setdefault("data", {})
    return build(TaskConfig, keys, f"tasks.{keys.get('name')}", {"kind": kind_class})


def task_from_student(name: str, entry: dict[str, Any]) -> Task:
    """The task ``name`` of a saved student, rebuilt from its spec entry alone (a student folder
    has no pipeline file), for the student side only: encode, student_probs and
    student_summaries read the name, kind, labels and prefix (``Task.spec_options``); verbalizers
    and data, which only the teacher and the data loader read, are unknown."""
    cls = kind_class(entry["kind"])
    return cls(TaskConfig(name=name, kind=entry["kind"], data={}, options=cls.spec_options(entry)))


def load_split(cfg: TaskConfig, split: str) -> list:
    """The validated examples of one split of a configured task (``Task.load_split``)."""
    return task_for(cfg).load_split(split)
