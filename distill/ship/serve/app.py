"""`distill serve`: a trained student behind HTTP.

``POST /v1/classify`` labels texts with a classification (or sentence-pair) head;
``POST /v1/chat/completions`` and ``POST /v1/completions`` speak OpenAI's protocol for the
summarization tasks (the document is the last user message, or the prompt); ``GET /health``
and ``GET /metrics`` describe the server. The request bodies and error shape are in
``protocol.py``; the student and its batched model calls in ``service.py`` (a served answer is
eval's answer, decoded as eval scored it); how a batch is split in ``batching.py``.
"""

from __future__ import annotations

import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from distill.core.config import PipelineConfig
from distill.ship.serve.batching import Metrics
from distill.ship.serve.defer import Deferral
from distill.ship.serve.protocol import (
    ENDPOINTS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    ServeError,
    check_openai_options,
    check_texts,
    error_response,
    finish_reason,
    message_text,
    usage,
    validation_error,
)
from distill.ship.serve.service import MAX_BATCH_TOKENS, Service


def _install_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error as JSON naming its culprit; every request counted and timed."""

    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # a bug outside the model call: still JSON, still counted
            response = error_response(500, f"{type(e).__name__}: {e}", None)
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
    defer: PipelineConfig | None = None,
) -> FastAPI:
    """The server of the student folder ``student_dir`` (``resolve_student_dir`` finds it in a
    run folder), on ``device`` (auto: cuda when visible, as eval picks). A batch of up to
    ``max_batch`` items runs sorted by length in model calls of at most ``max_batch_tokens``
    padded tokens (a row longer than that runs alone). Loads the student now, so a bad folder
    fails here, before anything listens. ``defer``: the pipeline whose teacher answers the
    classification requests the student is unsure of (``defer.py``)."""
    service = Service(student_dir, max_batch, max_wait_ms, max_chars, device, max_batch_tokens)
    deferral = Deferral(defer, service.student_dir, service.tasks) if defer is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.batcher.close()
        if deferral is not None:
            deferral.close()

    app = FastAPI(title="distill student", lifespan=lifespan)
    app.state.service = service
    app.state.deferral = deferral
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
        answered = [{"distribution": p, "answered_by": "student"} for p in probs]
        if deferral is not None:
            answered = await deferral.answer(task.name, rows, probs)
        out = {
            "task": task.name,
            "labels": labels,
            "distributions": [dict(zip(labels, a["distribution"])) for a in answered],
            "predictions": [
                labels[max(range(len(labels)), key=a["distribution"].__getitem__)] for a in answered
            ],
            "answered_by": [a["answered_by"] for a in answered],
        }
        if deferral is not None:
            out["teacher_unavailable"] = [a["teacher_unavailable"] for a in answered]
        return out

    async def summaries(endpoint: str, task: Any, documents: list[str], param: str, max_new: int):
        check_texts(documents, param, max_chars)
        service.metrics.items(endpoint, len(documents))
        return await service.answers((task.name, max_new), [{"document": d} for d in documents])

    def completion(kind: str, task: Any, choices: list[dict[str, Any]], results: list) -> dict[str, Any]:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": task.name, "choices": choices, "usage": usage(results)}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> dict[str, Any]:
        check_openai_options(body.n, body.stream)
        task = service.summary_task(body.model)
        max_new = service.max_new(task.name, body.max_completion_tokens, body.max_tokens)
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        if not users:
            raise ServeError(
                400, "messages: no user message (the last one's content is the document)", "messages"
            )
        document, param = message_text(body.messages[users[-1]].content), f"messages[{users[-1]}].content"
        (r,) = await summaries("/v1/chat/completions", task, [document], param, max_new)
        message = {"role": "assistant", "content": r["text"]}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason(r), "logprobs": None}
        return completion("chat.completion", task, [choice], [r])

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        check_openai_options(body.n, body.stream)
        task = service.summary_task(body.model)
        max_new = service.max_new(task.name, body.max_tokens)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        results = await summaries("/v1/completions", task, prompts, "prompt", max_new)
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
        return {**service.health(), "defer": deferral.record() if deferral else None}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return {**service.metrics.snapshot(), "defer": deferral.snapshot() if deferral else None}

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
    defer: PipelineConfig | None = None,
) -> None:
    """Serve the student of ``path`` (a student folder or a run folder) until interrupted;
    ``port`` 0 picks a free one (uvicorn's log line says which)."""
    import uvicorn

    from distill.core.layout import resolve_student_dir

    folder = resolve_student_dir(path)
    app = create_app(folder, max_batch, max_wait_ms, max_chars, device, max_batch_tokens, defer)
    service = app.state.service
    tasks = ", ".join(f"{name} ({task.kind})" for name, task in service.tasks.items())
    print(
        f"serve: {folder} on {service.device}: {tasks}; max_batch {max_batch}, "
        f"max_batch_tokens {max_batch_tokens}, max_wait {max_wait_ms} ms"
        + (
            f"; deferring to {defer.teach.teacher.model} below {app.state.deferral.record()}" if defer else ""
        ),
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
