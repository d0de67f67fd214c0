"""Teacher backends: the registry. A backend is one file (or folder) whose class implements
``Teacher`` and ``Backend`` (distill/teach/teachers/base.py), plus its entry in ``BACKENDS``;
``CachedTeacher`` (cached.py) wraps any of them in the content-addressed answer cache."""

from __future__ import annotations

from pathlib import Path

from distill.core.config import TeacherConfig
from distill.core.errors import ConfigError
from distill.teach.teachers.base import Answer, Backend, Teacher
from distill.teach.teachers.cached import CachedTeacher, check_answer
from distill.teach.teachers.local import LocalTeacher
from distill.teach.teachers.openai.client import APITeacher

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (LocalTeacher, APITeacher)}

__all__ = ["BACKENDS", "Answer", "CachedTeacher", "Teacher", "backend_class", "check_answer", "load_teacher"]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(
            f"teach.teacher.backend: {name!r} is not a teacher backend (known: {', '.join(BACKENDS)})"
        )
    return BACKENDS[name]


def load_teacher(cfg: TeacherConfig, run_dir: Path | None = None) -> Teacher:
    """``run_dir`` keeps the API backend's batch-job state, so a rerun resumes the same job."""
    return backend_class(cfg.backend).from_config(cfg, run_dir)
