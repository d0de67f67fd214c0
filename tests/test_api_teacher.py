"""The API teacher over real HTTP: a loopback server with scripted faults, and (slow) a real
llama.cpp server serving SmolLM2."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.config import load_pipeline
from distill.teach import failed_items, output_path
from distill.teach import run as teach
from distill.teacher.answers import distribution_from_logprobs, match_label
from tests.conftest import KEY, REPO, api_pipeline
from tests.loopback_openai import EXPECTED, judge


def rows_of(cfg, task, split):
    return [json.loads(x) for x in output_path(cfg, task, split).read_text().splitlines()]


def assert_expected_labels(rows):
    for r in rows:
        expected = EXPECTED[judge("Text: " + r["text"])]
        assert r["teacher_distribution"] == pytest.approx(expected, abs=1e-6), r["id"]
        assert r["teacher_label_mass"] == pytest.approx(0.9, abs=1e-6)


def assert_key_never_written(root: Path):
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_verbalizer_matching_takes_case_and_space_variants():
    labels = ["great", "other"]
    assert [match_label(t, labels) for t in (" great", "Great", "GREAT.", "Ġgreat", " oth", "the", "")] == [
        0,
        0,
        0,
        0,
        1,
        None,
        None,
    ]
    assert match_label("no", ["no", "not sure"]) is None  # ambiguous prefix: counted outside the labels
    top = [
        {"token": t, "logprob": math.log(p)} for t, p in ((" great", 0.5), ("Great", 0.2), (" other", 0.1))
    ]
    content = [{"token": "Answer", "top_logprobs": []}, {"token": " great", "top_logprobs": top}]
    answer = distribution_from_logprobs(content, labels)
    assert answer["distribution"] == pytest.approx([0.7 / 0.8, 0.1 / 0.8])
    assert answer["label_mass"] == pytest.approx(0.8) and "unlisted" not in answer
    # "other" not among the alternatives: it gets the bound min(smallest listed 0.1, rest 0.2), not 0
    top = [{"token": t, "logprob": math.log(p)} for t, p in ((" great", 0.5), ("Great", 0.2), (" the", 0.1))]
    answer = distribution_from_logprobs([{"token": " great", "top_logprobs": top}], labels)
    assert answer["distribution"] == pytest.approx([0.7 / 0.8, 0.1 / 0.8])
    assert answer["label_mass"] == pytest.approx(0.7) and answer["unlisted"] == ["other"]


def test_api_teacher_soft_labels_and_summaries_over_http(tmp_path, tiny_encoder, server):
    server.latency_s = 0.05
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url))
    summary = teach(cfg)
    assert summary["complete"]
    assert server.max_in_flight == 4  # teacher.concurrency, never more
    train = rows_of(cfg, "reviews", "train")
    assert len(train) == 32 and {r["teacher_method"] for r in train} == {"logprobs"}
    assert_expected_labels(train + rows_of(cfg, "reviews", "test"))
    papers = rows_of(cfg, "papers", "train")
    assert all(r["teacher_summary"] and r["teacher_finish_reason"] == "stop" for r in papers)
    usage = summary["teacher"]["usage"]
    total = sum(c["rows"] for c in summary["counts"].values())
    assert usage["requests"] == len(server.log) == total and usage["retries"] == 0
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0

    short = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url, max_new_tokens=3))
    teach(short)
    assert {r["teacher_finish_reason"] for r in rows_of(short, "papers", "train")} == {"length"}
    assert summary["teacher"]["id"] == f"openai:{server.url}:loopback"
    assert_key_never_written(tmp_path)


FAULTS = {
    "item000": ["429"],  # Retry-After: 1
    "item001": ["500", "500"],
    "item002": ["hang"],  # past the 0.5 s timeout
    "item003": ["truncated"],
    "item004": ["outside"],
    "item005": ["nologprobs"],  # → 10 samples at temperature 1
    "item006": ["always:outside"],
    "item007": ["always:500"],
    "item008": ["html"],
    "item009": ["always:truncated"],
}


def distill_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_faults_end_labeled_or_listed_and_rerun_asks_only_failures(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    cfg = load_pipeline(path)
    server.faults = {k: list(v) for k, v in FAULTS.items()}
    first = distill_cli("teach", str(path))
    assert first.returncode == 1, first.stderr
    assert "the teacher failed 3 items" in first.stderr
    failed = {f["id"]: f["reason"] for f in failed_items(cfg)}
    assert set(failed) == {"train-6", "train-7", "train-9"}
    assert "outside the label set" in failed["train-6"]
    assert "HTTP 500, still after 3 retries" in failed["train-7"]
    assert "unparseable response" in failed["train-9"]
    assert not output_path(cfg, "reviews", "train").exists()  # never a partial split
    assert output_path(cfg, "reviews", "test").exists()
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["teacher"]["usage"]["retries"] >= 12
    assert server.requests_for("item002") == 2  # the hung request, then the retry
    first_try, retry = [e["t"] for e in server.log if "item000" in e["prompt"]]
    assert retry - first_try >= 0.95  # Retry-After: 1 was honoured

    server.faults = {}
    before = len(server.log)
    summary = teach(cfg)
    assert summary["complete"] and summary["cache"]["teacher_calls"] == 3
    assert sorted(e["prompt"].split("Text: ")[1][:7] for e in server.log[before:]) == [
        "item006",
        "item007",
        "item009",
    ]
    train = rows_of(cfg, "reviews", "train")
    sampled = [r for r in train if r["text"].startswith("item005")]
    assert sampled[0]["teacher_method"] == "samples:10"
    assert sampled[0]["teacher_distribution"] == pytest.approx(
        [0.7, 0.3] if judge("Text: " + sampled[0]["text"]) == "great" else [0.3, 0.7]
    )
    assert_expected_labels([r for r in train if r is not sampled[0]])
    assert not (cfg.path / "teach" / "failures.jsonl").exists()
    assert_key_never_written(tmp_path)


def test_killed_online_teach_never_asks_a_cached_answer_again(tmp_path, tiny_encoder, server):
    import sqlite3

    server.latency_s = 0.2
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "teach", str(path)], env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while len(server.log) < 12 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cfg = load_pipeline(path)
    with sqlite3.connect(cfg.teach.cache) as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert kept >= 8  # answers are committed one by one, not at the end of a batch or split

    while server.in_flight:  # the dead client's last requests, still in the server's latency sleep
        time.sleep(0.02)
    before = len(server.log)
    summary = teach(cfg)
    total = sum(c["rows"] for c in summary["counts"].values())
    assert summary["complete"] and summary["cache"]["hits"] == kept
    assert len(server.log) - before == summary["cache"]["teacher_calls"] == total - kept


def test_budget_stops_cleanly_and_the_rest_follows_later(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url, concurrency=1)
    result = distill_cli("teach", str(path), "--max-requests", "5")
    assert result.returncode == 1
    assert len(server.log) == 5
    reasons = {f["reason"] for f in failed_items(load_pipeline(path))}
    assert reasons == {"budget: max_requests 5 reached"}
    summary = teach(load_pipeline(path))
    assert summary["complete"] and summary["cache"]["hits"] == 5


def test_score_labels_fallback_when_the_endpoint_has_no_logprobs(tmp_path, tiny_encoder, server):
    server.logprobs = False
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url, no_logprobs="score_labels"))
    assert teach(cfg)["complete"]
    rows = rows_of(cfg, "reviews", "train")
    assert {r["teacher_method"] for r in rows} == {"score_labels"}
    assert_expected_labels(rows)
    assert sum(e["path"] == "completions" for e in server.log) == 2 * (32 + 10)


def test_batch_mode_survives_a_kill_and_rerun_retries_only_failures(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url, mode="batch")
    cfg = load_pipeline(path)
    server.hold_batches = True
    server.faults = {"item004": ["500"]}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "teach", str(path)], env=env, stderr=subprocess.DEVNULL
    )
    state_dir = cfg.path / "teach" / "batches"
    deadline = time.time() + 120
    while not list(state_dir.glob("*.json")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(server.batches) == 1 and len(list(state_dir.glob("*.json"))) == 1

    server.hold_batches = False
    summary = teach(cfg)  # resumes that job, then one job per remaining split
    assert len(server.batches) == 4
    assert [f["id"] for f in failed_items(cfg)] == ["train-4"]
    assert all(server.requests_for(f"item{i:03d}") == 1 for i in range(32))
    assert not summary["complete"] and not list(state_dir.glob("*.json"))

    summary = teach(cfg)
    assert summary["complete"] and summary["cache"]["teacher_calls"] == 1 and len(server.batches) == 5
    assert_expected_labels(rows_of(cfg, "reviews", "train"))
    assert_key_never_written(tmp_path)


# -- a real OpenAI-compatible server: llama.cpp serving SmolLM2 ----------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by .ci/run")
    from distill.assets import teacher_gguf

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(teacher_gguf("qwen2.5-coder-0.5b-instruct")),
            "--model_alias",
            "qwen",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("llama.cpp server did not start")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_llama_cpp_server_teaches_and_the_student_trains_on_it(tmp_path, tiny_encoder, llama_server):
    path = api_pipeline(tmp_path, tiny_encoder, llama_server, model="qwen", timeout_s=120, concurrency=1)
    data = json.loads(json.dumps(load_pipeline(path).to_dict()))
    result = distill_cli(
        "run",
        str(path),
        "--set",
        "tasks.reviews.max_rows.train=12",
        "--set",
        "tasks.reviews.max_rows.test=8",
        "--set",
        "tasks.papers.max_rows.train=4",
        "--set",
        "tasks.papers.max_rows.test=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_pipeline(path)
    rows = rows_of(cfg, "reviews", "train")
    assert len(rows) == 12 and data["teach"]["teacher"]["backend"] == "openai"
    for r in rows:
        assert sum(r["teacher_distribution"]) == pytest.approx(1.0, abs=1e-6)
        assert r["teacher_method"] == "logprobs"
    assert len({tuple(r["teacher_distribution"]) for r in rows}) > 1  # soft, input-dependent labels
    # Qwen answers these plain reviews with the label words themselves, and mostly rightly.
    assert sum(r["teacher_label_mass"] for r in rows) / len(rows) > 0.5
    right = [r["teacher_label"] == judge("Text: " + r["text"]) for r in rows]
    assert sum(right) >= 9, right
    papers = rows_of(cfg, "papers", "train")
    assert all(len(r["teacher_summary"].split()) >= 3 for r in papers)
    report = json.loads((cfg.path / "eval" / "report.json").read_text())
    assert report["models"]["teacher"]["api_usage"]["requests"] >= 12 + 8 + 4 + 4


def test_rate_limiter_never_exceeds_the_limit():
    """600 requests/min holds at most 5 s' worth (50): 70 requests need at least 2 s more."""
    import asyncio

    from distill.teacher.api import RateLimiter

    async def burst() -> float:
        limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None)
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire(tokens=100) for _ in range(70)))
        return time.monotonic() - start

    assert asyncio.run(burst()) >= 1.95
