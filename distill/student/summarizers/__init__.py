"""Summarizers of the student: the registry. A summarizer is one file or folder here (a
``Summarizer`` subclass, distill/student/summarizers/base.py: its ``name``, the sharing modes it
supports, its pipeline checks, how it is built, saved, loaded, run and exported) plus its entry
in ``SUMMARIZERS``."""

from __future__ import annotations

from distill.core.errors import ConfigError
from distill.student.summarizers.base import Summarizer
from distill.student.summarizers.bert2bert import Bert2Bert
from distill.student.summarizers.teacher_layers import TeacherLayers

SUMMARIZERS: dict[str, type[Summarizer]] = {cls.name: cls for cls in (Bert2Bert, TeacherLayers)}

WITHOUT_DECODER: type[Summarizer] = Bert2Bert
"""What a student with no summarization task records as its summarizer (its spec has no decoder
config, and its backbone is the bare encoder)."""


def summarizer_class(name: str) -> type[Summarizer]:
    if name not in SUMMARIZERS:
        raise ConfigError(
            f"train.student.summarizer: {name!r} is not a summarizer (known: {', '.join(SUMMARIZERS)})"
        )
    return SUMMARIZERS[name]
