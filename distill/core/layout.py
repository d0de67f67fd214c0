"""Where every stage reads and writes: the one place that knows the paths under ``run_dir``
(``teach/<task>/<split>.jsonl``, ``train/student/``, ``eval/``) and in a student folder."""

from __future__ import annotations

import os
from pathlib import Path

from distill.core.assets import home
from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.core.manifest import sha256_files


def cache_path(cfg: PipelineConfig) -> Path:
    if cfg.teach.cache:
        return Path(cfg.teach.cache).expanduser()
    return Path(os.environ.get("DISTILL_CACHE", home() / "teacher.sqlite"))


def output_path(cfg: PipelineConfig, task: str, split: str) -> Path:
    return cfg.path / "teach" / task / f"{split}.jsonl"


def outputs_sha256(cfg: PipelineConfig, split: str) -> str:
    """One hash over every task's teach output for ``split``: what a student was trained on
    (split "train"), recorded by train and checked by eval."""
    return sha256_files([output_path(cfg, t.name, split) for t in cfg.tasks])


def failures_path(cfg: PipelineConfig) -> Path:
    return cfg.path / "teach" / "failures.jsonl"


SPEC_FILE = "student.json"


WEIGHTS_FILE = "model.safetensors"


DEFER_FILE = "defer.json"
"""In a student folder: per classification task, the confidence below which ``distill serve
--defer`` hands a request to the teacher (chosen by eval on the validation split)."""


def resolve_student_dir(path: str | Path) -> Path:
    """A student folder, or the one a run holds: ``path`` itself when it has ``student.json``,
    else ``path/train/student`` (one run), else the student of ``path/promoted`` then
    ``path/latest`` (a pipeline's ``run_dir`` after scheduled runs)."""
    path = Path(path)
    for candidate in (path, path / "train" / "student"):
        if (candidate / SPEC_FILE).is_file():
            return candidate
    for pointer in ("promoted", "latest"):
        if (path / pointer / "train" / "student" / SPEC_FILE).is_file():
            return (path / pointer / "train" / "student").resolve()
    raise DistillError(
        f"{path}: no student here (looked for {SPEC_FILE} in it, train/student, promoted/ and latest/)"
    )
