"""teach → train → eval through the real CLI and the real DeepSpeed engine, on tiny models."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, pipeline_dict, write_pipeline


def distill(*args, check=True, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", *map(str, args)], capture_output=True, text=True, env=env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"distill {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc


def weights(run_dir):
    return load_file(str(run_dir / "train" / "student" / "model.safetensors"))


def test_teach_train_eval_end_to_end(pipeline):
    distill("teach", pipeline)
    distill("train", pipeline)
    proc = distill("eval", pipeline, "--set", "eval.gates={reviews.agreement: 0.0, papers.rows: 4}")
    run_dir = pipeline.parent / "run"
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    reviews, papers = report["tasks"]["reviews"], report["tasks"]["papers"]
    for who in ("student", "teacher"):
        assert 0.0 <= reviews[who]["accuracy"] <= 1.0
        assert report["models"][who]["speed"]["reviews"]["items_per_s"] > 0
    assert 0.0 <= reviews["agreement"] <= 1.0 and reviews["kl_teacher_student"] >= 0.0
    assert set(papers["student_vs_reference"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert "teacher_vs_reference" in papers and "student_vs_teacher" in papers
    assert report["models"]["student"]["parameters"] > 0 and report["gates"]["papers.rows"]["passed"]
    assert "| reviews | student |" in proc.stdout
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    assert {"reviews", "reviews/kd", "reviews/ce", "papers"} <= set(log[0])
    assert log[-1]["papers"] < log[0]["papers"]  # the decoder learns the teacher's summaries
    for stage in ("teach", "train", "eval"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["versions"]["deepspeed"] and manifest["config"]["run_dir"] == str(run_dir)

    failing = distill("eval", pipeline, "--set", "eval.gates={reviews.student.accuracy: 1.01}", check=False)
    assert failing.returncode == 1 and "gates failed: reviews.student.accuracy" in failing.stderr


def test_killed_training_resumes_exactly(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, epochs=40, checkpoint_every=5)
    pipeline = write_pipeline(tmp_path, data)
    run_dir = tmp_path / "run"
    distill("teach", pipeline)
    distill("train", pipeline)
    reference = weights(run_dir)
    total = json.loads((run_dir / "train" / "manifest.json").read_text())["steps"]

    ckpt = run_dir / "train" / "checkpoints"
    shutil.rmtree(ckpt)  # so the poll below sees only the new run's checkpoints
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "train", str(pipeline)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(ckpt.glob("step-*/mp_rank_00_model_states.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint finish writing; the kill lands mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = int((ckpt / "latest").read_text().split("-")[1])
    assert 0 < latest < total, "the run must be killed part-way"

    resumed = distill("train", pipeline, "--resume")
    assert f"at step {latest}" in resumed.stderr
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == latest and manifest["steps"] == total
    log = [json.loads(line)["step"] for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert log[-1] == total
    for key, tensor in weights(run_dir).items():
        assert (tensor - reference[key]).abs().max().item() < 1e-5, key


@pytest.mark.parametrize("zero", ["zero2_fp32", "zero3_bf16"])
def test_zero_stages_train_and_export(tmp_path, tiny_encoder, tiny_teacher, zero):
    data = pipeline_dict(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        epochs=1,
        deepspeed=str(REPO / "pipelines" / "deepspeed" / f"{zero}.json"),
    )
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    distill("train", pipeline)
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["zero_stage"] == int(zero[4])
    assert all(
        t.dtype.is_floating_point and t.dtype == t.float().dtype for t in weights(tmp_path / "run").values()
    )


def test_two_processes(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        epochs=1,
        deepspeed=str(REPO / "pipelines" / "deepspeed" / "zero2_fp32.json"),
    )
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    distill("train", pipeline, "--nproc", "2")
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["steps_per_epoch"] == 2  # 32 rows / (8 per rank × 2 ranks)
    distill("eval", pipeline)


def test_bad_pipeline_is_one_clear_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run_dir: x\ntasks: []\nteach: {teacher: {model: m, temperature: 2}}\n")
    proc = distill("teach", path, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: teach.teacher.temperature: unknown key (known: backend, model, ")
