"""The typed pipeline configuration, one module per section; YAML is only its serialised form."""

from distill.core.config.eval import AblateConfig, EvalConfig
from distill.core.config.loader import PluginSlot, apply_overrides, build, described, field_docs, plain
from distill.core.config.pipeline import PipelineConfig, deepspeed_zero_stage, read_pipeline
from distill.core.config.task import DATA_SUFFIXES, SPLITS, DecodingConfig, TaskConfig
from distill.core.config.teach import CalibrationConfig, TeachConfig, TeacherConfig
from distill.core.config.train import SharingConfig, StudentConfig, TrainConfig, WarmupConfig, WeightingConfig

__all__ = [
    "DATA_SUFFIXES",
    "SPLITS",
    "AblateConfig",
    "CalibrationConfig",
    "DecodingConfig",
    "EvalConfig",
    "PipelineConfig",
    "PluginSlot",
    "SharingConfig",
    "StudentConfig",
    "TaskConfig",
    "TeachConfig",
    "TeacherConfig",
    "TrainConfig",
    "WarmupConfig",
    "WeightingConfig",
    "apply_overrides",
    "build",
    "deepspeed_zero_stage",
    "described",
    "field_docs",
    "read_pipeline",
    "plain",
]
