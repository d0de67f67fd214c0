"""`distill serve` against a real uvicorn server on 127.0.0.1: answers equal eval's, the OpenAI
client talks to it, concurrent requests are batched and split back right, and bad input is a
4xx naming the culprit while the server keeps serving."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from distill.ship.serve.app import create_app
from distill.ship.serve.batching import padded_tokens, run_by_length, token_budget_batches
from distill.ship.serve.protocol import message_text
from distill.ship.serve.service import served_tasks
from distill.tasks import task_config
from tests.conftest import REPO

MAX_CHARS = 300


class LiveServer:
    """create_app(...) under uvicorn in a thread, on a socket bound to a free loopback port."""

    def __init__(self, student_dir: Path, **options):
        import uvicorn

        self.app = create_app(student_dir, device="cpu", **options)
        self.service = self.app.state.service
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, payload = response.status, json.loads(response.read())
        conn.close()
        return status, payload

    def post(self, path: str, body) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)


# --- the eval path, from the run's own pipeline file ----------------------------------------
@pytest.fixture(scope="module")
def student_dir(trained_run: Path) -> Path:
    from distill.core.layout import resolve_student_dir

    return resolve_student_dir(trained_run)


@pytest.fixture(scope="module")
def eval_side(trained_run: Path, student_dir: Path):
    """The pipeline's task objects, the loaded student, and each task's test rows as eval reads
    them (``Task.example`` over the test split)."""
    from distill.core.data import read_rows
    from distill.pipeline import load as load_pipeline
    from distill.student.model import load_student
    from distill.tasks import tasks_for

    pipeline = load_pipeline(trained_run.parent / "pipeline.yaml")
    tasks = {t.name: t for t in tasks_for(pipeline)}
    rows = {
        name: [
            task.example(r, i, "test") for i, r in enumerate(read_rows(task.cfg.data["test"], "test", name))
        ]
        for name, task in tasks.items()
    }
    student, tokenizer = load_student(student_dir)
    return tasks, student, tokenizer, rows


def eval_probs(eval_side, texts: list[str]) -> np.ndarray:
    tasks, student, tokenizer, _ = eval_side
    return tasks["reviews"].student_probs(student, tokenizer, [{"text": t} for t in texts], 8)


def eval_summaries(eval_side, documents: list[str], max_new: int) -> tuple[list[str], list[bool]]:
    tasks, student, tokenizer, _ = eval_side
    rows = [{"document": d} for d in documents]
    return tasks["papers"].student_summaries(student, tokenizer, rows, len(rows), max_new)


@pytest.fixture(scope="module")
def live(student_dir: Path):
    with LiveServer(student_dir, max_batch=8, max_wait_ms=5.0, max_chars=MAX_CHARS) as server:
        yield server


# --- pure helpers ---------------------------------------------------------------------------
def test_message_text_reads_strings_and_text_parts():
    assert message_text("doc") == "doc"
    assert message_text(None) == ""
    parts = [
        {"type": "text", "text": "a "},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "b"},
    ]
    assert message_text(parts) == "a b"


def test_padded_tokens_is_rows_times_the_longest():
    assert padded_tokens([3, 5, 1]) == 15
    assert padded_tokens([7]) == 7
    assert padded_tokens([]) == 0


def test_token_budget_batches_sorts_and_fills_up_to_the_budget():
    # Sorted: 2 (row 1), 2 (row 3), 4 (row 4), 5 (row 0), 9 (row 2). With budget 10: [2, 2] pads
    # to 4; adding the 4 would pad to 12, so it starts a group; [4, 5] pads to exactly 10; the 9
    # with them would be 27, and alone it is 9.
    assert token_budget_batches([5, 2, 9, 2, 4], 10) == [[1, 3], [4, 0], [2]]
    # A row longer than the budget runs alone; a budget as big as the batch is one sorted call.
    assert token_budget_batches([30, 3, 3], 10) == [[1, 2], [0]]
    assert token_budget_batches([5, 2, 9, 2, 4], 10**6) == [[1, 3, 4, 0, 2]]
    assert token_budget_batches([], 10) == []


def test_run_by_length_puts_results_back_in_request_order():
    calls = []

    def run(part: list[str], lengths: list[int]) -> list[str]:
        calls.append((part, lengths))
        return [item.upper() for item in part]

    got = run_by_length(["a", "b", "c", "d", "e"], [5, 2, 9, 2, 4], 10, run)
    assert got == ["A", "B", "C", "D", "E"]
    assert calls == [(["b", "d"], [2, 2]), (["e", "a"], [4, 5]), (["c"], [9])]
    with pytest.raises(ValueError):  # a run that loses a row must not shift the others' answers
        run_by_length(["a", "b"], [1, 1], 10, lambda part, lengths: part[:1])


# --- answers equal eval's -------------------------------------------------------------------
def test_health_names_tasks_kinds_and_labels(live, student_dir):
    status, body = live.get("/health")
    assert status == 200 and body["status"] == "ok"
    assert body["student"] == str(student_dir) and body["device"] == "cpu"
    assert body["tasks"]["reviews"]["kind"] == "classification"
    assert body["tasks"]["reviews"]["labels"] == ["great", "other"]
    assert body["tasks"]["papers"] == {
        "kind": "summarization",
        "labels": None,
        "endpoint": body["tasks"]["papers"]["endpoint"],
    }
    assert body["limits"]["max_chars"] == MAX_CHARS and body["limits"]["max_batch"] == 8


def test_classify_equals_the_eval_path(live, eval_side):
    texts = [r["text"] for r in eval_side[3]["reviews"]][:10]
    status, body = live.post("/v1/classify", {"task": "reviews", "texts": texts})
    assert status == 200, body
    assert body["task"] == "reviews" and body["labels"] == ["great", "other"]
    got = np.array([[d[label] for label in body["labels"]] for d in body["distributions"]])
    expected = eval_probs(eval_side, texts)
    assert got.shape == (10, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    assert body["predictions"] == [body["labels"][i] for i in expected.argmax(-1)]


def test_chat_and_completions_equal_the_eval_path(live, eval_side):
    documents = [r["document"] for r in eval_side[3]["papers"]][:2]
    (summary,), (cut,) = eval_summaries(eval_side, documents[:1], 8)
    chat = {"model": "papers", "max_tokens": 8, "messages": [
        {"role": "system", "content": "ignored"}, {"role": "user", "content": documents[0]}]}  # fmt: skip
    status, body = live.post("/v1/chat/completions", chat)
    assert status == 200, body
    assert (
        body["object"] == "chat.completion"
        and body["model"] == "papers"
        and body["id"].startswith("chatcmpl-")
    )
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": summary}
    assert choice["finish_reason"] == ("length" if cut else "stop")
    usage = body["usage"]
    assert (
        usage["prompt_tokens"] > 0
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    if cut:
        assert usage["completion_tokens"] == 8

    # Two prompts are one batch of two here, as eval batches them.
    summaries, cuts = eval_summaries(eval_side, documents, 8)
    status, body = live.post("/v1/completions", {"model": "papers", "prompt": documents, "max_tokens": 8})
    assert status == 200, body
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == summaries
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["finish_reason"] for c in body["choices"]] == ["length" if c else "stop" for c in cuts]


def test_openai_client_calls_the_server(live, eval_side):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key="unused", max_retries=0)
    document = eval_side[3]["papers"][0]["document"]
    (summary,), _ = eval_summaries(eval_side, [document], 8)
    reply = client.chat.completions.create(
        model="papers", messages=[{"role": "user", "content": document}], max_tokens=8
    )
    assert reply.choices[0].message.content == summary
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.total_tokens > 0
    # The student has one summarization task, so any model name reaches it.
    other = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": document}], max_tokens=8
    )
    assert other.choices[0].message.content == summary and other.model == "papers"
    completion = client.completions.create(model="papers", prompt=document, max_tokens=8)
    assert completion.choices[0].text == summary
    assert [m.id for m in client.models.list()] == ["papers"]
    with pytest.raises(openai.BadRequestError, match="'reviews' is a classification task"):
        client.chat.completions.create(model="reviews", messages=[{"role": "user", "content": document}])


# --- dynamic batching -----------------------------------------------------------------------
def concurrent_classify(server: LiveServer, texts: list[str]) -> list[tuple[int, dict]]:
    """One request per text, all sent at once from their own threads."""
    start = threading.Barrier(len(texts))

    def one(text: str) -> tuple[int, dict]:
        start.wait()
        return server.post("/v1/classify", {"task": "reviews", "texts": [text]})

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(one, texts))


def distinct_texts(eval_side, pool: list[str], n: int) -> list[str]:
    """``n`` texts of ``pool`` whose answers all differ, so that a wrong split (answers shuffled
    between requests, or left in length order) shows."""
    texts: list[str] = []
    chosen: list[float] = []
    for text, p in zip(pool, eval_probs(eval_side, pool)[:, 0]):
        if len(texts) < n and all(abs(p - q) > 1e-4 for q in chosen):
            texts.append(text)
            chosen.append(p)
    assert len(texts) == n
    return texts


def mixed_length_texts(eval_side, n: int) -> list[str]:
    """``n`` distinct texts of 3 to 26 words (~5 to 30 tokens), cut from the test reviews run
    together, in an order that is not length order."""
    words = " ".join(r["text"] for r in eval_side[3]["reviews"]).split()
    widths = (19, 3, 11, 7, 26, 5, 15, 9, 22, 13)
    pool = [" ".join(words[2 * i : 2 * i + widths[i % len(widths)]]) for i in range(60)]
    return distinct_texts(eval_side, pool, n)


def test_concurrent_requests_are_batched_and_split_back(student_dir, eval_side):
    pool = [r["text"] for r in eval_side[3]["reviews"]]
    pool += [f"{t} {extra}" for extra in ("arrived", "box", "really") for t in pool]
    texts = distinct_texts(eval_side, pool, 16)
    expected = eval_probs(eval_side, texts)

    for max_batch, wait in ((8, 500.0), (1, 0.0)):
        with LiveServer(student_dir, max_batch=max_batch, max_wait_ms=wait) as server:
            answers = concurrent_classify(server, texts)
            _, metrics = server.get("/metrics")
        assert all(status == 200 for status, _ in answers), answers
        got = np.array([[body["distributions"][0][k] for k in ("great", "other")] for _, body in answers])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        batches = metrics["tasks"]["reviews"]
        assert batches["items"] == 16 and metrics["endpoints"]["/v1/classify"]["requests"] == 16
        if max_batch == 1:
            assert batches["batches"] == 16
        else:
            assert 2 <= batches["batches"] < 16 and batches["mean_batch_size"] > 1


def test_a_batch_runs_in_length_order_within_the_token_budget(student_dir, eval_side):
    """One request of mixed lengths is one batch; it runs as token_budget_batches plans, and each
    text still gets its own answer, in request order."""
    tokenizer = eval_side[2]
    texts = mixed_length_texts(eval_side, 12)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=32)["input_ids"]]
    assert len(set(lengths)) > 3 and lengths != sorted(lengths)
    plan = token_budget_batches(lengths, 64)
    assert 2 < len(plan) < len(texts)  # some sorting and packing to get right
    with LiveServer(student_dir, max_batch=16, max_wait_ms=0.0, max_batch_tokens=64) as server:
        status, body = server.post("/v1/classify", {"task": "reviews", "texts": texts})
        _, metrics = server.get("/metrics")
        _, health = server.get("/health")
    assert status == 200, body
    got = np.array([[d[k] for k in ("great", "other")] for d in body["distributions"]])
    np.testing.assert_allclose(got, eval_probs(eval_side, texts), atol=1e-5)
    stats = metrics["tasks"]["reviews"]
    assert (stats["batches"], stats["items"]) == (1, 12)
    assert stats["model_calls"] == len(plan) and metrics["batches"]["model_calls"] == len(plan)
    assert stats["tokens"] == sum(lengths)
    assert stats["padded_tokens"] == sum(padded_tokens([lengths[i] for i in g]) for g in plan)
    assert stats["padded_tokens"] <= 64 * len(plan)
    assert health["limits"]["max_batch_tokens"] == 64


def test_concurrent_mixed_lengths_under_a_small_budget_are_split_back(student_dir, eval_side):
    texts = mixed_length_texts(eval_side, 16)
    expected = eval_probs(eval_side, texts)
    with LiveServer(student_dir, max_batch=8, max_wait_ms=500.0, max_batch_tokens=48) as server:
        answers = concurrent_classify(server, texts)
        _, metrics = server.get("/metrics")
    assert all(status == 200 for status, _ in answers), answers
    got = np.array([[body["distributions"][0][k] for k in ("great", "other")] for _, body in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    stats = metrics["tasks"]["reviews"]
    assert stats["items"] == 16 and stats["model_calls"] > stats["batches"]


def test_summaries_of_mixed_lengths_come_back_in_prompt_order(student_dir, eval_side):
    """A budget of one token runs each document alone, shortest first: each result must still be
    its own document's (eval's summary, and the document's own prompt_tokens, which differ)."""
    tasks, _, tokenizer, test_rows = eval_side
    # Each test document cut to 6 to 27 words (within max_document_length 64), not in length order.
    documents = [
        " ".join(r["document"].split()[: 6 + 7 * (i * 3 % 4)]) for i, r in enumerate(test_rows["papers"])
    ]
    rows = [{"document": d} for d in documents]
    lengths = [len(ids) for ids in tasks["papers"].encode(rows, tokenizer, 64)]
    assert len(set(lengths)) == len(lengths) and lengths != sorted(lengths)
    service = create_app(student_dir, device="cpu", max_batch_tokens=1).state.service
    results = service.run(("papers", 8), rows)  # what the model thread runs for one batch
    assert [r["prompt_tokens"] for r in results] == lengths
    assert [r["text"] for r in results] == [eval_summaries(eval_side, [d], 8)[0][0] for d in documents]
    stats = service.metrics.snapshot()["tasks"]["papers"]
    assert stats["model_calls"] == len(rows) and stats["padded_tokens"] == sum(lengths)


# --- bad input ------------------------------------------------------------------------------
DOC = [{"role": "user", "content": "the coffee arrived"}]
BAD = [
    # (path, body, status, words the message must hold)
    ("/v1/classify", {"task": "nope", "texts": ["a"]}, 404, ["'nope'", "reviews"]),
    ("/v1/classify", {"task": "papers", "texts": ["a"]}, 400, ["'papers'", "summarization", "/v1/chat"]),
    ("/v1/classify", {"task": "reviews", "texts": []}, 400, ["texts", "empty list"]),
    ("/v1/classify", {"task": "reviews", "texts": ["good", "  "]}, 400, ["texts[1]", "empty"]),
    ("/v1/classify", {"task": "reviews", "texts": ["x" * (MAX_CHARS + 1)]}, 400, ["texts[0]", "max_chars"]),
    ("/v1/classify", {"task": "reviews", "texts": ["a"] * 257}, 400, ["texts", "257", "256"]),
    ("/v1/classify", {"task": "reviews", "texts": ["a"], "text_pairs": ["b"]}, 400,
     ["text_pairs", "classification"]),
    ("/v1/classify", {"task": "reviews", "texts": "a"}, 422, ["texts", "list"]),
    ("/v1/classify", {"task": "reviews", "texts": ["a", 2]}, 422, ["texts.1", "string"]),
    ("/v1/classify", {"texts": ["a"]}, 422, ["task", "required"]),
    ("/v1/classify", {"task": "reviews", "text": ["a"]}, 422, ["text", "texts"]),
    ("/v1/classify", b"{not json", 422, ["JSON"]),
    ("/v1/chat/completions", {"model": "reviews", "messages": DOC}, 400, ["'reviews'", "classification"]),
    ("/v1/chat/completions", {"model": "papers", "messages": [{"role": "system", "content": "x"}]}, 400,
     ["messages", "user"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": " "}]}, 400,
     ["messages[0].content", "empty"]),
    ("/v1/chat/completions", {"messages": DOC, "max_tokens": 0}, 400, ["max_tokens", "0"]),
    ("/v1/chat/completions", {"messages": DOC, "max_tokens": 10**6}, 400, ["max_tokens", "1000000"]),
    ("/v1/chat/completions", {"messages": DOC, "max_tokens": "8"}, 422, ["max_tokens", "integer"]),
    ("/v1/chat/completions", {"messages": DOC, "stream": True}, 400, ["stream"]),
    ("/v1/chat/completions", {"messages": DOC, "n": 2}, 400, ["n: 2"]),
    ("/v1/chat/completions", {"messages": "hello"}, 422, ["messages"]),
    ("/v1/completions", {"model": "papers", "prompt": []}, 400, ["prompt", "empty list"]),
    ("/v1/completions", {"model": "papers", "prompt": ["ok", "x" * (MAX_CHARS + 1)]}, 400,
     ["prompt[1]", "max_chars"]),
    ("/v1/nothing", {}, 404, ["/v1/nothing"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "words"), BAD, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD)]
)
def test_bad_input_is_a_4xx_naming_the_culprit(live, path, body, status, words):
    got, reply = live.post(path, body)
    assert got == status, reply
    message = reply["error"]["message"]
    for word in words:
        assert word in message, message
    status, health = live.get("/health")
    assert status == 200 and health["status"] == "ok"


def test_bad_input_is_counted_and_good_input_still_served(live):
    _, before = live.get("/metrics")
    live.post("/v1/classify", {"task": "nope", "texts": ["a"]})
    status, body = live.post("/v1/classify", {"task": "reviews", "texts": ["tasty fresh coffee"]})
    assert status == 200 and len(body["distributions"]) == 1
    _, after = live.get("/metrics")
    old, new = before["endpoints"]["/v1/classify"], after["endpoints"]["/v1/classify"]
    assert (new["requests"] - old["requests"], new["4xx"] - old["4xx"], new["5xx"] - old["5xx"]) == (2, 1, 0)
    assert new["latency_p50_ms"] > 0 and new["latency_window"] == new["requests"]


def test_a_model_exception_is_a_500_and_the_server_goes_on(live):
    student = live.service.student

    def broken(*args, **kwargs):
        raise RuntimeError("the head fell off")

    student.classify = broken  # an instance attribute shadows the method
    try:
        status, body = live.post("/v1/classify", {"task": "reviews", "texts": ["a", "b"]})
    finally:
        del student.classify
    assert status == 500
    assert "the head fell off" in body["error"]["message"] and "'reviews'" in body["error"]["message"]
    assert live.get("/health")[0] == 200
    status, body = live.post("/v1/classify", {"task": "reviews", "texts": ["a", "b"]})
    assert status == 200 and len(body["predictions"]) == 2
    assert live.get("/metrics")[1]["endpoints"]["/v1/classify"]["5xx"] >= 1


# --- sentence pairs, and `serve` itself -----------------------------------------------------
def test_a_folder_without_a_student_fails_before_listening(tmp_path):
    from distill.core.errors import DistillError

    with pytest.raises(DistillError, match="not a student folder"):
        create_app(tmp_path)


def test_sentence_pairs_are_served_with_segments(tmp_path, tiny_encoder):
    """A (random) student with a sentence_pair head: text_pairs go through SentencePair.encode."""
    from distill.core.config import StudentConfig
    from distill.student.model import build_student, load_student, save_student
    from distill.tasks import task_for

    cfg = task_config(
        name="para", kind="sentence_pair", text_pair_field="b", labels={"same": "yes", "different": "no"}
    )
    student, tokenizer = build_student(
        StudentConfig(encoder=tiny_encoder, summarizer="bert2bert", max_length=32), [task_for(cfg)]
    )
    save_student(student.state_dict(), student.spec, tokenizer, tmp_path / "student")
    assert list(served_tasks(student.spec)) == ["para"]
    firsts, seconds = ["the box arrived", "tasty coffee"], ["it was stale", "tasty coffee"]
    reference, reference_tokenizer = load_student(tmp_path / "student")
    rows = [{"text": a, "text_pair": b} for a, b in zip(firsts, seconds)]
    expected = task_for(cfg).student_probs(reference, reference_tokenizer, rows, 8)
    with LiveServer(tmp_path / "student") as server:
        status, body = server.post("/v1/classify", {"task": "para", "texts": firsts, "text_pairs": seconds})
        missing = server.post("/v1/classify", {"task": "para", "texts": firsts})
        uneven = server.post("/v1/classify", {"task": "para", "texts": firsts, "text_pairs": seconds[:1]})
    assert status == 200, body
    got = np.array([[d[k] for k in ("same", "different")] for d in body["distributions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert missing[0] == 400 and "needs text_pairs" in missing[1]["error"]["message"]
    assert uneven[0] == 400 and "1 for 2 texts" in uneven[1]["error"]["message"]


def test_serve_resolves_a_run_folder_and_listens(trained_run):
    code = f"from distill.ship.serve.app import serve; serve({str(trained_run)!r}, port=0, max_batch=4)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        for line in proc.stderr:  # uvicorn says where it listens once it does
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "serve never said where it listens"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
        assert health["student"] == str(trained_run / "train" / "student")
        assert health["limits"]["max_batch"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 0


# --- what ships is what was scored: the stored decoding -------------------------------------
BEAMS = {"num_beams": 3, "no_repeat_ngram_size": 2}


def copied_run(trained_run: Path, root: Path, eval_extra: dict | None = None) -> Path:
    """``trained_run``'s pipeline with run_dir ``root/run`` (its teach outputs, and its train
    output when there is one, copied there) and ``eval_extra`` in eval: the new pipeline file."""
    import shutil

    import yaml

    data = yaml.safe_load((trained_run.parent / "pipeline.yaml").read_text())
    data["run_dir"] = str(root / "run")
    data["eval"].update(eval_extra or {})
    shutil.copytree(trained_run / "teach", root / "run" / "teach")
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def scored_side(pipeline_path: Path, overrides: list[str] | None = None):
    """The papers task, the pipeline, the saved student and its test rows, as eval reads them."""
    from distill.core.data import read_jsonl
    from distill.core.layout import output_path
    from distill.pipeline import load as load_pipeline
    from distill.student.model import load_student
    from distill.tasks import tasks_for

    pipeline = load_pipeline(pipeline_path, overrides)
    papers = next(t for t in tasks_for(pipeline) if t.name == "papers")
    student, tokenizer = load_student(pipeline.path / "train" / "student")
    return papers, pipeline, student, tokenizer, read_jsonl(output_path(pipeline, "papers", "test"))


@pytest.fixture(scope="module")
def beam_run(trained_run: Path, tmp_path_factory) -> Path:
    """The tiny run trained again with eval.decoding beams and n-gram blocking: its pipeline."""
    path = copied_run(trained_run, tmp_path_factory.mktemp("beam_run"), {"decoding": BEAMS})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "train", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def test_train_stores_the_decoding_eval_scores(trained_run, beam_run):
    greedy = json.loads((trained_run / "train" / "student" / "student.json").read_text())
    assert greedy["decoding"] == {"papers": {"max_new_tokens": 8, "num_beams": 1}}
    report = json.loads((trained_run / "eval" / "report.json").read_text())
    assert report["tasks"]["papers"]["student_json_decoding"] == "kept"
    beams = json.loads((beam_run.parent / "run" / "train" / "student" / "student.json").read_text())
    assert beams["decoding"] == {"papers": {"max_new_tokens": 8, **BEAMS, "length_penalty": 1.0}}


def test_a_beam_student_serves_evals_summaries(beam_run):
    """Served summaries are what eval's path scores for the same rows: beams 3, no repeated
    2-grams, eval.max_new_tokens 8 (not greedy up to max_summary_length 12)."""
    papers, pipeline, student, tokenizer, rows = scored_side(beam_run)
    expected, cuts = papers.scored_summaries(pipeline, rows, student, tokenizer)
    greedy, _ = papers.student_summaries(student, tokenizer, rows, len(rows), student.spec.max_summary_length)
    assert expected != greedy  # else this test could not tell the decodings apart
    documents = [r["document"] for r in rows]
    with LiveServer(pipeline.path / "train" / "student", max_batch_tokens=10**6) as server:
        status, body = server.post("/v1/completions", {"model": "papers", "prompt": documents})
        longer = server.post("/v1/completions", {"prompt": documents, "max_tokens": 100})[1]
        _, health = server.get("/health")
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == expected
    assert [c["finish_reason"] for c in body["choices"]] == ["length" if c else "stop" for c in cuts]
    assert [c["text"] for c in longer["choices"]] == expected  # max_tokens may only shorten it
    assert health["decoding"]["papers"] == {
        "max_new_tokens": 8, **BEAMS, "length_penalty": 1.0, "from": "student.json"}  # fmt: skip


def test_eval_with_other_decoding_rewrites_what_ships(beam_run, tmp_path):
    """Eval rerun with --set eval.decoding…: it scores the pipeline's decoding, student.json then
    stores that, and serve answers with it."""
    import shutil

    root = tmp_path / "rerun"
    path = copied_run(beam_run.parent / "run", root, {"decoding": BEAMS})
    shutil.copytree(beam_run.parent / "run" / "train", root / "run" / "train")
    overrides = ["eval.decoding.num_beams=1", "eval.decoding.no_repeat_ngram_size=0", "eval.max_new_tokens=6"]
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "eval", str(path), *args],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = json.loads((root / "run" / "train" / "student" / "student.json").read_text())
    assert spec["decoding"] == {"papers": {"max_new_tokens": 6, "num_beams": 1}}
    note = "rewritten (was max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2, length_penalty=1.0)"
    assert (
        json.loads((root / "run" / "eval" / "report.json").read_text())["tasks"]["papers"][
            "student_json_decoding"
        ]
        == note
    )
    assert f"student.json's decoding {note}" in (root / "run" / "eval" / "report.md").read_text()
    papers, pipeline, student, tokenizer, rows = scored_side(path, overrides)
    expected, _ = papers.scored_summaries(pipeline, rows, student, tokenizer)
    with LiveServer(pipeline.path / "train" / "student", max_batch_tokens=10**6) as server:
        status, body = server.post("/v1/completions", {"prompt": [r["document"] for r in rows]})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == expected
