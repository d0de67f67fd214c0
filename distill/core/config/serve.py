"""The serve section: how `distill serve --defer` hands the student's unsure requests to the
pipeline's teacher (distill/ship/serve/defer.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.core.errors import ConfigError


@dataclass
class DeferConfig:
    """Which classification requests the student defers to its teacher: those whose student
    confidence (top class probability) is below a threshold that eval chooses on the validation
    split for one of these targets and stores with the student (``defer.json``)."""

    rate: float | None = 0.2
    """Target share of requests deferred (the validation rows' confidence quantile)."""
    accuracy: float | None = None
    """Instead: the least deferral whose cascade accuracy on the validation rows reaches this
    (set ``rate: null``); when none does, every request is deferred."""
    timeout_s: float = 30.0
    """A teacher slower than this answers nothing: the student's answer is served, marked
    ``teacher_unavailable``."""

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.accuracy is None):
            raise ConfigError("serve.defer: set exactly one of rate and accuracy (the other null)")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ConfigError("serve.defer.rate: must be within [0, 1]")
        if self.accuracy is not None and not 0.0 < self.accuracy <= 1.0:
            raise ConfigError("serve.defer.accuracy: must be within (0, 1]")
        if self.timeout_s <= 0:
            raise ConfigError("serve.defer.timeout_s: must be > 0")

    @property
    def target(self) -> str:
        return f"rate {self.rate}" if self.rate is not None else f"accuracy {self.accuracy}"


@dataclass
class ServeConfig:
    defer: DeferConfig = field(default_factory=DeferConfig)
