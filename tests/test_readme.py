"""The README's two commands, and the real offline encoder and teacher behind the first."""

import json
import os
import re

import pytest

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
    """README command 1's pipeline, shrunk: SmolLM2 teacher, MiniLM student, DeepSpeed."""
    shrink = [
        f"run_dir={tmp_path / 'run'}",
        f"teach.cache={tmp_path / 'cache.sqlite'}",
        "tasks.fine_foods.max_rows={train: 16, test: 8}",
        "tasks.aclsum.max_rows={train: 4, test: 2}",
        "teach.teacher.max_new_tokens=16",
        "train.epochs=1",
        "eval.max_new_tokens=16",
        "eval.speed_budget_s=8",
        "eval.speed_batch_size=4",
    ]
    args = [a for item in shrink for a in ("--set", item)]
    proc = distill("run", "pipelines/demo.yaml", *args, cwd=REPO)
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    food = report["tasks"]["fine_foods"]
    assert food["rows"] == 8 and 0 <= food["teacher"]["accuracy"] <= 1 and 0 <= food["agreement"] <= 1
    assert report["models"]["teacher"]["parameters"] > 100e6  # SmolLM2-135M
    assert 20e6 < report["models"]["student"]["parameters"] < 80e6  # MiniLM encoder + decoder
    teach = json.loads((tmp_path / "run" / "teach" / "manifest.json").read_text())
    assert teach["counts"]["fine_foods/train"]["mean_label_mass"] > 0.01  # the verbalizers are what it says
    assert teach["cache"]["teacher_calls"] == 16 + 8 + 4 + 2
    summaries = [
        json.loads(x)["teacher_summary"]
        for x in (tmp_path / "run" / "teach" / "aclsum" / "train.jsonl").read_text().splitlines()
    ]
    assert all(len(s.split()) >= 3 for s in summaries)
    assert "| fine_foods | student |" in proc.stdout
