"""How tasks share the student (``train.student.sharing``): the registry. A mode is one file
here (a ``Sharing`` subclass, distill/student/sharing/base.py: its ``name``, ``Options``,
capability flags, task encoders, private features and auxiliary losses) plus its entry in
``SHARINGS``.

- ``hard``: every task reads the one shared encoder.
- ``shared_private`` / ``adversarial``: a private encoder per task beside it, and for
  adversarial a task discriminator behind gradient reversal plus an orthogonality penalty
  (Liu, Qiu & Huang 2017).
- ``soft``: an encoder copy per task, tied to their mean by an L2 penalty.
- ``branch``: the first k encoder layers shared, the rest per task.
"""

from __future__ import annotations

from distill.core.errors import ConfigError
from distill.student.sharing.adversarial import (
    Adversarial,
    adversarial_task_loss,
    confusion_loss,
    gradient_reversal,
    orthogonality_penalty,
    reversal_ramp,
)
from distill.student.sharing.base import Features, Hard, Sharing, encoder_inputs, mean_pool
from distill.student.sharing.branch import Branch
from distill.student.sharing.private import PrivateEncoder, SharedPrivate
from distill.student.sharing.soft import Soft, tie_penalty

SHARINGS: dict[str, type[Sharing]] = {
    cls.name: cls for cls in (Hard, SharedPrivate, Adversarial, Soft, Branch)
}

AUX_LOSSES: tuple[str, ...] = tuple(dict.fromkeys(n for cls in SHARINGS.values() for n in cls.losses))
"""Names of the auxiliary losses any mode's forward returns beside the task's (already weighted)."""

__all__ = [
    "AUX_LOSSES",
    "SHARINGS",
    "Features",
    "PrivateEncoder",
    "Sharing",
    "adversarial_task_loss",
    "confusion_loss",
    "encoder_inputs",
    "gradient_reversal",
    "mean_pool",
    "orthogonality_penalty",
    "reversal_ramp",
    "sharing_class",
    "tie_penalty",
]


def sharing_class(name: str) -> type[Sharing]:
    if name not in SHARINGS:
        raise ConfigError(f"{name!r} is not a sharing mode (known: {', '.join(SHARINGS)})")
    return SHARINGS[name]
