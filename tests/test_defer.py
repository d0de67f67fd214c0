"""The cascade end to end: eval chooses the student's deferral threshold on validation and stores
it beside the student; `distill serve --defer` sends the requests under it to a real
OpenAI-compatible teacher on 127.0.0.1, logs them to traffic, and the next teach finds their
answers in the cache; a teacher that is down or slow leaves the student's answer, marked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from distill.core.layout import DEFER_FILE
from tests.conftest import REPO, api_pipeline
from tests.loopback_openai import EXPECTED, judge
from tests.test_serve import LiveServer

WORDS = ("wonderful", "stale", "tasty", "awful", "fresh", "bland", "perfect", "soggy", "love", "refund")


def request_texts(n: int) -> list[str]:
    """Distinct reviews, each with a marker ``reqNN`` the loopback server counts requests by."""
    rng = np.random.default_rng(1)
    return [f"req{i:02d} " + " ".join(rng.choice(WORDS, 4)) + " coffee" for i in range(n)]


def test_eval_stores_the_validation_chosen_threshold(trained_run, tmp_path):
    from distill.core.data import read_jsonl
    from distill.eval.metrics.cascade import threshold_for_rate
    from distill.pipeline import load as load_pipeline
    from distill.student.model import load_student
    from distill.tasks import tasks_for

    data = yaml.safe_load((trained_run.parent / "pipeline.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    for task in data["tasks"]:  # a validation split: a copy of train (the thresholds' rows)
        validation = tmp_path / f"{task['name']}-validation.jsonl"
        shutil.copy(task["data"]["train"], validation)
        task["data"]["validation"] = str(validation)
    data["teach"]["splits"] = ["train", "validation", "test"]
    data["serve"] = {"defer": {"rate": 0.25}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(trained_run / "train", tmp_path / "run" / "train")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for stage in ("teach", "eval"):
        proc = subprocess.run([sys.executable, "-m", "distill.cli", stage, str(path)],
                              capture_output=True, text=True, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_pipeline(path)
    student, tokenizer = load_student(cfg.path / "train" / "student")
    task = next(t for t in tasks_for(cfg) if t.name == "reviews")
    val = read_jsonl(cfg.path / "teach" / "reviews" / "validation.jsonl")
    conf = task.student_probs(student, tokenizer, val, 8).max(-1)
    stored = json.loads((cfg.path / "train" / "student" / DEFER_FILE).read_text())["reviews"]
    assert stored["threshold"] == pytest.approx(threshold_for_rate(conf, 0.25), abs=1e-6)
    assert stored["target"] == "rate 0.25" and stored["validation_rows"] == len(val)
    report = json.loads((cfg.path / "eval" / "report.json").read_text())["tasks"]["reviews"]
    assert [r["target_rate"] for r in report["cascade"]["rows"]] == [0.0, 0.05, 0.1, 0.2, 0.5]
    assert report["cascade"]["rows"][0]["deferred"] == 0.0
    assert report["cascade"]["rows"][0]["accuracy"] == pytest.approx(report["student"]["accuracy"], abs=1e-4)
    md = (cfg.path / "eval" / "report.md").read_text()
    assert "chosen: rate 0.25 (serve.defer)" in md and "teacher recall" in md


@pytest.fixture
def defer_setup(trained_run, tmp_path, tiny_encoder, server):
    """A pipeline with the loopback API teacher; the trained student in its run_dir, with a stored
    threshold between the confidences of the request texts (so some defer, some do not)."""
    path = api_pipeline(tmp_path, tiny_encoder, server.url, timeout_s=0.3, max_retries=1)
    run = tmp_path / "run"
    shutil.copytree(trained_run / "train" / "student", run / "train" / "student")
    (run / "teach").mkdir(parents=True)
    (run / "teach" / "manifest.json").write_text(json.dumps({"teacher": {"calibration": {}}}))
    from distill.ship.serve.service import Service

    texts = request_texts(12)
    service = Service(run / "train" / "student", 8, 1.0, 2000, "cpu")
    probs = service.tasks["reviews"].student_probs(
        service.student, service.tokenizer, [{"text": t} for t in texts], 12
    )
    conf = probs.max(-1)
    threshold = float(np.sort(conf)[6])  # the 6 least sure defer
    (run / "train" / "student" / DEFER_FILE).write_text(
        json.dumps({"reviews": {"threshold": threshold, "target": "test"}})
    )
    return path, run, texts, probs, conf < threshold


def test_deferred_requests_reach_the_teacher_are_logged_and_cached_for_the_next_teach(defer_setup, server):
    from distill.pipeline import load as load_pipeline

    path, run, texts, probs, deferred = defer_setup
    cfg = load_pipeline(path)
    with LiveServer(run / "train" / "student", defer=cfg) as live:
        status, body = live.post("/v1/classify", {"task": "reviews", "texts": texts})
        assert status == 200, body
        assert body["teacher_unavailable"] == [False] * len(texts), live.get("/metrics")[1]["defer"]
        assert body["answered_by"] == ["teacher" if d else "student" for d in deferred]
        assert body["teacher_unavailable"] == [False] * len(texts)
        for text, d, dist, p in zip(texts, deferred, body["distributions"], probs):
            want = EXPECTED[judge("Text: " + text)] if d else p
            assert [dist["great"], dist["other"]] == pytest.approx(list(want), abs=1e-5)
        assert sum(server.requests_for(f"req{i:02d}") > 0 for i in range(len(texts))) == deferred.sum()
        status, metrics = live.get("/metrics")
        assert metrics["defer"]["tasks"]["reviews"] == {
            "deferred": int(deferred.sum()), "teacher_answered": int(deferred.sum()), "teacher_unavailable": 0
        }  # fmt: skip
        # the same texts again: the teacher's answers come from the cache, no request
        before = sum(server.requests_for(f"req{i:02d}") for i in range(len(texts)))
        assert (
            live.post("/v1/classify", {"task": "reviews", "texts": texts})[1]["answered_by"]
            == body["answered_by"]
        )
        assert sum(server.requests_for(f"req{i:02d}") for i in range(len(texts))) == before
    log = [json.loads(line) for line in (run / "traffic" / "reviews.jsonl").read_text().splitlines()]
    assert [r["review"] for r in log[: int(deferred.sum())]] == [t for t, d in zip(texts, deferred) if d]
    assert all(r["teacher_label"] == judge("Text: " + r["review"]) for r in log)
    # the next teach lists the traffic as train rows: their answers are in the cache already
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["traffic"] = str(run / "traffic" / "reviews.jsonl")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "teach", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(server.requests_for(f"req{i:02d}") for i in range(len(texts))) == before
    train = [json.loads(x) for x in (run / "teach" / "reviews" / "train.jsonl").read_text().splitlines()]
    taught = {r["text"]: r["teacher_label"] for r in train if r["id"].startswith("traffic-")}
    assert taught == {t: judge("Text: " + t) for t, d in zip(texts, deferred) if d}  # once each


def test_a_teacher_that_is_down_or_slow_leaves_the_students_answer_marked(defer_setup, server):
    from distill.pipeline import load as load_pipeline

    path, run, texts, probs, deferred = defer_setup
    for i in range(len(texts)):
        server.faults[f"req{i:02d}"] = ["always:500"]
    cfg = load_pipeline(path, ["serve.defer.timeout_s=5"])
    with LiveServer(run / "train" / "student", defer=cfg) as live:
        status, body = live.post("/v1/classify", {"task": "reviews", "texts": texts})
        assert status == 200, body
        assert body["answered_by"] == ["student"] * len(texts)
        assert body["teacher_unavailable"] == [bool(d) for d in deferred]
        for dist, p in zip(body["distributions"], probs):
            assert [dist["great"], dist["other"]] == pytest.approx(list(p), abs=1e-5)
        metrics = live.get("/metrics")[1]["defer"]
        assert metrics["tasks"]["reviews"]["teacher_unavailable"] == int(deferred.sum())
        assert "500" in metrics["last_error"]
        # slow: the loopback server hangs 2 s, the timeout is 0.2 s
        server.faults.clear()
        for i in range(len(texts)):
            server.faults[f"req{i:02d}"] = ["always:hang"]
        live.app.state.deferral.timeout_s = 0.2
        status, body = live.post("/v1/classify", {"task": "reviews", "texts": texts[:3] + texts[-3:]})
        assert status == 200 and not any(a == "teacher" for a in body["answered_by"])
        assert "timeout_s" in live.get("/metrics")[1]["defer"]["last_error"]
        status, health = live.get("/health")  # still serving
        assert status == 200 and health["defer"]["reviews"]["threshold"] is not None
    log = [json.loads(line) for line in (run / "traffic" / "reviews.jsonl").read_text().splitlines()]
    assert log and all(r["teacher_label"] is None and r["teacher_unavailable"] for r in log)


def test_serve_defer_refuses_a_student_without_a_stored_threshold(defer_setup):
    from distill.core.errors import DistillError
    from distill.pipeline import load as load_pipeline

    path, run, *_ = defer_setup
    (run / "train" / "student" / DEFER_FILE).unlink()
    with pytest.raises(DistillError, match=r"defer.json not found: `distill eval` chooses"):
        LiveServer(run / "train" / "student", defer=load_pipeline(path))


def test_the_cli_serves_with_defer_and_says_below_what(defer_setup):
    import http.client
    import re
    import signal

    path, run, *_ = defer_setup
    cmd = [sys.executable, "-m", "distill.cli", "serve", str(run), "--port", "0", "--defer", str(path),
           "--set", "serve.defer.timeout_s=7"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        port, said = None, []
        for line in proc.stderr:
            said.append(line)
            if found := re.search(r"http://127\.0\.0\.1:(\d+)", line):
                port = int(found.group(1))
                break
        assert port, "".join(said)[-2000:]
        assert any("deferring to loopback below" in line for line in said)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
        stored = json.loads((run / "train" / "student" / DEFER_FILE).read_text())["reviews"]["threshold"]
        assert health["defer"]["reviews"]["threshold"] == pytest.approx(stored)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 0
