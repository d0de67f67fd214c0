"""The teacher-layers summarizer's own options: keys of ``train.student`` when
``summarizer: teacher_layers``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distill.core.errors import ConfigError


@dataclass
class TeacherLayersOptions:
    decoder_source: str | None = None
    """The model whose layers seed the decoder (a bundled alias or folder); None: the teacher's
    own model (needs a teacher whose weights are local)."""
    decoder_layers: int = 4
    """Layers kept (the first and last always among them)."""
    layer_choice: Literal["block_influence", "uniform"] = "block_influence"
    """How the middle layers are chosen: the largest block influence (1 − cos(input, output),
    measured on training prompts) or evenly spaced."""
    decoder_vocab: Literal["corpus", "full"] = "corpus"
    """Output vocabulary: the tokens of the training corpus (plus every byte), or the teacher's
    whole vocabulary."""
    bridge: bool = True
    """Add the shared encoder's pooled state (through a zero-initialised linear map) to every
    prompt token's embedding, so the summarization loss trains the shared encoder too; false:
    the decoder does not read the shared encoder."""

    def __post_init__(self) -> None:
        if self.decoder_layers < 2:
            raise ConfigError("train.student.decoder_layers: must be >= 2")


def teacher_layers_options(cfg: Any) -> TeacherLayersOptions:
    """A ``StudentConfig``'s teacher-layers options (their defaults where it was built without)."""
    options = getattr(cfg, "options", None)
    return options if isinstance(options, TeacherLayersOptions) else TeacherLayersOptions()
