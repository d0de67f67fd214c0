"""The student: one shared pretrained encoder, a head per classification task, and a
summarization decoder that reads the same encoder; how tasks share the encoder (private
encoders, per-task copies or branches) is its sharing mode (distill/student/sharing/).

A saved student is a self-contained folder (student.json, model.safetensors, tokenizer
files) that ``load_student`` rebuilds with nothing else: no hub, no original encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.assets import resolve_encoder
from distill.core.config import StudentConfig
from distill.core.errors import DistillError
from distill.core.layout import SPEC_FILE, WEIGHTS_FILE
from distill.student.sharing import Features, encoder_inputs, sharing_class
from distill.student.summarizers import WITHOUT_DECODER, summarizer_class
from distill.student.summarizers.base import Summarizer


@dataclass
class StudentSpec:
    """Everything needed to rebuild the architecture; saved beside the weights."""

    tasks: dict[str, dict[str, Any]]
    """Task name → {"kind", "labels" (label names, None for a task that writes text),
    "prefix" (what the student reads before a document, None for label tasks)}."""
    encoder_config: dict[str, Any]
    decoder_config: dict[str, Any] | None
    max_length: int
    max_document_length: int
    max_summary_length: int
    dropout: float
    encoder_source: str
    sharing: str = "hard"
    """A key of distill/student/sharing's SHARINGS (hard, shared_private, adversarial, soft, branch)."""
    sharing_options: dict[str, Any] | None = None
    """The sharing mode's options, as its ``Options`` fields; None: its defaults."""
    summarizer: str = WITHOUT_DECODER.name
    """A key of distill/student/summarizers' SUMMARIZERS (bert2bert, teacher_layers)."""
    decoder_source: str | None = None
    decoder_layers: list[int] | None = None
    """teacher_layers: the model the decoder was cut from, and which of its layers it kept."""
    bridge: bool = False
    training: dict[str, Any] | None = None
    """How train made these weights (hard_labels, soft_weight, kd_temperature,
    teach_outputs_sha256, cut_summaries, steps, sampling, weighting); None for a student never
    trained."""
    decoding: dict[str, dict[str, Any]] | None = None
    """Summarization task name → {"max_new_tokens", **DecodingConfig.generate_kwargs()}: how eval
    last scored its summaries (train writes the pipeline's; an eval scoring other settings
    rewrites it), so serve and export write what was scored. None: an older student, or one
    without a summarization task (then greedy up to max_summary_length)."""

    @property
    def head_labels(self) -> dict[str, list[str]]:
        """Task name → its label names, for the tasks the student answers with a classification
        head (a spec entry lists label names exactly for those; the others write text)."""
        return {name: labels for name, entry in self.tasks.items() if (labels := entry["labels"])}

    @property
    def summarization_tasks(self) -> list[str]:
        return [name for name in self.tasks if name not in self.head_labels]

    @property
    def summarizer_class(self) -> type[Summarizer]:
        return summarizer_class(self.summarizer)

    @property
    def sharing_class(self) -> Any:
        return sharing_class(self.sharing)

    def sharing_module(self, encoder: nn.Module) -> Any:
        """The sharing mode's module over ``encoder`` (its options from the spec)."""
        cls = sharing_class(self.sharing)
        return cls(cls.Options(**(self.sharing_options or {})), encoder, list(self.tasks), self.dropout)


class Student(nn.Module):
    """forward(task, **batch) → {"logits": …} plus the sharing mode's auxiliary losses
    (adversarial sharing: "adversarial" and "orthogonality"; soft: "tie"), already weighted."""

    def __init__(
        self, spec: StudentSpec, backbone: nn.Module, summarizer: nn.Module | None = None, codec: Any = None
    ):
        super().__init__()
        self.spec = spec
        # An EncoderDecoderModel when a bert2bert decoder summarizes, else a bare encoder.
        self.backbone = backbone
        # teacher_layers: the decoder-only summarizer and its text ↔ ids codec.
        self.summarizer = summarizer
        self.codec = codec
        self.warmup_record: dict[str, Any] | None = None
        self.sharing = spec.sharing_module(self.encoder)
        width = self.sharing.head_width(self.encoder.config.hidden_size)
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(width, len(labels)))
                for name, labels in spec.head_labels.items()
            }
        )

    @property
    def encoder(self) -> nn.Module:
        return self.spec.summarizer_class.encoder(self)

    def set_progress(self, progress: float) -> None:
        """Share of training done, in [0, 1] (what a sharing mode's ramp reads)."""
        self.sharing.progress = progress

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task reaches (the shared encoder's, under hard sharing)."""
        return self.sharing.shared_parameters(self.encoder)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last encoder layer every task reaches (GradNorm's W); all shared parameters if it
        has no numbered layers."""
        last = self.sharing.last_shared_layer(self.encoder)
        shared = {id(p) for p in self.shared_parameters()}
        named = [(n, p) for n, p in self.encoder.named_parameters() if id(p) in shared]
        chosen = [p for n, p in named if last >= 0 and f"layer.{last}." in n]
        return chosen or [p for _, p in named]

    def features(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
    ) -> Features:
        """This task's encoder states and (sharing permitting) private states, (batch, seq, hidden)."""
        inputs = encoder_inputs(input_ids, attention_mask, token_type_ids)
        return self.sharing.features(self.encoder, task, inputs)

    def aux_losses(self, task: str, features: Features, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sharing mode's auxiliary losses of one batch (none under hard sharing)."""
        return self.sharing.aux_losses(task, features, mask)

    def _classify(self, task, input_ids, attention_mask, token_type_ids) -> dict[str, torch.Tensor]:
        features = self.features(task, input_ids, attention_mask, token_type_ids)
        pooled = self.sharing.pooled(features, attention_mask)  # (batch, head width)
        return {"logits": self.heads[task](pooled), **self.aux_losses(task, features, attention_mask)}

    def classify(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, seq) token ids → (batch, labels) logits, from mean-pooled encoder states.

        token_type_ids (batch, seq): the segment of each token for sentence pairs."""
        return self._classify(task, input_ids, attention_mask, token_type_ids)["logits"]

    def _summary(self, task, input_ids, attention_mask, target_ids, **prompt) -> dict[str, torch.Tensor]:
        return self.spec.summarizer_class.logits(self, task, input_ids, attention_mask, target_ids, prompt)

    def summary_logits(
        self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced decoder logits (batch, target_len, vocab) for targets (batch, target_len)."""
        return self._summary(task, input_ids, attention_mask, target_ids)["logits"]

    def forward(self, task: str, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if task in self.heads:
            return self._classify(
                task, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
            )
        prompt = {k: batch[k] for k in ("decoder_prompt_ids", "decoder_prompt_mask") if k in batch}
        return self._summary(task, batch["input_ids"], batch["attention_mask"], batch["target_ids"], **prompt)

    @torch.inference_mode()
    def summarize(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        decoding: dict[str, Any] | None = None,
        prompt: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(batch, new) generated ids; ``decoding``: generate options (num_beams,
        no_repeat_ngram_size, length_penalty); ``prompt``: decoder_prompt_ids/mask for a
        teacher-layers summarizer."""
        return self.spec.summarizer_class.generate(
            self, task, input_ids, attention_mask, max_new_tokens, decoding or {"num_beams": 1}, prompt
        )


def build_student(
    cfg: StudentConfig,
    tasks: list[Any],
    corpus: dict[str, list[dict[str, Any]]] | None = None,
    unlabeled: list[str] | None = None,
) -> tuple[Student, Any]:
    """A fresh student warm-started from the pretrained encoder, and a summarization decoder:
    the encoder's own weights (bert2bert) or the teacher's layers (teacher_layers, cut by
    measurements on ``corpus``: task name → teach train rows). With ``cfg.warmup.steps`` the
    summarization path is then warmed up on ``unlabeled`` text (cached; distill/student/warmup.py) and
    the record kept in ``student.warmup_record``."""
    from transformers import AutoTokenizer

    path = resolve_encoder(cfg.encoder)
    writes = [t for t in tasks if t.generates_text]
    summarizing = summarizer_class(cfg.summarizer) if writes else WITHOUT_DECODER
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        backbone = summarizing.pretrained(path, tokenizer, cfg, bool(writes))
    except OSError as e:
        raise DistillError(f"student.encoder {cfg.encoder!r}: cannot load ({e})") from None
    rows = [(t.instruction, r) for t in writes for r in (corpus or {}).get(t.name, [])]
    parts = summarizing.build(cfg, backbone, rows, unlabeled if cfg.warmup.steps and unlabeled else [])
    spec = StudentSpec(
        tasks={t.name: t.student_entry() for t in tasks},
        max_length=cfg.max_length,
        max_document_length=cfg.max_document_length,
        max_summary_length=cfg.max_summary_length,
        dropout=cfg.dropout,
        encoder_source=cfg.encoder,
        sharing=cfg.sharing.method,
        sharing_options=asdict(cfg.sharing.options) if cfg.sharing.options is not None else None,
        summarizer=summarizing.name,
        **parts.spec,
    )
    student = Student(spec, parts.backbone, parts.summarizer, parts.codec)
    if writes and cfg.warmup.steps:
        from distill.student.warmup import warm_up

        student.warmup_record = warm_up(student, tokenizer, cfg, unlabeled or [])
    return student, tokenizer


def _model_from_spec(spec: StudentSpec, tokenizer: Any) -> Student:
    """A student of ``spec`` with random weights (the saved ones load next)."""
    backbone, summarizer = spec.summarizer_class.from_spec(spec, tokenizer)
    return Student(spec, backbone, summarizer)


def save_student(
    state_dict: dict[str, torch.Tensor], spec: StudentSpec, tokenizer: Any, folder: Path, codec: Any = None
) -> None:
    """Write weights (fp32) + spec + tokenizer(s); the folder then loads with nothing else."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    model = _model_from_spec(spec, tokenizer)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(with_aliases(model, state))
    save_model(model, str(folder / WEIGHTS_FILE))  # handles the decoder's tied embeddings
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    spec.summarizer_class.save_extra(folder, codec)


def load_student(folder: str | Path) -> tuple[Student, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / SPEC_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise DistillError(f"{folder}: not a student folder (needs {SPEC_FILE} and {WEIGHTS_FILE})")
    try:
        data = json.loads((folder / SPEC_FILE).read_text())
        if any(not isinstance(entry, dict) for entry in data.get("tasks", {}).values()):
            raise DistillError(
                f"{folder}: written by an older distill (tasks as label lists, before task kinds); "
                "retrain it with `distill train`"
            )
        spec = StudentSpec(**_before_sharing_modes(data))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = _model_from_spec(spec, tokenizer)
        state = {
            OLD_SHARING_KEYS.get(k.split(".")[0], "") + k: v
            for k, v in load_file(str(folder / WEIGHTS_FILE)).items()
        }
        model.load_state_dict(with_aliases(model, state))
        model.codec = spec.summarizer_class.load_codec(folder, model.summarizer)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as e:
        raise DistillError(f"{folder}: corrupt student folder ({e})") from None
    return model.eval(), tokenizer


OLD_SHARING_KEYS = {"private": "sharing.", "discriminator": "sharing."}
"""Weights an older student kept on the student itself, now in its sharing module."""


def _before_sharing_modes(data: dict[str, Any]) -> dict[str, Any]:
    """A spec written before sharing modes had options (private_feedforward, adversarial_weight,
    orthogonality_weight at the top): the same student, in today's fields. Its private encoders
    were random layers, its penalty a sum and its reversal at full strength from step 0."""
    old = {
        k: data.pop(k)
        for k in ("private_feedforward", "adversarial_weight", "orthogonality_weight")
        if k in data
    }
    if old and data.get("sharing") in ("shared_private", "adversarial"):
        options = {"private_init": "random", "private_feedforward": old["private_feedforward"]}
        if data["sharing"] == "adversarial":
            options |= {
                "adversarial_weight": old["adversarial_weight"],
                "orthogonality_weight": old["orthogonality_weight"],
                "orthogonality": "sum",
                "reversal_ramp": 0.0,
            }
        data["sharing_options"] = options
    return data


def with_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus every name of ``model`` that aliases a tensor ``state`` holds under another
    name (tied embeddings; the layers a branch shares): a saved or consolidated state keeps one
    name per tensor, ``load_state_dict`` asks for all."""
    names: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        names.setdefault(id(tensor), []).append(name)
    out = dict(state)
    for group in names.values():
        known = next((n for n in group if n in state), None)
        if known is not None:
            out.update({n: state[known] for n in group if n not in out})
    return out
