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

from distill.core.data import sample_rows
from distill.core.errors import DistillError
from distill.ops.runs.history import history
from distill.ops.runs.launch import train_command
from distill.ops.runs.lock import Lock, RunLocked, holder_record
from distill.ops.runs.promotion import Comparisons, best_promoted, compare, compare_rows, decide
from distill.ops.runs.records import EXIT_GATES, EXIT_LOCKED, LATEST, PROMOTED
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
    proc = distill("run", path, "--set", "eval.promote_margin=1.0")  # nothing is a whole point worse
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
    assert decision["promote"] and decision["not_compared"] == {}
    assert os.readlink(root / LATEST) == run2 and os.readlink(root / PROMOTED) == run2
    assert f"run {run2}: promoted (not worse than the promoted student" in proc.stderr
    # run 1 is the only promoted run: the best one ever, so its comparison is the drift's
    assert {t: c["run"] for t, c in decision["best_ever"].items()} == {"reviews": run1, "papers": run1}
    drift = {t: round(-c["diff"], 4) for t, c in decision["comparison"].items()}
    assert records[1]["drift"] == decision["drift"] == drift
    assert f"drift (best promoted − new): reviews {drift['reviews']:+.4f}" in proc.stderr
    best_ever_is_another_run(path, root, run1, run2)

    gated = distill("run", path, "--set", "eval.gates={reviews.student.accuracy: 1.01}", check=False)
    assert gated.returncode == EXIT_GATES, gated.stderr[-2000:]
    records = history(root)
    assert records[2]["status"] == "gates_failed" and not records[2]["promotion"]["promote"]
    assert records[2]["promotion"]["reason"] == "gates failed" and records[2]["drift"] == {}
    assert records[2]["exit_code"] == EXIT_GATES and records[2]["gates"]["failed"] == [
        "reviews.student.accuracy"
    ]
    assert os.readlink(root / PROMOTED) == run2  # unchanged by a failed run
    table = distill("runs", path).stdout
    assert table.count("\n| 2") == 3 and "gates_failed" in table and "(current)" in table
    assert f"reviews {drift['reviews']:+.3f}" in table


def best_ever_is_another_run(path: Path, root: Path, run1: str, run2: str) -> None:
    """With run 1 recorded as the best promoted run (its history headline raised), a run
    promoted after it is compared with run 1's student too, rescored on the new run's rows:
    the same rows run 1 was evaluated on (only train rows were appended), so its scores are
    run 1's own eval scores."""
    from distill.pipeline import load as load_pipeline

    original = (root / "history.jsonl").read_text()
    lines = [json.loads(x) for x in original.splitlines()]
    lines[0]["headline"] = {task: 1.0 for task in lines[0]["headline"]}
    (root / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = load_pipeline(path, [f"run_dir={root / run2}"])
    new_rows = json.loads((root / run2 / "eval" / "rows.json").read_text())
    found = compare(cfg, root, run2, new_rows)
    assert set(found.promoted) == {"reviews", "papers"} and found.not_compared == {}
    assert {c["run"] for c in found.promoted.values()} == {run2}
    assert all(c["diff"] == 0.0 for c in found.promoted.values())  # run 2 against itself
    run1_rows = json.loads((root / run1 / "eval" / "rows.json").read_text())
    for task, c in found.best_ever.items():
        assert c["run"] == run1
        assert c == {**compare_rows(new_rows[task], run1_rows[task], 1000, 0), "run": run1}
    (root / "history.jsonl").write_text(original)  # the later runs append to the real history


HOLD = """
import sys, time
from pathlib import Path
from distill.ops.runs.lock import Lock, holder_record
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


def rows_of(**tasks: list[float | None]) -> dict:
    """A student's eval rows.json: task → per-row headline scores."""
    return {task: rows_record(scores) for task, scores in tasks.items()}


def compared(new: dict, promoted: dict, best: tuple[str, dict] | None = None) -> Comparisons:
    """The comparisons promotion makes: with the promoted student (run "p"), and with the best
    promoted student ever when that is another run (``best``: its id and rows)."""
    found = Comparisons()
    found.add(found.promoted, new, promoted, "p", 1000, 0)
    if best is not None:
        found.add(found.best_ever, new, best[1], best[0], 1000, 0)
    for task, c in found.promoted.items():
        found.best_ever.setdefault(task, c)
    return found


def test_promotion_rule():
    same = rows_of(t=[1.0, 0.0] * 20)
    equal = compared(same, same)
    assert not decide(False, equal, 0.0)["promote"]  # gates first
    assert decide(True, None, 0.0) == {"promote": True, "reason": "no promoted student yet"}
    worse = compared(rows_of(t=[0.0] * 40), rows_of(t=[1.0] * 40))
    assert decide(True, worse, 1.0)["promote"]  # within a margin of a whole point


def test_a_student_better_or_level_within_the_noise_is_promoted():
    better = compared(rows_of(t=[1.0] * 36 + [0.0] * 4), rows_of(t=[1.0] * 30 + [0.0] * 10))
    assert better.promoted["t"]["diff"] == pytest.approx(0.15) and better.promoted["t"]["diff_ci95"][0] > 0
    verdict = decide(True, better, 0.0)
    assert verdict == {
        "promote": True,
        "reason": "not worse than the promoted student, nor the best promoted, beyond the noise on any task",
    }
    # one row worse out of 40: the interval reaches 0, so that is noise
    noisy = compared(rows_of(t=[1.0] * 39 + [0.0]), rows_of(t=[1.0] * 40))
    assert noisy.promoted["t"]["diff_ci95"][1] == 0.0 and decide(True, noisy, 0.0)["promote"]
    assert noisy.drift() == {"t": 0.025}  # best promoted − new


def test_a_student_worse_beyond_the_noise_is_not_promoted():
    # wrong on 8 rows the promoted student gets right, right on none it gets wrong
    worse = compared(
        rows_of(t=[1.0] * 22 + [0.0] * 18, u=[0.5] * 10), rows_of(t=[1.0] * 30 + [0.0] * 10, u=[0.5] * 10)
    )
    assert worse.promoted["t"]["diff_ci95"][1] < 0
    verdict = decide(True, worse, 0.0)
    assert not verdict["promote"]
    assert verdict["reason"].startswith(
        "worse than the promoted student beyond the noise: t (accuracy 0.5500 vs 0.7500"
    )
    assert "u (" not in verdict["reason"]  # the task that did not move is not named


def test_a_task_the_promoted_student_lacks_refuses_unless_allowed():
    new = rows_of(t=[1.0, 0.0] * 20, extra=[1.0] * 40)
    found = compared(new, rows_of(t=[1.0, 0.0] * 20))  # the promoted student has no task "extra"
    assert set(found.promoted) == {"t"} and found.not_compared == {
        "extra": "the student of run p has no task extra"
    }
    refused = decide(True, found, 0.0)
    assert not refused["promote"]
    assert refused["reason"] == (
        "could not compare extra (the student of run p has no task extra); "
        "eval.promote_when_uncompared: allow promotes anyway"
    )
    allowed = decide(True, found, 0.0, "allow")
    assert (
        allowed["promote"]
        and "not compared (eval.promote_when_uncompared: allow): extra" in allowed["reason"]
    )
    # a task with no row scored by both students is not compared either, and not taken as level
    unscored = compared(rows_of(t=[None] * 10), rows_of(t=[1.0] * 10))
    assert unscored.promoted == {} and "no eval row has a accuracy score" in unscored.not_compared["t"]
    assert not decide(True, unscored, 0.0)["promote"]


def test_a_student_within_the_noise_of_the_promoted_but_below_the_best_ever_is_refused():
    """The ratchet: each night's student one or two rows below the last one is noise, so the
    promoted student slides; the best promoted ever (run "b") still catches the slide."""
    best = rows_of(t=[1.0] * 36 + [0.0] * 4)
    promoted = rows_of(t=[1.0] * 31 + [0.0] * 9)
    new = rows_of(t=[1.0] * 30 + [0.0] * 10)
    found = compared(new, promoted, ("b", best))
    assert found.promoted["t"]["diff_ci95"][1] >= 0  # level with the promoted student, within noise
    assert found.best_ever["t"]["run"] == "b" and found.best_ever["t"]["diff_ci95"][1] < 0
    verdict = decide(True, found, 0.0)
    assert not verdict["promote"]
    assert verdict["reason"].startswith(
        "worse than the best promoted student beyond the noise: t (run b: accuracy"
    )
    assert found.drift() == {"t": 0.15}
    assert decide(True, compared(new, promoted), 0.0)["promote"]  # the old rule let it through


def test_the_best_promoted_run_is_the_best_recorded_headline_of_a_promoted_run_still_there(tmp_path):
    for run in ("r1", "r2", "r3"):
        (tmp_path / run / "train" / "student").mkdir(parents=True)
    records = [
        {"id": "r1", "promotion": {"promote": True}, "headline": {"t": 0.80, "s": 0.30}},
        {"id": "r2", "promotion": {"promote": True}, "headline": {"t": 0.75, "s": 0.35}},
        {"id": "r3", "promotion": {"promote": False}, "headline": {"t": 0.99, "s": 0.99}},  # not promoted
        {"id": "r4", "promotion": {"promote": True}, "headline": {"t": 0.95, "s": None}},  # folder deleted
        {"id": "r5", "status": "crashed"},
    ]
    assert best_promoted(records, tmp_path) == {
        "t": {"run": "r1", "headline": 0.80},
        "s": {"run": "r2", "headline": 0.35},
    }


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
    from distill.tasks import load_split, task_config

    source = write_jsonl(tmp_path / "t.jsonl", [{"text": f"text {i}", "label": "a"} for i in range(50)])
    cfg = task_config(
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


def test_validation_every_n_steps_exports_the_selected_step(tmp_path, tiny_encoder, tiny_teacher):
    import random

    from distill.pipeline import load as load_pipeline
    from distill.student.model import load_student
    from distill.tasks import tasks_for
    from distill.train.validation import select_step, validation_rows

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
    assert all(len(r["rows"]["reviews"]) == 10 for r in records)  # per-row scores, for the interval
    selected = json.loads((run / "train" / "student" / "student.json").read_text())["training"]["selected"]
    assert selected == select_step(records, 1000, 0)  # the rule, on what validation.jsonl holds
    assert selected["steps_scored"] == [2, 4, 6] and selected["by"] == "validation" and selected["why"]
    assert json.loads((run / "train" / "manifest.json").read_text())["selected"] == selected
    cfg = load_pipeline(path)
    task = next(t for t in tasks_for(cfg) if t.name == "reviews")
    student, tokenizer = load_student(run / "train" / "student")
    valid = validation_rows(task, 10, cfg.train.seed)  # the seeded sample, not the first 10 rows
    accuracy = float(np.nanmean(task.row_scores(cfg, valid, student, tokenizer)["accuracy"]))
    chosen = next(r for r in records if r["step"] == selected["step"])
    assert accuracy == pytest.approx(chosen["scores"]["reviews"], abs=1e-6)  # the exported weights are its
    lo, hi = selected["score_ci95"]
    assert lo <= chosen["score"] <= hi and lo < hi
    # and the weights are the selected step's checkpoint
    from safetensors.torch import load_file

    from distill.train.checkpoint import BEST_TAG, consolidated_state_dict

    exported = load_file(str(run / "train" / "student" / "model.safetensors"))
    ckpt = run / "train" / "checkpoints"
    tag = "step-0000006" if selected["step"] == 6 else BEST_TAG
    name = "heads.reviews.1.weight"
    assert torch.equal(exported[name], consolidated_state_dict(ckpt, tag, 0, None)["student." + name])


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
