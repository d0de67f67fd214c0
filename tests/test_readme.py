"""The README's two commands, and the real offline encoder and teacher behind the first."""

import json
import os
import re

import numpy as np
import pytest

from distill.teach.calibration import calibrate
from tests.conftest import REPO
from tests.test_pipeline import distill

MAIN = "bash scripts/install.sh && .venv/bin/distill run pipelines/demo.yaml"
TESTS = "bash scripts/install.sh && .venv/bin/pytest -q"


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README must open with a bash block"
    return block.group(1).strip().splitlines()


def test_readme_opens_with_the_two_commands():
    assert readme_commands()[:2] == [MAIN, TESTS]
    assert os.access(REPO / "scripts" / "install.sh", os.X_OK)
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in ci and ".venv/bin/pytest -q" in ci


@pytest.mark.slow
def test_demo_pipeline_with_the_real_teacher_and_encoder(tmp_path):
    """README command 1's pipeline, shrunk: Qwen teacher (calibrated on validation), MiniLM
    student trained on the teacher's labels only, DeepSpeed, the report."""
    shrink = [
        f"run_dir={tmp_path / 'run'}",
        f"teach.cache={tmp_path / 'cache.sqlite'}",
        "tasks.fine_foods.max_rows={train: 16, validation: 16, test: 8}",
        "tasks.aclsum.max_rows={train: 4, test: 2}",
        "teach.teacher.max_new_tokens=16",
        "train.epochs=1",
        "eval.max_new_tokens=16",
        "eval.speed_budget_s=8",
        "eval.speed_batch_size=4",
    ]
    args = [a for item in shrink for a in ("--set", item)]
    proc = distill("run", "pipelines/demo.yaml", *args, cwd=REPO)
    run = tmp_path / "run" / "latest"  # distill run: a folder per run, latest the newest
    report = json.loads((run / "eval" / "report.json").read_text())
    food = report["tasks"]["fine_foods"]
    rows = [json.loads(x) for x in (run / "teach" / "fine_foods" / "test.jsonl").read_text().splitlines()]
    right = [r["teacher_label"] == r["label"] for r in rows]
    assert food["rows"] == 8 and food["teacher"]["accuracy"] == pytest.approx(sum(right) / 8)
    gold = [r["label"] for r in rows]
    assert food["majority_baseline"]["accuracy"] == pytest.approx(gold.count("great") / 8)
    assert report["models"]["teacher"]["parameters"] > 400e6  # Qwen2.5-0.5B as loaded
    # MiniLM encoder (22.7M) + SmolLM2-135M decoder (134.5M) + its output head, untied (28.3M)
    assert 150e6 < report["models"]["student"]["parameters"] < 200e6
    teach = json.loads((run / "teach" / "manifest.json").read_text())
    assert teach["counts"]["fine_foods/train"]["mean_label_mass"] > 0.5  # Qwen answers with the labels
    # train, test, validation (for the temperature), 3 content-free prompts, then the summaries
    assert teach["cache"]["teacher_calls"] == 16 + 8 + 16 + 3 + 4 + 2
    fitted = teach["teacher"]["calibration"]["fine_foods"]
    assert fitted["prior_source"] == "content_free" and fitted["dev_nll"]["rows"] == 16
    for row in rows:  # what train and eval read is the calibrated distribution of the raw answer
        want = calibrate(np.array([row["teacher_distribution_raw"]]), fitted["prior"], fitted["temperature"])
        assert row["teacher_distribution"] == pytest.approx(want[0].tolist())
    training = json.loads((run / "train" / "student" / "student.json").read_text())["training"]
    assert training["hard_labels"] == "teacher"  # gold never enters the demo's training
    summaries = [
        json.loads(x)["teacher_summary"]
        for x in (run / "teach" / "aclsum" / "train.jsonl").read_text().splitlines()
    ]
    assert all(len(s.split()) >= 3 for s in summaries)
    assert (
        "| fine_foods | student |" in proc.stdout
        and "Student trained with hard labels: teacher" in proc.stdout
    )
