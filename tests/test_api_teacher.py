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

from distill.core.layout import output_path
from distill.ops.runs.records import EXIT_TEACHER
from distill.pipeline import load as load_pipeline
from distill.pipeline import section
from distill.teach.run import failed_items
from distill.teach.run import run as teach
from distill.teach.teachers.answers import distribution_from_logprobs, match_label
from distill.teach.teachers.openai.labels import summary_body
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
    assert first.returncode == EXIT_TEACHER, first.stderr
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


# -- a dead endpoint fails fast (teacher.max_consecutive_failures) -----------------------------
def cached_answers(path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("teach: error:")]


def test_nothing_listening_fails_at_once_and_lists_every_item_not_asked(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_KEY", KEY)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # a closed port
    path = api_pipeline(tmp_path, tiny_encoder, url, max_consecutive_failures=3)
    result = distill_cli("teach", str(path))
    assert result.returncode == EXIT_TEACHER, result.stderr
    [line] = error_lines(result.stderr)
    assert url in line and "does not answer (connection failed:" in line and "refused" in line
    cfg = load_pipeline(path)
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    failed = failed_items(cfg)
    assert len(failed) == sum(c["rows"] for c in manifest["counts"].values()) == 32 + 10 + 12 + 4
    assert all(f["reason"].startswith(f"not asked: the endpoint at {url} does not answer") for f in failed)
    usage = manifest["teacher"]["usage"]
    # one probe, no item sent: without it, 58 items × (1 + 3 retries) requests and their backoff
    assert usage["probes"] == 1 and usage["requests"] == 0 and usage["retries"] == 0


def test_requests_without_an_answer_stop_the_run_after_n_in_a_row(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url, max_consecutive_failures=3)
    server.faults = {"": ["always:drop"]}  # every request: the connection closes with no reply
    summary = teach(load_pipeline(path))
    assert not summary["complete"] and summary["teacher"]["usage"]["probes"] == 1
    asked = {e["prompt"] for e in server.log}
    assert len(server.log) <= 3 + 4 - 1  # N in a row, plus what the other 3 workers had in flight
    failed = failed_items(load_pipeline(path))
    assert len(failed) == 58 and all(
        f"the endpoint at {server.url} stopped answering" in f["reason"] for f in failed
    )
    assert sum(f["reason"].startswith("not asked: ") for f in failed) == 58 - len(asked)
    assert "Server disconnected" in failed[0]["reason"] and "3 requests in a row" in failed[0]["reason"]

    # two drops in a row, an answer, two more: never 3 in a row, so nothing stops
    server.faults = {"item001": ["drop", "drop"], "item002": ["drop", "drop"]}
    before = len(server.log)
    assert teach(load_pipeline(path, ["teach.teacher.concurrency=1"]))["complete"]
    prompts = [e["prompt"] for e in server.log[before:]]
    assert sum("item001" in p for p in prompts) == sum("item002" in p for p in prompts) == 3


def test_the_probe_asks_one_token_where_models_is_not_served(server, monkeypatch):
    from distill.core.errors import DistillError

    server.models = False
    teacher = token_teacher(server.url, summary_top_k=0, tokenizer=None)
    assert teacher.check_endpoint() is None
    [hello] = server.log
    assert hello["prompt"] == "Hi" and (teacher.counts["probes"], teacher.counts["requests"]) == (2, 0)
    monkeypatch.setenv("DISTILL_TEST_KEY", "not-the-key")
    with pytest.raises(DistillError, match=r"HTTP 401: check \$DISTILL_TEST_KEY"):
        token_teacher(server.url, summary_top_k=0, tokenizer=None).check_endpoint()


def test_a_server_killed_mid_run_keeps_its_answers_and_lists_the_rest(tmp_path, tiny_encoder, monkeypatch):
    from tests.loopback_openai import LoopbackOpenAI

    monkeypatch.setenv("DISTILL_TEST_KEY", KEY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = _free_port()
    served = subprocess.Popen(
        [sys.executable, "-m", "tests.loopback_openai", "--port", str(port), "--latency-s", "0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = served.stdout.readline().strip()
    path = api_pipeline(tmp_path, tiny_encoder, url, max_consecutive_failures=3)
    cfg = load_pipeline(path)
    run = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "teach", str(path)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while cached_answers(cfg.teach.cache) < 10 and time.time() < deadline:
        time.sleep(0.02)
    at_kill = cached_answers(cfg.teach.cache)
    served.kill()
    served.wait()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == EXIT_TEACHER, stderr
    [line] = error_lines(stderr)
    assert f"the endpoint at {url} stopped answering (connection failed:" in line
    kept = cached_answers(cfg.teach.cache)
    assert 10 <= at_kill <= kept < 58
    failed = failed_items(cfg)
    assert len(failed) == 58 - kept  # every item is either cached or listed
    assert all(f"the endpoint at {url} stopped answering" in f["reason"] for f in failed)
    assert any(f["reason"].startswith("not asked: ") for f in failed)
    usage = json.loads((cfg.path / "teach" / "manifest.json").read_text())["teacher"]["usage"]
    assert usage["requests"] - kept <= 3 + 4 - 1  # failed requests: not (58 - kept) × 4

    again = LoopbackOpenAI()  # the server is back, on the same port: only the rest is asked
    again.start(port)
    try:
        summary = teach(cfg)
    finally:
        again.stop()
    assert summary["complete"] and summary["cache"]["hits"] == kept
    assert len(again.log) == summary["cache"]["teacher_calls"] == summary["cache"]["stored"] == 58 - kept


def test_budget_stops_cleanly_and_the_rest_follows_later(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url, concurrency=1)
    result = distill_cli("teach", str(path), "--max-requests", "5")
    assert result.returncode == EXIT_TEACHER
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


# -- summary tokens and their top-k log-probabilities (teacher.summary_top_k) -------------------
SUMMARIZE = "Summarize the following text in two or three sentences.\n\n"
LOG_HALVES = [math.log(0.5), math.log(0.25), math.log(0.125)]


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The bundled SmolLM2 tokenizer (byte-level BPE), offline."""
    from transformers import AutoTokenizer

    from distill.core.assets import resolve_teacher

    return AutoTokenizer.from_pretrained(resolve_teacher("smollm2-135m-instruct"))


def token_teacher(url: str, **overrides):
    from distill.core.config import TeacherConfig
    from distill.teach.teachers.openai.client import APITeacher

    settings = {
        "backend": "openai",
        "base_url": url,
        "model": "loopback",
        "api_key_env": "DISTILL_TEST_KEY",
        "concurrency": 2,
        "max_retries": 0,
        "batch_poll_s": 0.05,
        "summary_top_k": 3,
        "tokenizer": "smollm2-135m-instruct",
        **overrides,
    }
    return APITeacher(section(TeacherConfig, settings))


def summaries(teacher, *documents: str) -> list[dict]:
    from distill.teach.prompts import Prompt

    answers = dict(teacher.summarize([Prompt(head=SUMMARIZE, body=d) for d in documents]))
    return [answers[i] for i in range(len(documents))]


def test_vocabulary_bytes_map_to_the_lowest_id():
    from distill.teach.teachers.answers import token_byte_ids

    # byte-level BPE: 'Ġ' is a space, 'Ã©' the two bytes of 'é', 'â' the first byte of '☕'
    tokens = ["<s>", "a", "Ġb", "Ã©", "â", "a", None, "Ġ<s>"]
    assert token_byte_ids(tokens, {0: "<s>", 7: " <s>"}, byte_level=True) == {
        b"<s>": 0,
        b"a": 1,
        b" b": 2,
        "é".encode(): 3,
        b"\xe2": 4,
        b" <s>": 7,  # an added token is its text, never read through the byte table
    }
    assert token_byte_ids(["▁the", "<0x0A>", "x", "▁the"], {}, byte_level=False) == {
        b" the": 0,
        b"\n": 1,
        b"x": 2,
    }


def test_summary_tokens_prefer_bytes_and_name_what_they_cannot_map():
    from distill.teach.teachers.answers import ItemFailed, summary_tokens

    vocab = {b" caf": 5, b"\xc3": 6, b"\xa9": 7, b"\xc3\xa9": 8, b"!": 9}

    def entry(token, raw, lp, alts=()):
        alts = [(token, raw, lp), *alts]
        listed = [{"token": t, "bytes": b, "logprob": v} for t, b, v in alts]
        return {"token": token, "bytes": raw, "logprob": lp, "top_logprobs": listed}

    # 'é' as two partial tokens: their strings say nothing, their bytes say everything
    content = [
        entry(" caf", None, -0.1, [("!", [33], -3.0)]),
        entry("bytes:\\xc3", [0xC3], -0.2, [("é", None, -2.0)]),
        entry("bytes:\\xa9", [0xA9], 0.0, [("!", None, -4.0)]),
    ]
    tokens = summary_tokens(content, vocab, 2, "café")
    assert tokens == {
        "ids": [5, 6, 7],
        "top_ids": [[5, 9], [6, 8], [7, 9]],
        "top_logprobs": [[-0.1, -3.0], [-0.2, -2.0], [0.0, -4.0]],
    }
    assert summary_tokens(content, vocab, 1, "café")["top_ids"] == [[5], [6], [7]]  # cut to k
    with pytest.raises(ItemFailed, match="lists 2 alternatives, fewer than teacher.summary_top_k 3"):
        summary_tokens(content, vocab, 3, "café")
    with pytest.raises(ItemFailed, match=r"answer token '\?\?'"):
        summary_tokens([entry("??", None, -0.1)], vocab, 1, "??")
    with pytest.raises(ItemFailed, match="not the summary"):
        summary_tokens(content, vocab, 1, "cafe")


def test_summary_top_k_tokens_over_http(tmp_path, server, smol_tokenizer):
    from distill.teach.cache import AnswerCache
    from distill.teach.prompts import Prompt
    from distill.teach.teachers.cached import CachedTeacher

    server.tokenizer = smol_tokenizer
    teacher = token_teacher(server.url)
    body = summary_body(teacher.cfg, Prompt(head=SUMMARIZE, body="x" * 80))
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    # '☕' is three bytes that its tokens split; 'é' is two
    (answer,) = summaries(teacher, "The café served ☕ coffee that was wonderful and fresh")
    text = "The café served ☕ coffee that"
    assert answer["text"] == text and answer["finish_reason"] == "stop"
    ids = answer["tokens"]["ids"]
    assert ids == smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(ids) == text
    assert any("\ufffd" in smol_tokenizer.decode([i]) for i in ids)  # a partial character was mapped
    pool = list(dict.fromkeys(smol_tokenizer(" the and of to", add_special_tokens=False)["input_ids"]))
    assert answer["tokens"]["top_ids"] == [[i] + [p for p in pool if p != i][:2] for i in ids]
    assert answer["tokens"]["top_logprobs"] == [LOG_HALVES] * len(ids)  # exactly what was sent

    # an endpoint that sends no bytes (llama.cpp): whole characters still map by their text
    server.faults = {"nobytes": ["always:nobytes"]}
    (plain,) = summaries(teacher, "nobytes the coffee arrived and it was fresh")
    assert (
        plain["tokens"]["ids"]
        == smol_tokenizer("nobytes the coffee arrived and it", add_special_tokens=False)["input_ids"]
    )

    # the answer passes the cache's checks and is served from the cache next time
    cached = CachedTeacher(teacher, AnswerCache(tmp_path / "cache.sqlite"))
    prompts = [Prompt(head=SUMMARIZE, body="The café served ☕ coffee that was wonderful")]
    first = cached.summarize(prompts, "v1")
    asked = len(server.log)
    assert cached.summarize(prompts, "v1") == first and len(server.log) == asked
    assert first[0]["tokens"] == answer["tokens"] and not cached.failures


def test_unmappable_token_or_missing_logprobs_fail_only_their_item(tmp_path, server, smol_tokenizer):
    from distill.teach.cache import AnswerCache
    from distill.teach.prompts import Prompt
    from distill.teach.teachers.cached import CachedTeacher

    server.tokenizer = smol_tokenizer
    server.faults = {"badtoken": ["always:badtoken"], "nologprobs": ["always:nologprobs"]}
    cached = CachedTeacher(token_teacher(server.url), AnswerCache(tmp_path / "cache.sqlite"))
    documents = ["good coffee was fresh today", "badtoken coffee was fresh", "nologprobs coffee was fresh"]
    good, bad, bare = cached.summarize([Prompt(head=SUMMARIZE, body=d) for d in documents], "v1")
    assert good["text"] == "good coffee was fresh today" and len(good["tokens"]["ids"]) >= 5
    assert "'<no such token>'" in bad["error"] and "no token of teacher.tokenizer" in bad["error"]
    assert "returned no logprobs for the summary" in bare["error"]
    assert len(cached.failures) == 2 and cached.calls == 1

    # without summary_top_k nothing is asked, and the same text comes back without tokens
    (text_only,) = summaries(token_teacher(server.url, summary_top_k=0), "nologprobs coffee was fresh")
    assert text_only == {"text": "nologprobs coffee was fresh", "finish_reason": "stop"}


def test_summary_top_k_in_batch_mode(tmp_path, server, smol_tokenizer):
    server.tokenizer = smol_tokenizer
    server.faults = {"badtoken": ["always:badtoken"]}
    teacher = token_teacher(server.url, mode="batch")
    teacher.state_dir = tmp_path
    answer, bad = summaries(teacher, "wonderful coffee and fresh snacks", "badtoken coffee was fresh")
    ids = smol_tokenizer("wonderful coffee and fresh snacks", add_special_tokens=False)["input_ids"]
    assert answer["tokens"]["ids"] == ids and answer["tokens"]["top_logprobs"] == [LOG_HALVES] * len(ids)
    assert "'<no such token>'" in bad["error"]


def test_summary_top_k_is_in_the_cache_key_only_when_asked():
    from distill.teach.prompts import Prompt

    off = token_teacher("http://127.0.0.1:9/v1", summary_top_k=0, tokenizer=None)
    # the key of every answer cached before summary_top_k existed
    assert off.decoding_params() == {
        "temperature": 0.0,
        "max_input_chars": 384 * 4,
        "max_new_tokens": 64,
        "label_max_tokens": 3,
        "label_parser": 2,
        "top_logprobs": 20,
        "no_logprobs": "samples",
        "samples": 10,
        "min_label_mass": 0.05,
    }
    assert "logprobs" not in summary_body(off.cfg, Prompt(head=SUMMARIZE, body="x" * 80))
    on = token_teacher("http://127.0.0.1:9/v1", summary_top_k=5)
    extra = {"summary_top_k": 5, "tokenizer": "smollm2-135m-instruct"}
    assert on.decoding_params() == off.decoding_params() | extra


# -- a real OpenAI-compatible server: llama.cpp serving SmolLM2 ----------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by .ci/run")
    from distill.core.assets import teacher_gguf

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
    cfg.run_dir = str(cfg.path / "latest")  # `distill run` writes a folder per run
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


@pytest.mark.slow
def test_llama_cpp_summary_tokens_map_to_the_qwen_vocabulary(llama_server):
    """llama.cpp sends no bytes; the text of whole-character tokens maps them."""
    from transformers import AutoTokenizer

    from distill.core.assets import resolve_teacher

    name = "qwen2.5-coder-0.5b-instruct"
    teacher = token_teacher(
        llama_server, model="qwen", tokenizer=name, summary_top_k=5, timeout_s=120, max_new_tokens=24
    )
    (answer,) = summaries(
        teacher, "The coffee arrived fresh and the snacks were tasty, but the box was broken."
    )
    assert "error" not in answer, answer
    tokenizer = AutoTokenizer.from_pretrained(resolve_teacher(name))
    tokens = answer["tokens"]
    assert tokenizer.decode(tokens["ids"]).strip() == answer["text"]
    assert [row[0] for row in tokens["top_ids"]] == tokens["ids"]  # greedy: the chosen token is the top one
    assert all(len(row) == 5 and row == sorted(row, reverse=True) for row in tokens["top_logprobs"])


def test_rate_limiter_never_exceeds_the_limit():
    """600 requests/min holds at most 5 s' worth (50): 70 requests need at least 2 s more."""
    import asyncio

    from distill.teach.teachers.openai.pacing import RateLimiter

    async def burst() -> float:
        limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None)
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire(tokens=100) for _ in range(70)))
        return time.monotonic() - start

    assert asyncio.run(burst()) >= 1.95
