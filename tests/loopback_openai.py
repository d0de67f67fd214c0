"""A small OpenAI-compatible server on 127.0.0.1 for tests and the API benchmark.

It speaks the parts of the protocol distill uses (chat completions with logprobs and n,
completions with echo, files, batches) over real HTTP, answers deterministically, and
plays scripted faults: ``faults["item7"] = ["429", "500"]`` makes the next two requests
whose prompt contains ``item7`` fail that way before it answers normally; a fault
prefixed ``always:`` never stops.

Its "model" reads the text after ``Text:``: a review with more GOOD words than BAD ones
is ``great`` (top tokens " great" 0.6, "Great" 0.1, " other" 0.2, " the" 0.1), else
``other`` (mirrored), so the right soft label of every item is known:
great 0.7/0.9, other 0.2/0.9, label mass 0.9.

A summary is the document's first six words. Asked for ``logprobs``, it lists the summary's
tokens under ``tokenizer`` (a byte-level BPE transformers tokenizer; without one, each word is a
token), each followed by the first ``top_logprobs - 1`` other tokens of ``ALTERNATIVES``, at
probabilities 1/2, 1/4, 1/8 …; faults ``nologprobs`` (none), ``nobytes`` (``bytes`` null) and
``badtoken`` (the second token is ``BAD_TOKEN``, in no vocabulary).

GET /v1/models lists the one model (off with ``models = False``, as on endpoints without that
route); fault ``drop`` closes the connection without a reply, as a server that dies does.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import math
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD = {"wonderful", "delicious", "great", "perfect", "tasty", "love", "excellent", "fresh"}
BAD = {"stale", "awful", "broken", "bland", "bad", "refund", "disappointing", "soggy"}
TOP = {"great": [(" great", 0.6), ("Great", 0.1), (" other", 0.2), (" the", 0.1)]}
TOP["other"] = [(" other", 0.6), ("Other", 0.1), (" great", 0.2), (" the", 0.1)]
EXPECTED = {"great": [0.7 / 0.9, 0.2 / 0.9], "other": [0.2 / 0.9, 0.7 / 0.9]}
"""The distribution over (great, other) that each answer should become."""
ALTERNATIVES = " the and of to a in is it that was for on with as at by from this be or an are not but"
"""Text whose tokens are a summary token's listed alternatives, in order (more than 20 distinct)."""
BAD_TOKEN = "<no such token>"


def judge(content: str) -> str:
    text = content.split("Text:", 1)[-1].split("\n\nAnswer", 1)[0]
    words = [w.strip(".,!").lower() for w in text.split()]
    return "great" if sum(w in GOOD for w in words) > sum(w in BAD for w in words) else "other"


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs when 32 clients connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the test, not an error


class LoopbackOpenAI:
    def __init__(
        self,
        latency_s: float = 0.0,
        api_key: str | None = None,
        logprobs: bool = True,
        hang_s: float = 5.0,
        batch_polls: int = 2,
        tokenizer: Any = None,
    ):
        self.latency_s = latency_s
        self.api_key = api_key
        self.logprobs = logprobs
        self.hang_s = hang_s
        self.batch_polls = batch_polls
        self.tokenizer = tokenizer
        """Spells summary tokens when logprobs are asked (settable, like ``logprobs``)."""
        self._tokenizer_lock = threading.Lock()  # separate: batches answer under self.lock
        self.hold_batches = False
        """While True, batches stay in_progress (to kill a client mid-job)."""
        self.models = True
        """Serve GET /v1/models (what the API teacher probes first)."""
        self.faults: dict[str, list[str]] = {}
        self.log: list[dict[str, Any]] = []
        """One entry per request: path, the prompt text, the fault played (or None), arrival time."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait out delayed ACKs (~40 ms)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_POST(self) -> None:
                server.handle(self, "POST")

        self.httpd = QuietServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def requests_for(self, marker: str) -> int:
        return sum(marker in e["prompt"] for e in self.log)

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        if self.api_key and req.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.reply(req, 401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
        path = req.path.split("?")[0]
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.route(req, method, path, raw)
        finally:
            with self.lock:
                self.in_flight -= 1

    def route(self, req: BaseHTTPRequestHandler, method: str, path: str, raw: bytes) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        try:
            if method == "POST" and path == "/v1/chat/completions":
                return self.chat_http(req, json.loads(raw))
            if method == "GET" and path == "/v1/models" and self.models:
                return self.reply(
                    req, 200, {"object": "list", "data": [{"id": "loopback", "object": "model"}]}
                )
            if method == "POST" and path == "/v1/completions":
                return self.reply(req, 200, self.completion(json.loads(raw)))
            if method == "POST" and path == "/v1/files":
                return self.reply(req, 200, self.upload(req.headers["Content-Type"], raw))
            if method == "POST" and path == "/v1/batches":
                return self.reply(req, 200, self.create_batch(json.loads(raw)))
            if method == "GET" and path.startswith("/v1/batches/"):
                return self.reply(req, 200, self.poll_batch(path.rsplit("/", 1)[1]))
            if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
                return self.reply(req, 200, self.files[path.split("/")[3]], "application/octet-stream")
        except BrokenPipeError:
            return None
        self.reply(req, 404, {"error": {"message": f"no route {method} {path}"}})

    def reply(
        self,
        req: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        ctype: str = "application/json",
        headers=None,
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", ctype)
            req.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                req.send_header(k, v)
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout under test)

    def next_fault(self, prompt: str) -> str | None:
        with self.lock:
            return self.next_fault_unlocked(prompt)

    # -- chat completions ----------------------------------------------------------------
    def chat_http(self, req: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        prompt = body["messages"][-1]["content"]
        fault = self.next_fault(prompt)
        with self.lock:
            self.log.append({"path": "chat", "prompt": prompt, "fault": fault, "t": time.monotonic()})
        if fault == "429":
            error = {"error": {"message": "slow down", "type": "rate_limit"}}
            return self.reply(req, 429, error, headers={"Retry-After": "1"})
        if fault == "500":
            return self.reply(req, 500, {"error": {"message": "boom", "type": "server_error"}})
        if fault == "drop":
            req.close_connection = True
            return req.connection.shutdown(socket.SHUT_RDWR)
        if fault == "hang":
            time.sleep(self.hang_s)
        if fault == "truncated":
            full = json.dumps(self.chat(body, None)).encode()
            return self.reply(req, 200, full[: len(full) // 2])
        if fault == "html":
            return self.reply(req, 200, b"<html>502 bad gateway</html>", "text/html")
        self.reply(req, 200, self.chat(body, fault))

    def chat(self, body: dict[str, Any], fault: str | None) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"]
        max_tokens = body.get("max_tokens") or 16
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 0}
        if prompt.startswith("Summarize") or prompt.startswith("Summarise"):
            words = prompt.split("\n\n", 1)[-1].split()[:6]
            cut = max_tokens < len(words)
            usage["completion_tokens"] = min(len(words), max_tokens)
            choice = self._choice(0, " ".join(words[:max_tokens]), "length" if cut else "stop")
            if body.get("logprobs") and self.logprobs and fault != "nologprobs":
                k = body.get("top_logprobs") or 1
                content = self.summary_logprobs(choice["message"]["content"], k, fault)
                choice["logprobs"] = {"content": content, "refusal": None}
            return self._completion_object(body, [choice], usage)
        label = judge(prompt)
        top = TOP[label]
        if fault == "outside":
            top = [(" banana", 0.7), (" apple", 0.3)]
        if fault in ("sliver", "offlabel"):  # an off-label word, with 3% left on the labels
            top = [(" banana", 0.9), (" apple", 0.07), (" " + label, 0.03)]
        want_logprobs = body.get("logprobs") and self.logprobs and fault != "nologprobs"
        if want_logprobs:
            k = body.get("top_logprobs") or 1
            entries = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in top[:k]]
            choice = self._choice(0, top[0][0].strip(), "length")
            choice["logprobs"] = {"content": [{**entries[0], "top_logprobs": entries}], "refusal": None}
            choices = [choice]
        else:  # sampling: the right label 7 times in 10 (as "Great." / "other" spellings)
            n = body.get("n") or 1
            other = "other" if label == "great" else "great"
            texts = [(label.capitalize() + ".") if i % 10 < 7 else other for i in range(n)]
            if fault in ("outside", "offlabel"):  # offlabel: sampling gives no label either
                texts = ["banana"] * n
            choices = [self._choice(i, t, "stop") for i, t in enumerate(texts)]
        usage["completion_tokens"] = len(choices)
        return self._completion_object(body, choices, usage)

    def token_pieces(self, text: str) -> list[bytes]:
        """``text`` as its tokens' bytes."""
        if self.tokenizer is None:
            return [w.encode() for w in text.replace(" ", "\0 ").split("\0")]
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        with self._tokenizer_lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = self.tokenizer.convert_ids_to_tokens(ids)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        return [bytes(byte_of[c] for c in token) for token in tokens]

    def summary_logprobs(self, text: str, k: int, fault: str | None) -> list[dict[str, Any]]:
        pool = list(dict.fromkeys(self.token_pieces(ALTERNATIVES)))
        content = []
        for piece in self.token_pieces(text):
            listed = [piece] + [p for p in pool if p != piece][: k - 1]
            entries = [_token_entry(p, math.log(0.5 ** (j + 1)), fault) for j, p in enumerate(listed)]
            content.append({**entries[0], "top_logprobs": entries})
        if fault == "badtoken":
            content[1] = {
                **_token_entry(BAD_TOKEN.encode(), -0.1, None),
                "top_logprobs": content[1]["top_logprobs"],
            }
        return content

    @staticmethod
    def _choice(index: int, text: str, finish: str) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }

    @staticmethod
    def _completion_object(body: dict[str, Any], choices: list, usage: dict[str, int]) -> dict[str, Any]:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "loopback"),
            "choices": choices,
            "usage": usage,
        }

    # -- completions with echo (per-label scoring) ---------------------------------------
    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        with self.lock:
            self.log.append({"path": "completions", "prompt": prompt, "fault": None})
        head, word = prompt.rsplit(" ", 1)
        label = judge(head)
        p = 0.7 if word == label else 0.2
        logprobs = {
            "tokens": [head, " " + word],
            "token_logprobs": [None, math.log(p)],
            "text_offset": [0, len(head)],
            "top_logprobs": None,
        }
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "loopback"),
            "choices": [{"index": 0, "text": prompt, "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1, "total_tokens": 0},
        }

    # -- files and batches ---------------------------------------------------------------
    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
        data = parts["file"].get_payload(decode=True)
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.files[file_id] = data
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": parts["file"].get_filename(),
            "purpose": "batch",
            "status": "processed",
        }

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"batch_{uuid.uuid4().hex[:12]}"
        total = len(self.files[body["input_file_id"]].splitlines())
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "in_progress",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "polls": 0,
        }
        with self.lock:
            self.batches[batch_id] = batch
        return {k: v for k, v in batch.items() if k != "polls"}

    def poll_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[batch_id]
            if not self.hold_batches:
                batch["polls"] += 1
            if batch["status"] == "in_progress" and batch["polls"] >= self.batch_polls:
                self._run_batch(batch)
            return {k: v for k, v in batch.items() if k != "polls"}

    def _run_batch(self, batch: dict[str, Any]) -> None:
        out = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            prompt = request["body"]["messages"][-1]["content"]
            fault = self.next_fault_unlocked(prompt)
            self.log.append({"path": "batch", "prompt": prompt, "fault": fault})
            if fault == "500":
                response = {"status_code": 500, "request_id": "r", "body": {"error": {"message": "boom"}}}
            else:
                response = {"status_code": 200, "request_id": "r", "body": self.chat(request["body"], fault)}
            out.append(
                {"id": f"br-{uuid.uuid4().hex[:8]}", "custom_id": request["custom_id"], "response": response}
            )
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = "".join(json.dumps(r) + "\n" for r in out).encode()
        batch.update(status="completed", output_file_id=file_id)
        batch["request_counts"]["completed"] = len(out)

    def next_fault_unlocked(self, prompt: str) -> str | None:
        for marker, actions in self.faults.items():
            if marker in prompt and actions:
                return actions[0].split(":", 1)[1] if actions[0].startswith("always:") else actions.pop(0)
        return None


def _token_entry(piece: bytes, logprob: float, fault: str | None) -> dict[str, Any]:
    """As OpenAI writes a token: its text, or for part of a UTF-8 character 'bytes:\\xe2\\x98'."""
    try:
        token = piece.decode()
    except UnicodeDecodeError:
        token = "bytes:" + "".join(f"\\x{b:02x}" for b in piece)
    return {"token": token, "logprob": logprob, "bytes": None if fault == "nobytes" else list(piece)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.0)
    args = parser.parse_args()
    server = LoopbackOpenAI(latency_s=args.latency_s)
    print(server.start(args.port), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
