"""`distill serve`: a trained student behind HTTP.

``POST /v1/classify`` labels texts with a classification (or sentence-pair) head;
``POST /v1/chat/completions`` and ``POST /v1/completions`` speak OpenAI's protocol for the
summarization tasks (the document is the last user message, or the prompt); ``GET /health``
and ``GET /metrics`` describe the server. Answers come from the task methods eval scores
(``student_probs``, ``student_summaries``), so a served answer is eval's answer.

Concurrent requests are batched, and a batch runs sorted by length in sub-batches within a
token budget: see ``distill.serve_batching``.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Hashable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from distill.core.errors import DistillError
from distill.ship.serve.batching import Batcher, Metrics, run_by_length

MAX_TEXTS = 256
"""Texts (or prompts) one request may carry."""
MAX_TOKENS = 512
"""Upper bound on a summary's max_tokens (further bounded by the decoder's positions)."""
MAX_BATCH_TOKENS = 512
"""Default padded-token budget of one model call (rows × longest row) within a batch. On CPU a
forward costs about its padded tokens, so batching pays only where it pads little: for the MiniLM
student on fine_foods (98 tokens on average, up to 256) batches of 8 and 16 ran at 1.01 and 1.11×
batch 1's items per CPU-second with 512, 0.98 and 0.99× with 1024, and 0.55× unsplit (2048 never
splits 8 rows of at most 256 tokens); its summaries cost 4% more than one unsplit call."""
ENDPOINTS = ("/v1/classify", "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
WRITERS = "/v1/chat/completions or /v1/completions"


class ServeError(Exception):
    """A request the server refuses (4xx) or failed on (5xx); ``param`` names the culprit."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# --- request bodies: strict, so "texts": "a" or "max_tokens": "5" is a 422 naming the field ---
class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    task: str
    texts: list[str]
    text_pairs: list[str] | None = None
    """sentence_pair tasks: the second text of each pair."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI's body; options the student has no use for (temperature …) are accepted and
    ignored: it decodes greedily."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False


# --- pure helpers ---------------------------------------------------------------------------
def served_tasks(spec: Any) -> dict[str, Any]:
    """The student's tasks as task objects, from its spec alone (see ``task_from_student``)."""
    from distill.tasks import task_from_student

    return {name: task_from_student(name, entry) for name, entry in spec.tasks.items()}


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """A chat message's text: the string, or its ``{"type": "text"}`` parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def check_texts(texts: list[str], param: str, max_chars: int) -> None:
    """A 400 naming the list when it is empty or too long, or its first empty or too long text."""
    if not texts:
        raise ServeError(400, f"{param}: empty list; send at least one text", param)
    if len(texts) > MAX_TEXTS:
        raise ServeError(400, f"{param}: {len(texts)} texts, more than the {MAX_TEXTS} allowed", param)
    for i, text in enumerate(texts):
        if not text.strip():
            raise ServeError(400, f"{param}[{i}]: empty text", f"{param}[{i}]")
        if len(text) > max_chars:
            raise ServeError(
                400, f"{param}[{i}]: {len(text)} characters, over max_chars={max_chars}", f"{param}[{i}]"
            )


def finish_reason(result: dict[str, Any]) -> str:
    return "length" if result["cut"] else "stop"


def usage(results: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(r["prompt_tokens"] for r in results)
    completion = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- the student behind the endpoints -------------------------------------------------------
class Service:
    """The loaded student, its tasks and limits, and ``run``: what the model thread executes."""

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
        positions = (self.spec.decoder_config or {}).get("max_position_embeddings") or MAX_TOKENS + 1
        self.max_tokens = min(MAX_TOKENS, positions - 1)  # a bert2bert decoder's start token takes one
        self.default_max_tokens = min(self.spec.max_summary_length, self.max_tokens)
        self.metrics = Metrics()
        self.batcher = Batcher(
            self.run, max_batch, max_wait_ms / 1000, lambda key, n, s: self.metrics.batch(key[0], n, s)
        )

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

    def max_new(self, *asked: int | None) -> int:
        """The first max_tokens given (OpenAI has two names for it), or the trained length."""
        value = next((v for v in asked if v is not None), self.default_max_tokens)
        if not 1 <= value <= self.max_tokens:
            raise ServeError(400, f"max_tokens: {value}, outside 1..{self.max_tokens}", "max_tokens")
        return value

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

        def generate(part: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
            self.metrics.model_call(task.name, lengths)
            texts, cut = task.student_summaries(self.student, self.tokenizer, part, len(part), max_new)
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
            "default_max_tokens": self.default_max_tokens,
            "max_input_tokens": self.spec.max_length,
            "max_document_tokens": self.spec.max_document_length,
        }
        summarizer = self.spec.summarizer if self.task_names(writes=True) else None
        return {"status": "ok", "student": str(self.student_dir), "device": str(self.device), "tasks": tasks,
                "summarizer": summarizer, "limits": limits}  # fmt: skip

    async def answers(self, key: tuple, rows: list[dict[str, Any]]) -> list[Any]:
        try:
            return await self.batcher.submit(key, rows)
        except Exception as e:
            raise ServeError(500, f"the student failed on task {key[0]!r}: {type(e).__name__}: {e}") from None


# --- HTTP -----------------------------------------------------------------------------------
def _error(status: int, message: str, param: str | None) -> JSONResponse:
    """OpenAI's error shape, which its client reads the message from."""
    kind = (
        "server_error" if status >= 500 else "not_found_error" if status == 404 else "invalid_request_error"
    )
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of problems → one line naming each field."""
    places = [".".join(str(p) for p in err["loc"] if p != "body") or "body" for err in exc.errors()]
    message = "; ".join(f"{where}: {err['msg']}" for where, err in zip(places, exc.errors()))
    return _error(422, message, places[0] if places else None)


def _check_openai_options(n: int, stream: bool) -> None:
    if stream:
        raise ServeError(400, "stream: streaming is not supported; send stream=false", "stream")
    if n != 1:
        raise ServeError(400, f"n: {n}; the student decodes greedily, so only n=1 is served", "n")


def _install_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error as JSON naming its culprit; every request counted and timed."""

    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # a bug outside the model call: still JSON, still counted
            response = _error(500, f"{type(e).__name__}: {e}", None)
        path = request.url.path
        metrics.request(
            path if path in ENDPOINTS else "other", response.status_code, time.perf_counter() - start
        )
        return response


def create_app(
    student_dir: Path,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_chars: int = 20000,
    device: str = "auto",
    max_batch_tokens: int = MAX_BATCH_TOKENS,
) -> FastAPI:
    """The server of the student folder ``student_dir`` (``resolve_student_dir`` finds it in a
    run folder), on ``device`` (auto: cuda when visible, as eval picks). A batch of up to
    ``max_batch`` items runs sorted by length in model calls of at most ``max_batch_tokens``
    padded tokens (a row longer than that runs alone). Loads the student now, so a bad folder
    fails here, before anything listens."""
    service = Service(student_dir, max_batch, max_wait_ms, max_chars, device, max_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.batcher.close()

    app = FastAPI(title="distill student", lifespan=lifespan)
    app.state.service = service
    _install_handlers(app, service.metrics)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        task = service.task(body.task, "task", writes=False)
        check_texts(body.texts, "texts", max_chars)
        rows: list[dict[str, Any]] = [{"text": t} for t in body.texts]
        if task.pairs != (body.text_pairs is not None):
            need = "needs text_pairs" if task.pairs else "takes no text_pairs"
            raise ServeError(400, f"text_pairs: {task.name!r} is a {task.kind} task and {need}", "text_pairs")
        if body.text_pairs is not None:
            if len(body.text_pairs) != len(body.texts):
                got = f"{len(body.text_pairs)} for {len(body.texts)} texts"
                raise ServeError(400, f"text_pairs: {got}; send one per text", "text_pairs")
            check_texts(body.text_pairs, "text_pairs", max_chars)
            rows = [{**r, "text_pair": p} for r, p in zip(rows, body.text_pairs)]
        service.metrics.items("/v1/classify", len(rows))
        probs = await service.answers((task.name,), rows)
        labels = task.labels
        return {
            "task": task.name,
            "labels": labels,
            "distributions": [dict(zip(labels, p)) for p in probs],
            "predictions": [labels[max(range(len(p)), key=p.__getitem__)] for p in probs],
        }

    async def summaries(endpoint: str, model: str | None, documents: list[str], param: str, max_new: int):
        task = service.summary_task(model)
        check_texts(documents, param, max_chars)
        service.metrics.items(endpoint, len(documents))
        return task, await service.answers((task.name, max_new), [{"document": d} for d in documents])

    def completion(kind: str, task: Any, choices: list[dict[str, Any]], results: list) -> dict[str, Any]:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": task.name, "choices": choices, "usage": usage(results)}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> dict[str, Any]:
        _check_openai_options(body.n, body.stream)
        max_new = service.max_new(body.max_completion_tokens, body.max_tokens)
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        if not users:
            raise ServeError(
                400, "messages: no user message (the last one's content is the document)", "messages"
            )
        document, param = message_text(body.messages[users[-1]].content), f"messages[{users[-1]}].content"
        task, (r,) = await summaries("/v1/chat/completions", body.model, [document], param, max_new)
        message = {"role": "assistant", "content": r["text"]}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason(r), "logprobs": None}
        return completion("chat.completion", task, [choice], [r])

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        _check_openai_options(body.n, body.stream)
        max_new = service.max_new(body.max_tokens)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        task, results = await summaries("/v1/completions", body.model, prompts, "prompt", max_new)
        choices = [
            {"index": i, "text": r["text"], "finish_reason": finish_reason(r), "logprobs": None}
            for i, r in enumerate(results)
        ]
        return completion("text_completion", task, choices, results)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names, created = service.task_names(writes=True), int(service.metrics.started)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "distill"} for n in names],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return service.metrics.snapshot()

    return app


def serve(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_chars: int = 20000,
    device: str = "auto",
    max_batch_tokens: int = MAX_BATCH_TOKENS,
) -> None:
    """Serve the student of ``path`` (a student folder or a run folder) until interrupted;
    ``port`` 0 picks a free one (uvicorn's log line says which)."""
    import uvicorn

    from distill.core.layout import resolve_student_dir

    folder = resolve_student_dir(path)
    app = create_app(folder, max_batch, max_wait_ms, max_chars, device, max_batch_tokens)
    service = app.state.service
    tasks = ", ".join(f"{name} ({task.kind})" for name, task in service.tasks.items())
    print(
        f"serve: {folder} on {service.device}: {tasks}; max_batch {max_batch}, "
        f"max_batch_tokens {max_batch_tokens}, max_wait {max_wait_ms} ms",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
