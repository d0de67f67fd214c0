"""What `distill serve` speaks: the request bodies it accepts, the checks every request passes,
and the error shape it answers with (OpenAI's, which its client reads the message from).

Nothing here touches the model, so the whole protocol is testable without one.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

MAX_TEXTS = 256
"""Texts (or prompts) one request may carry."""
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
    ignored: it decodes as eval scored it (the student's stored decoding)."""

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


# --- checks and answers ---------------------------------------------------------------------
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


def check_openai_options(n: int, stream: bool) -> None:
    """The OpenAI options the student cannot honour: a 400 rather than a silent answer."""
    if stream:
        raise ServeError(400, "stream: streaming is not supported; send stream=false", "stream")
    if n != 1:
        raise ServeError(400, f"n: {n}; the student's decoding is deterministic, so only n=1 is served", "n")


def finish_reason(result: dict[str, Any]) -> str:
    return "length" if result["cut"] else "stop"


def usage(results: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(r["prompt_tokens"] for r in results)
    completion = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- errors ---------------------------------------------------------------------------------
def error_response(status: int, message: str, param: str | None) -> JSONResponse:
    """OpenAI's error shape, which its client reads the message from."""
    kind = (
        "server_error" if status >= 500 else "not_found_error" if status == 404 else "invalid_request_error"
    )
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of problems → one line naming each field."""
    places = [".".join(str(p) for p in err["loc"] if p != "body") or "body" for err in exc.errors()]
    message = "; ".join(f"{where}: {err['msg']}" for where, err in zip(places, exc.errors()))
    return error_response(422, message, places[0] if places else None)
