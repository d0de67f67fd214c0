"""Loading a pipeline: the schema (distill/core/config/) plus the checks that need the plugins it
names (task kinds, weighting methods, summarizers, teacher backends). Every stage, the CLI and
``distill ablate`` load pipelines through ``load``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig, deepspeed_zero_stage, read_pipeline
from distill.core.config.loader import build
from distill.core.errors import ConfigError
from distill.student.sharing import sharing_class
from distill.student.summarizers import summarizer_class
from distill.tasks import kind_class, task_for, train_tasks
from distill.teach.teachers import backend_class
from distill.train.weighting import weighting_class

PLUGINS = {
    "kind": kind_class,
    "weighting": weighting_class,
    "teacher": backend_class,
    "summarizer": summarizer_class,
    "sharing": sharing_class,
}
"""The registries whose plugins' options the loader reads from their sections."""


def load(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read and check a pipeline YAML plus ``--set`` overrides; ConfigError naming the file and key."""
    cfg = read_pipeline(path, overrides, PLUGINS)
    try:
        check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def section(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """One config section built from plain data as the pipeline loader builds it, its plugin's
    options included (a backend's, a weighting method's): for code and tests that need a
    section without a whole pipeline."""
    return build(cls, data, where, PLUGINS)


def check(cfg: PipelineConfig) -> None:
    """The cross-section rules each plugin declares (its capability flags and checks)."""
    for task in cfg.tasks:
        task_for(task).check_pipeline(cfg)
    backend = backend_class(cfg.teach.teacher.backend)
    backend.check_config(cfg.teach.teacher)
    cfg.teacher_vocabulary = backend.vocabulary(cfg.teach.teacher)
    writes = any(t.generates_text for t in train_tasks(cfg))
    summarizer_class(cfg.train.student.summarizer).check_pipeline(cfg, writes)
    _check_weighting(cfg)
    sharing_class(cfg.train.student.sharing.method).check_pipeline(
        cfg,
        deepspeed_zero_stage(cfg.train.deepspeed),
        weighting_class(cfg.train.weighting.method).needs_gradients,
    )


def _check_weighting(cfg: PipelineConfig) -> None:
    method = cfg.train.weighting.method
    cls = weighting_class(method)
    if cls.needs_gradients and deepspeed_zero_stage(cfg.train.deepspeed) == 3:
        raise ConfigError(
            f"train.weighting.method: {method} needs per-task gradients of the whole shared "
            f"encoder, which ZeRO-3 ({cfg.train.deepspeed}) partitions across processes; use ZeRO 0-2, "
            "or a method without gradients (static, uncertainty, dwa, rlw, famo)"
        )
    if cls.needs_every_task and cfg.train.sampling != "all":
        raise ConfigError(
            f"train.weighting.method: {method} needs every task's loss at every step; it needs "
            f"train.sampling: all, not {cfg.train.sampling}"
        )
    if not cls.honours_task_weights and any(w != 1.0 for w in cfg.train.task_weights.values()):
        raise ConfigError(
            f"train.task_weights: {method} would cancel a static task weight (see "
            f"distill/train/weighting/{method}.py); drop train.task_weights or use static, dwa, rlw "
            "or pcgrad, which scale each task's loss by it"
        )
