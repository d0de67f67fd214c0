"""The whole pipeline: shared parts and one section per stage, with the checks across sections
that need no plugin (distill/pipeline.py adds those that do)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.config.eval import AblateConfig, EvalConfig
from distill.core.config.loader import Plugins, build, plain, read_yaml
from distill.core.config.serve import ServeConfig
from distill.core.config.task import TaskConfig
from distill.core.config.teach import TeachConfig
from distill.core.config.train import TrainConfig
from distill.core.errors import ConfigError


@dataclass
class PipelineConfig:
    run_dir: str
    tasks: list[TaskConfig]
    teach: TeachConfig = field(default_factory=TeachConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    teacher_vocabulary: str | None = field(default=None, init=False)
    """Derived, not a key: a local tokenizer with the teacher's own vocabulary, as its backend
    answers (``Backend.vocabulary``; set by distill.pipeline.load)."""
    decoder_reads_teacher_tokens: bool = field(default=False, init=False)
    """Derived, not a key: whether the summarizer's vocabulary is the teacher's, so it learns
    the teacher's own tokens; otherwise it re-tokenizes the teacher's text (set by the
    summarizer's ``check_pipeline``, through distill.pipeline.load)."""

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise ConfigError("tasks: at least one task is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: duplicate task names in {names}")
        for name in self.train.task_weights:
            if name not in names:
                raise ConfigError(f"train.task_weights.{name}: no such task")
        for task in self.tasks:
            for split in self.teach.splits:
                if split not in task.data:
                    raise ConfigError(f"teach.splits: task {task.name} has no {split} split in data")
            if "train" not in task.data:
                raise ConfigError(f"tasks.{task.name}.data: a train split is required")
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
        if self.train.validate_every and not any("validation" in t.data for t in self.tasks):
            raise ConfigError("train.validate_every: no task has a validation split in its data")

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        """The resolved pipeline as plain data, in the pipeline file's own shape (plugin options
        flat in their section), so a manifest's config loads again as a pipeline."""
        return plain(self)


def deepspeed_zero_stage(path: str) -> int | None:
    """The ZeRO stage a DeepSpeed JSON asks for (None when the file is missing or unreadable:
    train reports that with the file's name)."""

    try:
        ds = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return int(ds.get("zero_optimization", {}).get("stage", 0)) if isinstance(ds, dict) else None


def read_pipeline(
    path: str | Path, overrides: list[str] | None = None, plugins: Plugins | None = None
) -> PipelineConfig:
    """Read a pipeline YAML (plus ``--set`` overrides) into a config checked within core's reach;
    ``distill.pipeline.load`` passes the plugin registries and adds the checks that need them."""
    data = read_yaml(path, overrides)
    try:
        return build(PipelineConfig, data, "", plugins)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
