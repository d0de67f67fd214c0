"""Scheduled runs: run folders and history, the lock, exit codes, promotion, incremental data,
and max_rows' random sample."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import train_command
from distill.core.data import sample_rows
from distill.core.errors import DistillError
from distill.ops.runs.records import (
    EXIT_GATES,
    EXIT_LOCKED,
    LATEST,
    PROMOTED,
    Lock,
    RunLocked,
    compare_rows,
    decide,
    history,
    holder_record,
)
from tests.conftest import REPO, pipeline_dict, review, write_jsonl, write_pipeline
from tests.test_pipeline import distill


def append_rows(path: str, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_two_scheduled_runs_with_data_appended_between(tmp_path, tiny_encoder, tiny_teacher):
    """The nightly path: run, new rows arrive, run again. Only the new rows are taught, both
    runs keep their own folders, the history has both, and promotion is decided on the same
    test rows; a third run whose gate fails exits EXIT_GATES and is not promoted."""
    import random

    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher)
    data["train"]["steps"] = 6
    path = write_pipeline(tmp_path, data)
    root = tmp_path / "run"
    distill("run", path)
    first = history(root)
    assert [r["status"] for r in first] == ["complete"]
    run1 = first[0]["id"]
    taught_first = first[0]["teach"]["teacher_calls"]
    assert taught_first > 0 and first[0]["promotion"]["promote"]
    assert first[0]["promotion"]["reason"] == "no promoted student yet"

    rng = random.Random(7)
    new_reviews = [
        {"review": review(rng, i % 2 == 0) + f" batch two {i}", "score": "great"} for i in range(5)
    ]
    new_papers = [{"document": " ".join(review(rng, True) for _ in range(4)) + " new", "summary": "x y"}]
    append_rows(data["tasks"][0]["data"]["train"], new_reviews)
    append_rows(data["tasks"][1]["data"]["train"], new_papers)
    proc = distill("run", path)
    records = history(root)
    assert len(records) == 2 and records[1]["status"] == "complete"
    run2 = records[1]["id"]
    assert run2 != run1  # new inputs, new id (and both folders kept)
    assert records[1]["teach"]["teacher_calls"] == len(new_reviews) + len(new_papers)  # only the new rows
    assert records[1]["teach"]["cache_hits"] == taught_first
    rows = json.loads((root / run2 / "train" / "manifest.json").read_text())["rows"]
    assert rows["reviews"] == 32 + 5 and rows["papers"] == 12 + 1  # and training used them
    for rid in (run1, run2):
        assert (root / rid / "train" / "student" / "model.safetensors").is_file()
        assert not (root / rid / "train" / "checkpoints").exists()  # GBs a night otherwise
    assert records[1]["checkpoints_removed_mb"] > 0
    decision = records[1]["promotion"]
    assert decision["against"] == run1 and set(decision["comparison"]) == {"reviews", "papers"}
    comparison = decision["comparison"]["reviews"]
    new_rows = json.loads((root / run2 / "eval" / "rows.json").read_text())["reviews"]
    assert comparison["rows"] == len(new_rows["ids"])
    assert comparison["new"] == pytest.approx(np.mean(new_rows["scores"]["accuracy"]), abs=1e-4)
    expected = decide(True, decision["comparison"], 0.0)
    assert decision["promote"] == expected["promote"]
    assert os.readlink(root / LATEST) == run2
    assert os.readlink(root / PROMOTED) == (run2 if decision["promote"] else run1)
    assert ("promoted" if decision["promote"] else "not promoted") in proc.stderr

    gated = distill("run", path, "--set", "eval.gates={reviews.student.accuracy: 1.01}", check=False)
    assert gated.returncode == EXIT_GATES, gated.stderr[-2000:]
    records = history(root)
    assert records[2]["status"] == "gates_failed" and not records[2]["promotion"]["promote"]
    assert records[2]["exit_code"] == EXIT_GATES and records[2]["gates"]["failed"] == [
        "reviews.student.accuracy"
    ]
    assert os.readlink(root / PROMOTED) in (run1, run2)  # unchanged by a failed run
    table = distill("runs", path).stdout
    assert table.count("\n| 2") == 3 and "gates_failed" in table and "(current)" in table


HOLD = """
import sys, time
from pathlib import Path
from distill.ops.runs.records import Lock, holder_record
lock = Lock.acquire(Path(sys.argv[1]), holder_record("holder-run"))  # held while it lives
print("held", flush=True)
time.sleep(600)
"""


def test_lock_refuses_a_second_run_and_a_killed_runs_lock_is_taken_over(tmp_path, tiny_encoder, tiny_teacher):
    path = write_pipeline(tmp_path, pipeline_dict(tmp_path, tiny_encoder, tiny_teacher))
    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = distill("run", path, check=False)
        assert refused.returncode == EXIT_LOCKED
        assert f"pid {holder.pid}" in refused.stderr and "holder-run" in refused.stderr
        assert not (root / "history.jsonl").exists()  # refused before doing anything
        assert [p.name for p in root.iterdir()] == [".lock"]
        with pytest.raises(RunLocked):  # the same in-process
            Lock.acquire(root, holder_record("second"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = Lock.acquire(root, holder_record("after-kill"))  # the kernel released the flock
    assert lock.took_over["pid"] == holder.pid and lock.took_over["run_id"] == "holder-run"
    lock.release()
    again = Lock.acquire(root, holder_record("clean"))  # a clean release leaves nothing to take over
    assert again.took_over is None
    again.release()


def rows_record(scores: list[float | None]) -> dict:
    return {
        "headline": "accuracy",
        "ids": [str(i) for i in range(len(scores))],
        "scores": {"accuracy": scores},
    }


def test_compare_rows_is_a_paired_difference():
    new = rows_record([1.0, 1.0, 0.0, 1.0, None])
    old = rows_record([1.0, 0.0, 0.0, 0.0, 1.0])
    c = compare_rows(new, old, 1000, 0)
    assert c["new"] == 0.75 and c["promoted"] == 0.4 and c["rows"] == 5
    assert c["diff"] == pytest.approx(0.5)  # mean of (0, 1, 0, 1) over the 4 rows both scored
    lo, hi = c["diff_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    with pytest.raises(DistillError, match="different rows"):
        compare_rows(new, rows_record([1.0] * 4), 1000, 0)


def test_promotion_rule():
    same = rows_record([1.0, 0.0] * 20)
    equal = {"t": compare_rows(same, same, 500, 0)}
    assert decide(True, equal, 0.0)["promote"]  # not worse: promoted
    assert not decide(False, equal, 0.0)["promote"]  # gates first
    assert decide(True, None, 0.0) == {"promote": True, "reason": "no promoted student yet"}
    worse = {"t": compare_rows(rows_record([0.0] * 40), rows_record([1.0] * 40), 500, 0)}
    verdict = decide(True, worse, 0.0)
    assert not verdict["promote"] and "t (accuracy 0.0000 vs 1.0000" in verdict["reason"]
    assert decide(True, worse, 1.0)["promote"]  # within a margin of a whole point
    # one row worse out of 40: the interval reaches 0, so that is noise
    noisy = {"t": compare_rows(rows_record([1.0] * 39 + [0.0]), rows_record([1.0] * 40), 500, 0)}
    assert noisy["t"]["diff_ci95"][1] == 0.0 and decide(True, noisy, 0.0)["promote"]


def test_random_sample_is_deterministic_ordered_and_stable_under_appends():
    rows = [{"text": f"row {i}"} for i in range(200)]
    picked = sample_rows(rows, 20, seed=0)
    assert len(picked) == 20 and picked == sample_rows(rows, 20, seed=0)
    assert [rows.index(r) for r in picked] == sorted(rows.index(r) for r in picked)  # file order
    assert picked != rows[:20] and picked != sample_rows(rows, 20, seed=1)
    grown = rows + [{"text": f"new {i}"} for i in range(200)]
    after = sample_rows(grown, 20, seed=0)
    old_kept = [r for r in after if r in rows]
    assert all(r in picked for r in old_kept)  # an old row only ever leaves the sample
    assert 0 < len(old_kept) < 20  # and new rows come in with their share
    assert sample_rows(rows, 500, seed=0) == rows


def test_random_sample_through_the_config(tmp_path):
    from distill.core.config import TaskConfig
    from distill.tasks import load_split

    source = write_jsonl(tmp_path / "t.jsonl", [{"text": f"text {i}", "label": "a"} for i in range(50)])
    cfg = TaskConfig(
        name="t", kind="classification", data={"train": source}, labels={"a": "a", "b": "b"},
        max_rows={"train": 10}, sample="random", sample_seed=3,
    )  # fmt: skip
    texts = [e["text"] for e in load_split(cfg, "train")]
    want = [r["text"] for r in sample_rows([{"text": f"text {i}", "label": "a"} for i in range(50)], 10, 3)]
    assert texts == want and texts != [f"text {i}" for i in range(10)]


def test_launch_commands(tmp_path):
    hostfile = tmp_path / "hosts"
    cmd = train_command(["p.yaml", "--set", "a=1"], 2, hostfile, 3, 29555)
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    joined = " ".join(cmd)
    assert f"--hostfile {hostfile} --num_nodes 3 --num_gpus 2 --master_port 29555 --no_local_rank" in joined
    assert cmd[-6:] == ["--module", "distill.cli", "train", "p.yaml", "--set", "a=1"]
    local = train_command(["p.yaml"], 4, None, None, 29555)
    assert local[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--master_port=29555"]
    assert local[-4:] == ["-m", "distill.cli", "train", "p.yaml"][-4:]


def test_run_folders_are_not_the_stage_folders(tmp_path, tiny_encoder, tiny_teacher):
    """`distill runs` on a pipeline never run: an empty table, no error."""
    path = write_pipeline(tmp_path, pipeline_dict(tmp_path, tiny_encoder, tiny_teacher))
    out = distill("runs", path).stdout
    assert out.strip().splitlines()[0].startswith("| run |") and len(out.strip().splitlines()) == 2
    assert not Path(tmp_path / "run").exists()


def test_validation_every_n_steps_exports_the_best_step(tmp_path, tiny_encoder, tiny_teacher):
    import random

    from distill.pipeline import load as load_pipeline
    from distill.student.model import load_student
    from distill.tasks import load_split, tasks_for

    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, steps=6, validate_every=2, validation_rows=10)
    rng = random.Random(3)
    rows = [
        {"review": review(rng, i % 2 == 0), "score": "great" if i % 2 == 0 else "other"} for i in range(14)
    ]
    data["tasks"][0]["data"]["validation"] = write_jsonl(tmp_path / "valid.jsonl", rows)
    data["train"]["lr"] = 3e-3  # big steps: the score moves between validations
    path = write_pipeline(tmp_path, data)
    distill("teach", path)
    distill("train", path)
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "train" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(set(r["scores"]) == {"reviews"} for r in records)
    best = max(records, key=lambda r: r["score"])  # first of equals: a later tie is not better
    selected = json.loads((run / "train" / "student" / "student.json").read_text())["training"]["selected"]
    assert selected["step"] == best["step"] and selected["by"] == "validation"
    cfg = load_pipeline(path)
    task = next(t for t in tasks_for(cfg) if t.name == "reviews")
    student, tokenizer = load_student(run / "train" / "student")
    valid = load_split(cfg.tasks[0], "validation")[:10]
    accuracy = float(np.nanmean(task.row_scores(cfg, valid, student, tokenizer)["accuracy"]))
    assert accuracy == pytest.approx(
        best["scores"]["reviews"], abs=1e-6
    )  # the exported weights are that step's
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    assert manifest["selected"]["step"] == best["step"]
    # and the weights are the best tag's, not the last step's
    from safetensors.torch import load_file

    from distill.train.checkpoint import BEST_TAG, consolidated_state_dict

    exported = load_file(str(run / "train" / "student" / "model.safetensors"))
    ckpt = run / "train" / "checkpoints"
    tagged = {tag: consolidated_state_dict(ckpt, tag, 0, None) for tag in (BEST_TAG, "step-0000006")}
    name = "heads.reviews.1.weight"
    assert torch.equal(exported[name], tagged[BEST_TAG]["student." + name])
    assert best["step"] == 6 or not torch.equal(exported[name], tagged["step-0000006"]["student." + name])


def test_a_killed_run_resumes_and_a_failed_one_is_recorded(tmp_path, tiny_encoder, tiny_teacher):
    """Killed mid-training (no cleanup): the run folder says running, `run --resume` finishes
    that same run from its checkpoint. Bad data: exit 2, recorded with the culprit named."""
    from distill.train.run import EXIT_AFTER_STEP_ENV

    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, steps=6, checkpoint_every=2)
    path = write_pipeline(tmp_path, data)
    root = tmp_path / "run"
    died = distill("run", path, check=False, env_extra={EXIT_AFTER_STEP_ENV: "3"})
    assert died.returncode == 1 and not (root / "history.jsonl").exists()  # no cleanup ran
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    assert json.loads((folder / "run.json").read_text())["status"] == "running"
    resumed = distill("run", path, "--resume")
    said = resumed.stdout + resumed.stderr
    assert "resumed from" in said and "step-0000002" in said
    (record,) = history(root)
    assert record["id"] == folder.name and record["status"] == "complete"
    assert os.readlink(root / LATEST) == folder.name

    data["tasks"][0]["data"]["test"] = str(tmp_path / "gone.jsonl")
    (tmp_path / "gone.jsonl").write_text("{not json\n")
    broken = distill("run", write_pipeline(tmp_path, data), check=False)
    assert broken.returncode == 2  # bad data is the user's to fix: a clear error, not a crash
    last = history(root)[-1]
    assert last["status"] == "error" and "gone.jsonl" in last["error"]
