"""The student behind `distill serve`'s endpoints: loaded once, its tasks and limits, and the
batched model calls the model thread runs.

Answers come from the task methods eval scores (``student_probs``, ``student_summaries``), and a
summary is decoded with what eval scored (the student's stored ``decoding``: beams, n-gram
blocking, max_new_tokens), so a served answer is eval's answer.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

from distill.core.config import DecodingConfig
from distill.core.errors import DistillError
from distill.ship.serve.batching import Batcher, Metrics, run_by_length
from distill.ship.serve.protocol import MAX_TEXTS, WRITERS, ServeError

MAX_TOKENS = 512
"""Upper bound on a summary's max_tokens (raised to the stored decoding's max_new_tokens when that
is longer; further bounded by the decoder's positions)."""
MAX_BATCH_TOKENS = 512
"""Default padded-token budget of one model call (rows × longest row) within a batch. On CPU a
forward costs about its padded tokens, so batching pays only where it pads little: for the MiniLM
student on fine_foods (98 tokens on average, up to 256) batches of 8 and 16 ran at 1.01 and 1.11×
batch 1's items per CPU-second with 512, 0.98 and 0.99× with 1024, and 0.55× unsplit (2048 never
splits 8 rows of at most 256 tokens); its summaries cost 4% more than one unsplit call."""


def served_tasks(spec: Any) -> dict[str, Any]:
    """The student's tasks as task objects, from its spec alone (see ``task_from_student``)."""
    from distill.tasks import task_from_student

    return {name: task_from_student(name, entry) for name, entry in spec.tasks.items()}


class Service:
    """The loaded student, its tasks, limits and decodings, and ``run``: what the model thread
    executes."""

    def __init__(
        self,
        student_dir: Path,
        max_batch: int,
        max_wait_ms: float,
        max_chars: int,
        device: str,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ):
        from distill.core.devices import eval_device
        from distill.student.model import load_student

        if min(max_batch, max_chars, max_batch_tokens) < 1 or max_wait_ms < 0:
            raise DistillError(
                "serve: max_batch, max_batch_tokens and max_chars must be >= 1, max_wait_ms >= 0"
            )
        self.student_dir, self.max_chars = Path(student_dir), max_chars
        self.max_batch_tokens = max_batch_tokens
        self.student, self.tokenizer = load_student(self.student_dir)
        self.device = eval_device(device)
        self.student.to(self.device)
        self.spec = self.student.spec
        self.tasks = served_tasks(self.spec)
        self.decodings: dict[str, tuple[int, DecodingConfig]] = {
            name: self._stored_decoding(name) for name in self.task_names(writes=True)
        }
        longest = max((max_new for max_new, _ in self.decodings.values()), default=0)
        positions = (self.spec.decoder_config or {}).get("max_position_embeddings") or MAX_TOKENS + 1
        # A bert2bert decoder's start token takes one position.
        self.max_tokens = min(max(MAX_TOKENS, longest), positions - 1)
        self.metrics = Metrics()
        self.batcher = Batcher(
            self.run, max_batch, max_wait_ms / 1000, lambda key, n, s: self.metrics.batch(key[0], n, s)
        )

    def _stored_decoding(self, name: str) -> tuple[int, DecodingConfig]:
        """Task ``name``'s max_new_tokens and decoding as student.json stores them (what eval
        scored last); an older student without them: greedy up to max_summary_length."""
        from distill.tasks.summarization import entry_decoding

        entry = (self.spec.decoding or {}).get(name)
        if entry is None:
            return self.spec.max_summary_length, DecodingConfig()
        try:
            return entry_decoding(entry)
        except (KeyError, TypeError, ValueError) as e:
            raise DistillError(
                f"{self.student_dir}: student.json decoding.{name}: {entry!r} is not a decoding ({e})"
            ) from None

    def task_names(self, writes: bool) -> list[str]:
        """The tasks that write text (``writes``), or those that label it."""
        return [name for name, task in self.tasks.items() if task.generates_text == writes]

    def task(self, name: str, param: str, writes: bool) -> Any:
        """Task ``name``, which must write text (``writes``) or label it: else a 404 or 400 that
        lists the tasks this endpoint serves."""
        serves = (
            f"{WRITERS if writes else '/v1/classify'} serves: {', '.join(self.task_names(writes)) or 'none'}"
        )
        if name not in self.tasks:
            raise ServeError(404, f"{param}: no task {name!r} in this student ({serves})", param)
        task = self.tasks[name]
        if task.generates_text != writes:
            other = "/v1/classify" if writes else WRITERS
            raise ServeError(400, f"{param}: {name!r} is a {task.kind} task, for {other} ({serves})", param)
        return task

    def summary_task(self, model: str | None) -> Any:
        """OpenAI's ``model``: a summarization task's name, or anything when there is just one."""
        writers = self.task_names(writes=True)
        if model is None and len(writers) > 1:
            raise ServeError(
                400, f"model: missing; name one of the summarization tasks {', '.join(writers)}", "model"
            )
        if model in self.tasks or len(writers) != 1:
            return self.task(model or "", "model", writes=True)
        return self.tasks[writers[0]]

    def default_max_tokens(self, name: str) -> int:
        """Summary task ``name``'s stored max_new_tokens (what eval scored), within the limit."""
        return min(self.decodings[name][0], self.max_tokens)

    def max_new(self, name: str, *asked: int | None) -> int:
        """The first max_tokens given (OpenAI has two names for it), which may only shorten task
        ``name``'s stored max_new_tokens: a longer one gets eval's answer, not a longer one."""
        default = self.default_max_tokens(name)
        value = next((v for v in asked if v is not None), default)
        if not 1 <= value <= self.max_tokens:
            raise ServeError(400, f"max_tokens: {value}, outside 1..{self.max_tokens}", "max_tokens")
        return min(value, default)

    def run(self, key: Hashable, rows: list[dict[str, Any]]) -> list[Any]:
        """``rows`` of one batch, ``key`` = (task,) or (task, max_tokens), sorted by length and run
        in sub-batches within ``max_batch_tokens``; in the model thread."""
        task = self.tasks[key[0]]
        if task.generates_text:
            return self._summaries(task, rows, key[1])
        return self._probs(task, rows)

    def _probs(self, task: Any, rows: list[dict[str, Any]]) -> list[list[float]]:
        # The lengths the model will read; student_probs tokenises again, which costs ~0.3 ms a
        # text (MiniLM's fast tokenizer, fine_foods reviews) against ~100 ms a row of forward.
        ids = task.encode(rows, self.tokenizer, self.spec.max_length)["input_ids"]

        def forward(part: list[dict[str, Any]], lengths: list[int]) -> list[list[float]]:
            self.metrics.model_call(task.name, lengths)
            probs = task.student_probs(self.student, self.tokenizer, part, len(part))  # (part, labels)
            return probs.tolist()

        return run_by_length(rows, [len(x) for x in ids], self.max_batch_tokens, forward)

    def _summaries(self, task: Any, rows: list[dict[str, Any]], max_new: int) -> list[dict[str, Any]]:
        read = task.encode(
            rows, self.tokenizer, self.spec.max_document_length, self.spec.tasks[task.name]["prefix"]
        )
        writer = self.student.codec.tokenizer if self.student.codec is not None else self.tokenizer
        decoding = self.decodings[task.name][1]

        def generate(part: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
            self.metrics.model_call(task.name, lengths)
            texts, cut = task.student_summaries(
                self.student, self.tokenizer, part, len(part), max_new, decoding
            )
            # Usage: the encoder's input tokens; the summary re-tokenised (a summary cut at the
            # limit is exactly max_tokens long).
            written = [
                max_new if c else len(writer(t, add_special_tokens=False)["input_ids"])
                for t, c in zip(texts, cut)
            ]
            return [
                {"text": text, "cut": was_cut, "prompt_tokens": n_read, "completion_tokens": n}
                for text, was_cut, n_read, n in zip(texts, cut, lengths, written)
            ]

        return run_by_length(rows, [len(x) for x in read], self.max_batch_tokens, generate)

    def health(self) -> dict[str, Any]:
        tasks = {
            name: {"kind": task.kind, "labels": self.spec.tasks[name]["labels"],
                   "endpoint": WRITERS if task.generates_text else "/v1/classify"}
            for name, task in self.tasks.items()
        }  # fmt: skip
        limits = {
            "max_batch": self.batcher.max_batch,
            "max_batch_tokens": self.max_batch_tokens,
            "max_wait_ms": self.batcher.max_wait_s * 1000,
            "max_chars": self.max_chars,
            "max_texts": MAX_TEXTS,
            "max_tokens": self.max_tokens,
            "max_input_tokens": self.spec.max_length,
            "max_document_tokens": self.spec.max_document_length,
        }
        summarizer = self.spec.summarizer if self.decodings else None
        return {"status": "ok", "student": str(self.student_dir), "device": str(self.device), "tasks": tasks,
                "summarizer": summarizer, "decoding": self.decoding_record(), "limits": limits}  # fmt: skip

    def decoding_record(self) -> dict[str, dict[str, Any]]:
        """Each summary task's decoding as served, and whether student.json stored it."""
        stored = self.spec.decoding or {}
        return {
            name: {"max_new_tokens": self.default_max_tokens(name), **decoding.generate_kwargs(),
                   "from": "student.json" if name in stored else "greedy, max_summary_length (none stored)"}
            for name, (_, decoding) in self.decodings.items()
        }  # fmt: skip

    async def answers(self, key: tuple, rows: list[dict[str, Any]]) -> list[Any]:
        try:
            return await self.batcher.submit(key, rows)
        except Exception as e:
            raise ServeError(500, f"the student failed on task {key[0]!r}: {type(e).__name__}: {e}") from None
