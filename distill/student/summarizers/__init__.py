"""Summarizers of the student: the registry. A summarizer is one file or folder here (a class with
its ``name``, the sharing modes it supports and its pipeline checks) plus its entry in
``SUMMARIZERS``."""

from __future__ import annotations

from typing import Any

from distill.core.errors import ConfigError
from distill.student.summarizers.bert2bert import Bert2Bert
from distill.student.summarizers.teacher_layers import TeacherLayers

SUMMARIZERS: dict[str, Any] = {cls.name: cls for cls in (Bert2Bert, TeacherLayers)}


def summarizer_class(name: str) -> Any:
    if name not in SUMMARIZERS:
        raise ConfigError(
            f"train.student.summarizer: {name!r} is not a summarizer (known: {', '.join(SUMMARIZERS)})"
        )
    return SUMMARIZERS[name]
