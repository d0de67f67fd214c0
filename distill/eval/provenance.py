"""Which student eval scores: the loaded weights' hash and the student's training record,
checked against the teach outputs the run folder holds now, so a report never silently
describes a student trained on other data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.core.layout import WEIGHTS_FILE, outputs_sha256
from distill.core.manifest import sha256_files

if TYPE_CHECKING:
    from distill.student.model import Student


def warn(message: str) -> None:
    """An eval warning on stderr (the report carries its own copy where it matters)."""
    print(f"eval: warning: {message}", file=sys.stderr)


def student_provenance(cfg: PipelineConfig, student: Student, student_dir: Path) -> dict[str, Any]:
    """The loaded weights' hash and the student's training record; refuses a student trained on
    other teach outputs than the run folder holds now (unless eval.allow_stale_student)."""
    training = student.spec.training
    recorded = (training or {}).get("teach_outputs_sha256")
    try:
        current = outputs_sha256(cfg, "train")
    except FileNotFoundError as e:
        raise DistillError(
            f"eval: the teach train output {e.filename} is missing; run `distill teach`"
        ) from None
    provenance = {
        "weights_sha256": sha256_files([student_dir / WEIGHTS_FILE]),
        "training": training,
        "teach_outputs_sha256_now": current,
        "stale": recorded is not None and recorded != current,
    }
    if recorded is None:
        warn(
            f"the student in {student_dir} records no training provenance (an older `distill train`); "
            "cannot check it was trained on this run's teach outputs"
        )
    elif provenance["stale"]:
        message = (
            f"the student in {student_dir} was trained on teach outputs sha256 {recorded}, but "
            f"{cfg.path / 'teach'} now holds train outputs sha256 {current}"
        )
        if not cfg.eval.allow_stale_student:
            raise DistillError(f"{message}; rerun `distill train` or set eval.allow_stale_student: true")
        warn(message)
    return provenance
