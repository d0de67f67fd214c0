"""Task weighting methods: the registry. A method is one file here (a ``Weighting`` subclass
with its ``name``, ``Options`` dataclass and capability flags) plus its entry in ``METHODS``."""

from __future__ import annotations

import dataclasses
from typing import Any

from distill.core.errors import ConfigError
from distill.train.weighting.base import SharedParameters, Weighting
from distill.train.weighting.dwa import DWA
from distill.train.weighting.famo import FAMO
from distill.train.weighting.gradnorm import GradNorm
from distill.train.weighting.pcgrad import PCGrad, pcgrad_project
from distill.train.weighting.rlw import RLW
from distill.train.weighting.static import Static
from distill.train.weighting.uncertainty import Uncertainty

METHODS: dict[str, type[Weighting]] = {
    cls.name: cls for cls in (Static, Uncertainty, DWA, RLW, FAMO, GradNorm, PCGrad)
}

__all__ = ["METHODS", "SharedParameters", "Weighting", "build_weighting", "pcgrad_project", "weighting_class"]


def weighting_class(method: str) -> type[Weighting]:
    if method not in METHODS:
        raise ConfigError(f"{method!r} is not a weighting method (known: {', '.join(METHODS)})")
    return METHODS[method]


def build_weighting(
    method: str,
    tasks: list[str],
    static_weights: dict[str, float],
    seed: int,
    options: Any = None,
    **values: Any,
) -> Weighting:
    """The weighting ``method`` over ``tasks``; ``options``: its ``Options`` (from the pipeline),
    or ``values``, the same options as keywords (e.g. dwa's ``window=2``)."""
    if method not in METHODS:
        raise ValueError(f"unknown weighting method {method!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[method]
    if values:
        allowed = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"weighting {method!r} takes options {allowed or 'none'}; got unknown {unknown}")
        options = cls.Options(**values)
    return cls(tasks, static_weights, seed, options)
